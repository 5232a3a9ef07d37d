"""Authorization: may this Pod's identity use this endpoint?

An endpoint's ``azRules`` are RFC 4515 filters (``runtime.filter``), OR-ed; an endpoint without
rules allows nobody. Filters see these attributes of the caller:

- ``namespace``, ``saname``: from the TokenReview's ServiceAccount user name;
- ``pod``: the bound Pod's name; ``cluster``: the runtime's cluster name;
- ``role``: the role the Pod is bound to (``roles.role_of``): its ServiceAccount's binding when the
  live ServiceAccount has one, else the live Pod's ``tremolo.io/<injector.label>`` annotation
  (absent when the endpoint has no injector or neither sets it), so a rule such as
  ``(&(namespace=team-a)(role=arn:aws:iam::1:role/team-a-*))`` says which namespaces may use
  which roles. Nothing the caller sends in the request is consulted.
"""

from __future__ import annotations

import dataclasses

from kube_sts.runtime import config
from kube_sts.runtime import rules as rule_filter

__all__ = ["Authorizer", "Subject"]


@dataclasses.dataclass(frozen=True, slots=True)
class Subject:
    """The caller as the rules and the ``sub`` template see it."""

    cluster: str
    namespace: str
    saname: str
    pod: str
    role: str | None
    endpoint: str

    def attributes(self) -> dict[str, str | None]:
        return {
            "cluster": self.cluster,
            "namespace": self.namespace,
            "saname": self.saname,
            "pod": self.pod,
            "role": self.role,
        }


class Authorizer:
    """One endpoint's compiled rules."""

    def __init__(self, endpoint: config.Endpoint) -> None:
        self.endpoint = endpoint.name
        self.rules: tuple[rule_filter.Filter, ...] = endpoint.rules()

    def allows(self, subject: Subject) -> bool:
        if not self.rules:
            return False
        attributes = subject.attributes()
        return any(rule.matches(attributes) for rule in self.rules)
