"""Microsoft Entra ID: federated identity credentials (FICs) for workload identity federation.

Entra matches a FIC by ``issuer`` and ``subject`` exactly (no wildcards) and requires the
assertion's ``aud`` among the FIC's ``audiences`` (``api://AzureADTokenExchange`` for workload
identity). So each subject the rules authorize must be pinned completely: by the rules
(``(&(namespace=orders)(saname=api))``) or by ``--service-account NAMESPACE/NAME``, which must be
one the rules authorize. Written as the JSON ``az identity federated-credential create
--parameters`` and ``az ad app federated-credential create --parameters`` accept, and as the
``az identity federated-credential create`` command for a user-assigned managed identity.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Sequence
from typing import Any

from kube_sts.compiler.trust import subjects
from kube_sts.runtime import config

__all__ = ["credentials", "shell"]

_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def _name(endpoint: config.Endpoint, subject: str) -> str:
    """A FIC name (3 to 120 characters: letters, digits, '-', '_', starting with a letter or digit)."""
    readable = _NAME.sub("-", f"kube-sts-{endpoint.name}-{subject}").strip("-")
    digest = hashlib.sha256(subject.encode()).hexdigest()[:8]
    return f"{readable[:100]}-{digest}"


def credentials(
    endpoint: config.Endpoint,
    cluster: str,
    service_accounts: Sequence[tuple[str, str]] = (),
    role: str | None = None,
    index: int = 0,
) -> list[dict[str, Any]]:
    """One FIC per subject the rules authorize (for ``service_accounts`` when given)."""
    found: list[subjects.Pattern] = []
    if service_accounts:
        for namespace, name in service_accounts:
            found += subjects.patterns(endpoint, cluster, role, {"namespace": namespace, "saname": name}, index)
    else:
        found += subjects.patterns(endpoint, cluster, role, index=index)
    out: list[dict[str, Any]] = []
    for pattern in found:
        subject = pattern.literal
        if subject is None:
            raise subjects.TrustError(
                ("sts", "endpoints", index, "azRules", pattern.rule),
                f"Entra matches the subject exactly, but this rule leaves {', '.join(pattern.wild_fields())} open "
                f"(sub {pattern.glob()!r}); pin them in the rule, e.g. (&(namespace=orders)(saname=api)), or name "
                "the ServiceAccounts with --service-account NAMESPACE/NAME",
                "subject-not-exact",
            )
        credential = {
            "name": _name(endpoint, subject),
            "issuer": endpoint.issuer.url,
            "subject": subject,
            "audiences": [endpoint.audience],
            "description": f"kube-sts endpoint {endpoint.name}",
        }
        if credential not in out:
            out.append(credential)
    return out


def shell(document: list[dict[str, Any]]) -> str:
    """``az identity federated-credential create`` for each FIC (``$IDENTITY_NAME``, ``$RESOURCE_GROUP``)."""
    lines = []
    for credential in document:
        lines.append(
            "az identity federated-credential create"
            f" --name {shlex.quote(credential['name'])}"
            ' --identity-name "$IDENTITY_NAME" --resource-group "$RESOURCE_GROUP"'
            f" --issuer {shlex.quote(credential['issuer'])}"
            f" --subject {shlex.quote(credential['subject'])}"
            " --audiences " + " ".join(shlex.quote(a) for a in credential["audiences"])
        )
    return "\n".join(lines) + "\n"
