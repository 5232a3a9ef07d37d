"""Google Cloud: the workload identity pool's OIDC provider and the Pod's credential configuration.

- The provider (``projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<id>``,
  taken from the endpoint's audience when it is the provider's default audience
  ``https://iam.googleapis.com/<provider>``, else from ``--gcp-provider``): ``oidc.issuerUri`` is the
  issuer URL, ``oidc.allowedAudiences`` the endpoint's audience, and ``attributeMapping`` maps
  ``google.subject`` to ``assertion.sub`` and the ``cluster``, ``namespace`` and ``saname`` claims
  to attributes. Google refuses a token whose ``google.subject`` is longer than 127 bytes, so a
  ``sub`` the rules allow to grow past that is a compile error.
- The ``external_account`` credential configuration google-auth reads from
  ``GOOGLE_APPLICATION_CREDENTIALS`` (what ``gcloud iam workload-identity-pools create-cred-config``
  writes): the provider as ``audience``, the JWT token type, Google's STS token URL and the token
  file the sidecar keeps fresh in the Pod.
- The principal of each pinned subject, for IAM bindings (``principal://.../subject/<sub>``), and
  of each namespace (``principalSet://.../attribute.namespace/<namespace>``).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from kube_sts.compiler.trust import subjects
from kube_sts.runtime import config
from kube_sts.runtime.webhook import injection

__all__ = ["MAX_SUBJECT_BYTES", "TOKEN_URL", "credential_configuration", "document", "provider_name", "shell"]

MAX_SUBJECT_BYTES = 127
TOKEN_URL = "https://sts.googleapis.com/v1/token"  # noqa: S105 (a URL)
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 (a token type name)
_PROVIDER = re.compile(
    r"^(?:https:)?//iam\.googleapis\.com/(projects/([^/]+)/locations/global/workloadIdentityPools/([^/]+)/providers/([^/]+))$"
)
_ATTRIBUTES = {
    "google.subject": "assertion.sub",
    "attribute.cluster": "assertion.cluster",
    "attribute.namespace": "assertion.namespace",
    "attribute.saname": "assertion.saname",
}


def provider_name(endpoint: config.Endpoint, given: str | None, index: int) -> str:
    """``projects/.../providers/<id>`` from ``--gcp-provider`` or the endpoint's default audience."""
    for candidate in (given, endpoint.audience):
        if candidate is None:
            continue
        match = _PROVIDER.match(
            candidate if candidate.startswith(("//", "https:")) else "//iam.googleapis.com/" + candidate
        )
        if match is not None:
            return match.group(1)
        if candidate is given:
            raise subjects.TrustError(
                (),
                f"--gcp-provider {given!r} is not projects/N/locations/global/workloadIdentityPools/POOL/providers/ID",
                "not-a-provider",
            )
    raise subjects.TrustError(
        ("sts", "endpoints", index, "audience"),
        f"the audience {endpoint.audience!r} is not a workload identity provider's default audience "
        "(https://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/POOL/providers/ID); "
        "name the provider with --gcp-provider",
        "provider-required",
    )


def _check_length(endpoint: config.Endpoint, found: tuple[subjects.Pattern, ...], index: int) -> None:
    for pattern in found:
        longest = pattern.max_bytes()
        if longest > MAX_SUBJECT_BYTES:
            where: tuple[str | int, ...] = (
                ("sts", "endpoints", index, "token", "subject")
                if endpoint.token.subject is not None
                else ("sts", "endpoints", index, "azRules", pattern.rule)
            )
            free = ", ".join(f"{f} up to {subjects.MAX_BYTES[f]}" for f in pattern.wild_fields())
            raise subjects.TrustError(
                where,
                f"the sub {pattern.glob()!r} can be {longest} bytes ({free}), more than the 127 bytes Google "
                "allows in google.subject, so Google would refuse such tokens; pin the long fields in the rule, "
                "e.g. (&(namespace=myns)(saname=app)), or use a shorter token.subject",
                "subject-too-long",
            )


def credential_configuration(
    endpoint: config.Endpoint, provider: str, service_account: str | None = None
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": f"//iam.googleapis.com/{provider}",
        "subject_token_type": JWT_TOKEN_TYPE,
        "token_url": TOKEN_URL,
        "credential_source": {"file": injection.token_path(endpoint), "format": {"type": "text"}},
    }
    if service_account is not None:
        info["service_account_impersonation_url"] = (
            f"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{service_account}:generateAccessToken"
        )
    return info


def document(
    endpoint: config.Endpoint,
    cluster: str,
    *,
    provider: str | None = None,
    role: str | None = None,
    service_account: str | None = None,
    index: int = 0,
) -> dict[str, Any]:
    name = provider_name(endpoint, provider, index)
    found = subjects.patterns(endpoint, cluster, role, index=index)
    _check_length(endpoint, found, index)
    pool = name.rsplit("/providers/", 1)[0]
    principals = sorted({f"principal://iam.googleapis.com/{pool}/subject/{p.literal}" for p in found if p.literal})
    namespaces = sorted(
        {
            f"principalSet://iam.googleapis.com/{pool}/attribute.namespace/{value}"
            for p in found
            for claim, value in p.claims
            if claim == "namespace" and isinstance(value, str)
        }
    )
    return {
        "provider": {
            "name": name,
            "oidc": {"issuerUri": endpoint.issuer.url, "allowedAudiences": [endpoint.audience]},
            "attributeMapping": dict(_ATTRIBUTES),
        },
        "credentialConfiguration": credential_configuration(endpoint, name, service_account),
        "principals": principals + namespaces,
    }


def shell(document: dict[str, Any]) -> str:
    """``gcloud`` commands: create the provider, write the credential configuration."""
    match = _PROVIDER.match("//iam.googleapis.com/" + document["provider"]["name"])
    assert match is not None
    _, project, pool, provider_id = match.groups()
    oidc = document["provider"]["oidc"]
    mapping = ",".join(f"{k}={v}" for k, v in document["provider"]["attributeMapping"].items())
    config_info = document["credentialConfiguration"]
    lines = [
        f"gcloud iam workload-identity-pools providers create-oidc {shlex.quote(provider_id)}"
        f" --project={shlex.quote(project)} --location=global --workload-identity-pool={shlex.quote(pool)}"
        f" --issuer-uri={shlex.quote(oidc['issuerUri'])}"
        f" --allowed-audiences={shlex.quote(','.join(oidc['allowedAudiences']))}"
        f" --attribute-mapping={shlex.quote(mapping)}",
        f"gcloud iam workload-identity-pools create-cred-config {shlex.quote(document['provider']['name'])}"
        f" --credential-source-file={shlex.quote(config_info['credential_source']['file'])}"
        " --output-file=credential-configuration.json",
    ]
    return "\n".join(lines) + "\n"
