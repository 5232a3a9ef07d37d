"""Authorization: may this Pod's identity use this endpoint?

An endpoint's ``azRules`` are RFC 4515 filters (``runtime.filter``), OR-ed; an endpoint without
rules allows nobody. Filters see these attributes of the caller:

- ``namespace``, ``saname``: from the TokenReview's ServiceAccount user name;
- ``pod``: the bound Pod's name; ``cluster``: the runtime's cluster name;
- ``role``: the role the Pod is bound to (``role_of``): its ServiceAccount's binding when the
  live ServiceAccount has one, else the live Pod's ``tremolo.io/<injector.label>`` annotation
  (absent when the endpoint has no injector or neither sets it), so a rule such as
  ``(&(namespace=team-a)(role=arn:aws:iam::1:role/team-a-*))`` says which namespaces may use
  which roles. Nothing the caller sends in the request is consulted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from kube_sts.runtime import config
from kube_sts.runtime import filter as rule_filter

__all__ = ["Authorizer", "RoleConflictError", "Subject", "role_of"]


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


class RoleConflictError(Exception):
    """The Pod names a role other than the one its ServiceAccount is bound to."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def role_of(
    endpoint: config.Endpoint, annotations: Mapping[str, str], account: Mapping[str, str] | None = None
) -> str | None:
    """The role of a Pod with ``annotations`` whose ServiceAccount has ``account`` annotations.

    The ServiceAccount wins: when it carries one of ``endpoint.account_role_keys`` (our own
    ``tremolo.io/<label>``, then ``eks.amazonaws.com/role-arn`` for AWS endpoints) with a value,
    that value is the role, and a Pod annotation naming another role raises
    ``RoleConflictError``, so a Pod cannot claim a role its ServiceAccount is not bound to.
    Otherwise the Pod's ``tremolo.io/<label>`` annotation is the role, if any.
    """
    if endpoint.injector is None:
        return None
    own = annotations.get(endpoint.injector.label_key)
    for key in endpoint.account_role_keys:
        bound = (account or {}).get(key)
        if bound is None or not bound.strip():
            continue
        if own is not None and own.strip() and own.strip() != bound.strip():
            raise RoleConflictError(
                f"kube-sts: the Pod's annotation {endpoint.injector.label_key} names another role than its "
                f"ServiceAccount's {key} ({_cut(bound)}); remove the Pod's annotation or make it equal"
            )
        return bound
    return own


def _cut(value: str) -> str:
    return repr(value if len(value) <= 128 else value[:128] + "...")


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
