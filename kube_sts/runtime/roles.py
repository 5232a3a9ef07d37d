"""The role binding: which role (annotation value, e.g. an AWS role ARN) a Pod holds for an endpoint.

Shared by the admission webhook (what the Pod's containers are told) and the token service (what
the ``role`` attribute and ``sub`` carry), so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping

from kube_sts.runtime import config

__all__ = ["RoleConflictError", "role_of"]


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
