"""The runtime's configuration: what the token service, webhook and key manager consume.

The runtime owns this contract. The compiler validates a values file's endpoints with these
very models and renders a ``RuntimeConfig`` into a ConfigMap, so the two cannot drift apart.
Field names are the values file's keys (the seed's spelling where the seed has them,
camelCase for extensions); Python attributes are snake_case.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
import pydantic.alias_generators
from pydantic import Field

from kube_sts.runtime import rules as rule_filter

__all__ = [
    "TLS",
    "AzRule",
    "Endpoint",
    "Injector",
    "Issuer",
    "KeyManagement",
    "Preset",
    "RuntimeConfig",
    "Token",
    "is_host_name",
    "parse_duration",
]

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNITS = (86400, 3600, 60, 1)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_FILE_PATH = re.compile(r"^(/[A-Za-z0-9_-][A-Za-z0-9._-]*){2,}$")
RESERVED_TOKEN_DIRECTORIES = (
    "/bin",
    "/dev",
    "/etc",
    "/lib",
    "/proc",
    "/run/secrets/kubernetes.io",
    "/sbin",
    "/sys",
    "/tmp",  # noqa: S108 (refused: a read-only mount there breaks applications that write temporary files)
    "/usr",
    "/var/run/secrets/kube-sts-sa",
    "/var/run/secrets/kubernetes.io",
)
"""Directories a token volume may not be mounted at or under: system folders an image needs, and
where Kubernetes and the sidecar mount ServiceAccount tokens."""

SUBJECT_FIELDS = frozenset({"cluster", "namespace", "saname", "pod", "role", "endpoint"})
DEFAULT_SUBJECT = "{cluster}:{namespace}:{saname}"
ROLE_SUBJECT = "{cluster}:{namespace}:{saname}:{role}"
AWS_ROLE_VARIABLE = "AWS_ROLE_ARN"
API_SERVER_AUDIENCES = (
    "https://kubernetes.default.svc.cluster.local",
    "https://kubernetes.default.svc",
    "https://kubernetes.default",
    "https://kubernetes",
    "kubernetes.default.svc.cluster.local",
    "kubernetes.default.svc",
    "kubernetes.default",
    "kubernetes",
)
"""Audiences Kubernetes API servers accept by default (the issuer, its short forms, ``kubernetes``)."""
CLOCK_SKEW = 300
"""Seconds of clock difference tolerated between the runtime and relying parties."""

# -- contracts ----------------------------------------------------------------------------------
# Values the compiler renders into the manifests (templates read them from the render context as
# ``contract``) and the runtime relies on; each is written here only.

PRODUCT = "kube-sts"
CONFIG_DIR = "/etc/kube-sts"
CONFIG_FILE = "config.json"
"""The runtime config's file name, in the ConfigMap and in ``CONFIG_DIR``."""
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
KEYS_DIR = f"{CONFIG_DIR}/keys"
"""One folder per endpoint (``KEYS_DIR/<endpoint>/KEYSET_FILE``), each a mounted key-set Secret."""
KEYSET_FILE = "keyset.json"
"""The data key of a key-set Secret, and its file name where it is mounted."""
TLS_DIR = f"{CONFIG_DIR}/tls"
TLS_CA_FILE = "ca.crt"
"""The TLS Secret's key of the CA certificate that signs the serving certificate."""
TLS_FILES = ("tls.crt", "tls.key", TLS_CA_FILE)
"""The TLS Secret's data keys mounted into ``TLS_DIR`` (never ``ca.key``)."""
RUN_AS_UID = 65532
"""The image's ``nonroot`` user and group (Dockerfile); the runtime and the injected sidecar run as it."""
SERVER_COMMAND = ("kube-sts-server", "--config", CONFIG_PATH)
RUNTIME_CONTAINER = "kube-sts"
"""Name of the runtime's container in its Pod: the sidecar image follows this container's image."""
POD_NAME_ENV = "POD_NAME"
POD_NAMESPACE_ENV = "POD_NAMESPACE"
"""The runtime's own Pod (downward API): it reads that Pod's spec for the sidecar image."""
SERVICE_PORT = 443
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
WEBHOOK_PATH = "/mutate/"
"""The admission webhook of endpoint ``e`` answers ``POST WEBHOOK_PATH + e``."""

LABEL_DOMAIN = "tremolo.io"
LABEL_PREFIX = LABEL_DOMAIN + "/"
"""Pods opt in with the label ``LABEL_PREFIX + <injector label>``; its annotation holds the role."""
ANNOTATION_PREFIX = f"{PRODUCT}.{LABEL_DOMAIN}/"
WEBHOOK_DOMAIN = f"sts.{LABEL_DOMAIN}"
"""The webhooks are named ``<endpoint>.<deployment name>.WEBHOOK_DOMAIN``."""
CONFIG_SHA_ANNOTATION = ANNOTATION_PREFIX + "config-sha256"
INJECTED_ANNOTATION = ANNOTATION_PREFIX + "injected"
EXCLUDE_ANNOTATION = ANNOTATION_PREFIX + "exclude-containers"
TLS_SECRET_LABEL = "kube-sts.io/tls-secret"  # noqa: S105 (a label key)
"""Marks a TLS Secret the runtime keeps. Outside ``LABEL_DOMAIN`` for history: TLS Secrets in
clusters carry it, and a Secret without it is never taken over, so it keeps its value."""

APP_LABEL_PREFIX = "app.kubernetes.io/"
NAME_LABEL = APP_LABEL_PREFIX + "name"
INSTANCE_LABEL = APP_LABEL_PREFIX + "instance"
VERSION_LABEL = APP_LABEL_PREFIX + "version"
COMPONENT_LABEL = APP_LABEL_PREFIX + "component"
PART_OF_LABEL = APP_LABEL_PREFIX + "part-of"
MANAGED_BY_LABEL = APP_LABEL_PREFIX + "managed-by"


def app_labels(component: str) -> dict[str, str]:
    """The recommended labels of an object the runtime creates itself."""
    return {NAME_LABEL: PRODUCT, COMPONENT_LABEL: component}


TOKEN_ROOT = "/var/run/secrets/kube-sts"  # noqa: S105 (a path, not a secret)
"""Where an endpoint's token directory is mounted in every injected container: ``<root>/<endpoint>``."""
TOKEN_FILE = "token"  # noqa: S105 (a file name)
CREDENTIAL_CONFIGURATION_FILE = "credential-configuration.json"
"""The Google ``external_account`` configuration the sidecar writes beside the token (``gcp`` preset)."""
GOOGLE_STS_URL = "https://sts.googleapis.com/v1/token"
AZURE_AUTHORITY_HOST = "https://login.microsoftonline.com/"
_GCP_PROVIDER = re.compile(
    r"^(?://iam\.googleapis\.com/)?(projects/[0-9]{1,20}/locations/global/workloadIdentityPools/"
    r"[a-z0-9-]{4,32}/providers/[a-z0-9-]{4,32})$"
)
_HTTPS_URL = re.compile(r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")
_AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")


def token_dir(endpoint: str) -> str:
    """The directory holding ``endpoint``'s token (and credential configuration) in injected containers."""
    return f"{TOKEN_ROOT}/{endpoint}"


ANNOTATION_PREFIX = "kube-sts." + LABEL_PREFIX
"""The domain of every Pod annotation kube-sts reads or writes (``kube-sts.tremolo.io/``)."""
MARKER_ANNOTATION = ANNOTATION_PREFIX + "injected"
"""Written by the webhook: the endpoints a Pod was injected for, comma-separated."""
EXCLUDE_ANNOTATION = ANNOTATION_PREFIX + "exclude-containers"
"""On a Pod: containers (comma-separated names) that get neither the token mount nor the variables."""
INCLUDE_ANNOTATION = ANNOTATION_PREFIX + "include-containers"
"""On a Pod: the only containers (comma-separated names) that get the token mount and the variables."""
LIFETIME_ANNOTATION = ANNOTATION_PREFIX + "token-lifetime"
"""On a Pod: the lifetime of its minted tokens (seconds or a duration such as ``15m``), from
``MIN_LIFETIME`` up to the endpoint's ``token.lifetime``; other values are refused."""
EKS_ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
"""On a ServiceAccount: the role of its Pods for AWS endpoints (the EKS Pod Identity webhook's key)."""
EKS_LIFETIME_ANNOTATION = "eks.amazonaws.com/token-expiration"
"""On a ServiceAccount: the lifetime (seconds) of its Pods' tokens for AWS endpoints (the EKS
webhook's key); ``LIFETIME_ANNOTATION`` on the ServiceAccount comes first, the Pod's own wins over both."""
SKIP_LABEL = ANNOTATION_PREFIX + "skip-injection"
"""On a Pod in a namespace of ``injector.serviceAccountNamespaces``: never selected by its
ServiceAccount (the webhook's objectSelector leaves it out). In kube-sts's own domain, not
``tremolo.io/``, so it can never be an injector's label."""
EKS_SKIP_LABEL = "eks.amazonaws.com/skip-pod-identity-webhook"
"""The EKS webhook's opt-out label, honoured like ``SKIP_LABEL`` by AWS endpoints."""
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Set by the API server on every Namespace to its name: namespace selectors need no labelling."""
PROTECTED_NAMESPACES = ("kube-system",)
"""Namespaces the webhook never selects (beside the runtime's own)."""
MIN_LIFETIME = 600
"""The shortest token lifetime an endpoint or a Pod may set (seconds)."""


def own_namespace_selected(endpoint: str, namespace: str) -> str:
    """Why endpoint ``endpoint`` may not select Pods of ``namespace``, the runtime's own."""
    return (
        f"endpoint {endpoint!r}: {namespace!r} is the runtime's own namespace; its Pods are never injected (the "
        "runtime could not start while its webhook is down), so remove it from injector.serviceAccountNamespaces"
    )


def _audience_key(audience: str) -> str:
    return audience.strip().rstrip("/").lower()


def api_server_audience(audience: str, api_audiences: tuple[str, ...] = ()) -> str | None:
    """Why ``audience`` is the API server's own (so its tokens would open the API), or None.

    ``api_audiences`` are the cluster's ``--api-audiences`` beyond the well-known defaults.
    """
    key = _audience_key(audience)
    for known in (*API_SERVER_AUDIENCES, *api_audiences):
        if key == _audience_key(known):
            return (
                f"{audience!r} is an audience of the Kubernetes API server; a token for it also opens the API "
                "server, so the STS would accept ordinary automounted tokens. Use an audience of its own, such as "
                "'kube-sts'"
            )
    return None


def one_line(error: Exception) -> str:
    """A config loading error as one line: ``field.path: message; ...`` for validation errors."""
    if isinstance(error, pydantic.ValidationError):
        parts = []
        for item in error.errors(include_url=False):
            where = ".".join(str(part) for part in item["loc"])
            message = str(item["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
        return "; ".join(parts)
    return " ".join(str(error).split())


def parse_duration(value: Any) -> Any:
    """Accept seconds as an integer or a duration such as ``90d``, ``1h``, ``10m30s``."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if not value.strip() or match is None:
            raise ValueError(f"{value!r} is not a duration; write seconds or e.g. '1h', '30m', '90d'")
        return sum(int(g or 0) * unit for g, unit in zip(match.groups(), _UNITS, strict=True))
    return value


Duration = Annotated[
    int,
    pydantic.BeforeValidator(parse_duration),
    pydantic.WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^(\d+d)?(\d+h)?(\d+m)?(\d+s)?$"},
            ]
        }
    ),
]


def _check(pattern: re.Pattern[str], what: str) -> Any:
    def validate(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return pydantic.AfterValidator(validate)


DnsLabel = Annotated[str, Field(max_length=63), _check(_DNS_LABEL, "a DNS label (lower-case letters, digits, '-')")]
SecretName = Annotated[str, Field(max_length=253), _check(_DNS_SUBDOMAIN, "a valid Secret name (DNS subdomain)")]
EnvName = Annotated[str, _check(_ENV_NAME, "a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)")]
LabelName = Annotated[
    str,
    Field(min_length=1, max_length=63),
    _check(_LABEL_NAME, "a label name (letters, digits, '-', '_', '.'; alphanumeric at both ends)"),
]


class Model(pydantic.BaseModel):
    """Strict base: unknown keys are errors, models are immutable, keys keep their aliases."""

    model_config = pydantic.ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=pydantic.alias_generators.to_camel,
        use_attribute_docstrings=True,
    )


class AzRule(Model):
    """One authorization rule; a caller is allowed when any rule of the endpoint matches."""

    scope: Literal["filter"]
    """The kind of rule. `filter` is an RFC 4515 LDAP filter over the caller's attributes."""
    constraint: str
    """The filter, e.g. `(namespace=myns)`. Attributes: namespace, saname, cluster, pod, role."""

    @pydantic.field_validator("constraint")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            rule_filter.parse(value)
        except rule_filter.FilterError as exc:
            raise ValueError(f"not an RFC 4515 filter: {exc}") from None
        return value

    def compiled(self) -> rule_filter.Filter:
        return rule_filter.parse(self.constraint)


class KeyManagement(Model):
    """How the endpoint's signing key set is owned and rotated."""

    mode: Literal["managed", "provided"] = "managed"
    """`managed`: the runtime creates the key set Secret if absent and rotates it. `provided`: the
    Secret is supplied by you (sealed-secrets, external-secrets, `sts-compile keys`); read-only."""
    rotation_period: Duration = 30 * 86400
    """How long one key signs before the next one takes over (managed mode)."""
    publish_lead: Duration = 86400
    """How long a new key is published in the JWKS before it signs (relying parties' caches)."""
    wait_for_publication: bool = True
    """Sign only with keys the issuer's public JWKS (`https://<host>/certs`) serves: a new key
    waits for the upload while the current one keeps signing; on a first deployment token
    requests get 503 until the documents are uploaded."""
    retain_after: Duration | None = None
    """How long a key stays in the JWKS after it stops signing. Default: the token lifetime plus
    5 minutes of clock skew; shorter values are rejected (tokens would outlive their key)."""

    @pydantic.model_validator(mode="after")
    def _lead_within_period(self) -> KeyManagement:
        if self.publish_lead < CLOCK_SKEW:
            raise ValueError(
                f"publishLead ({self.publish_lead}s) must be at least {CLOCK_SKEW}s: relying parties cache "
                "the JWKS for minutes and must see a new key before it signs"
            )
        if self.rotation_period <= self.publish_lead:
            raise ValueError(
                f"rotationPeriod ({self.rotation_period}s) must be longer than publishLead "
                f"({self.publish_lead}s); a key must sign longer than its successor is announced"
            )
        return self


def is_host_name(value: str) -> bool:
    """Whether ``value`` is an issuer host as ``issuer.host`` accepts it (no scheme, port or path)."""
    return bool(_HOSTNAME.match(value))


class Issuer(Model):
    """Where relying parties find the issuer documents, and which key set signs."""

    host: Annotated[str, _check(_HOSTNAME, "a host name (no scheme, port or path)")]
    """Host of the issuer URL `https://<host>`, e.g. a CloudFront distribution. No scheme."""
    keypair: SecretName
    """Name of the Secret (in the runtime's namespace) that holds this endpoint's key set."""
    keys: KeyManagement = KeyManagement()
    """Key set ownership and rotation."""

    @property
    def url(self) -> str:
        return f"https://{self.host}"


class Token(Model):
    """The tokens minted for this endpoint."""

    lifetime: Annotated[Duration, Field(ge=MIN_LIFETIME, le=86400)] = 3600
    """Lifetime of a minted token (10 minutes to 24 hours); a Pod may ask for a shorter one with the
    annotation `kube-sts.tremolo.io/token-lifetime`."""
    algorithm: Literal["RS256", "ES256"] = "RS256"
    """Signature algorithm. RS256 is accepted by every relying party; ES256 is faster."""
    subject: str | None = None
    """Template for `sub`; fields: cluster, namespace, saname, pod, role, endpoint. Default
    `{cluster}:{namespace}:{saname}`, and `{cluster}:{namespace}:{saname}:{role}` for AWS endpoints
    (the injector sets `AWS_ROLE_ARN`) whose rules mention `role`, so that a role's trust policy
    (conditions on `sub`) can refuse tokens authorized for any other role."""
    aws_session_tags: bool = False
    """Add `https://aws.amazon.com/tags` with namespace, saname and cluster as session tags."""

    @pydantic.field_validator("subject")
    @classmethod
    def _known_fields(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            fields = {name for _, name, spec, conv in string.Formatter().parse(value) if name is not None}
            specs = [spec or conv for _, name, spec, conv in string.Formatter().parse(value) if name]
        except ValueError as exc:
            raise ValueError(f"not a subject template: {exc}") from None
        unknown = sorted(fields - SUBJECT_FIELDS)
        if unknown:
            raise ValueError(f"unknown field {{{unknown[0]}}}; use {', '.join(sorted(SUBJECT_FIELDS))}")
        if any(specs):
            raise ValueError("format specs and conversions are not allowed in the subject template")
        if not value:
            raise ValueError("the subject template is empty")
        return value


Preset = Literal["aws", "azure", "gcp", "vault", "generic"]


class AwsSettings(Model):
    """Settings of the `aws` preset."""

    region: Annotated[str, _check(_AWS_REGION, "an AWS region such as 'eu-west-1'")] | None = None
    """Sets `AWS_REGION` and `AWS_DEFAULT_REGION` in application containers (as the EKS Pod
    identity webhook does with its region flag). Omit to leave the region to the Pod."""


class AzureSettings(Model):
    """Settings of the `azure` preset (what the Azure workload identity webhook injects)."""

    tenant_id: Annotated[str, _check(_TENANT, "an Entra tenant ID (a GUID) or a tenant domain")]
    """`AZURE_TENANT_ID`: the tenant of the app registrations or managed identities."""
    authority_host: Annotated[str, _check(_HTTPS_URL, "an https:// URL")] = AZURE_AUTHORITY_HOST
    """`AZURE_AUTHORITY_HOST`: Entra ID's login host (another cloud's, e.g. `https://login.microsoftonline.us/`)."""


class GcpSettings(Model):
    """Settings of the `gcp` preset: the workload identity pool provider that trusts this issuer."""

    provider: Annotated[
        str,
        _check(
            _GCP_PROVIDER,
            "a provider resource name 'projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<id>'",
        ),
    ]
    """The provider's resource name,
    `projects/<project number>/locations/global/workloadIdentityPools/<pool>/providers/<id>`
    (with or without the `//iam.googleapis.com/` prefix). The default audience is the provider's
    own default, `https://iam.googleapis.com/projects/...`."""
    token_url: Annotated[str, _check(_HTTPS_URL, "an https:// URL")] = GOOGLE_STS_URL
    """The Security Token Service the `external_account` configuration names."""

    @property
    def resource_name(self) -> str:
        """``//iam.googleapis.com/projects/...``: the ``audience`` of the credential configuration."""
        match = _GCP_PROVIDER.match(self.provider)
        assert match is not None
        return "//iam.googleapis.com/" + match.group(1)

    @property
    def default_audience(self) -> str:
        return "https:" + self.resource_name

    def credential_configuration(self, token_file: str, identity: str) -> dict[str, Any]:
        """The ``external_account`` JSON (as ``gcloud iam workload-identity-pools create-cred-config``
        writes it) reading ``token_file``; ``identity``, the Pod's annotation, is a service account
        to impersonate when it is an e-mail address, else (e.g. ``"true"``) the Pod uses direct
        resource access (its principal is the token's ``sub``)."""
        document: dict[str, Any] = {
            "type": "external_account",
            "audience": self.resource_name,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": self.token_url,
            "credential_source": {"file": token_file, "format": {"type": "text"}},
        }
        if _EMAIL.match(identity):
            document["service_account_impersonation_url"] = (
                f"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{identity}:generateAccessToken"
            )
        return document


class VaultSettings(Model):
    """Settings of the `vault` preset (HashiCorp Vault's JWT auth method)."""

    address: Annotated[str, _check(_HTTPS_URL, "an https:// URL")]
    """`VAULT_ADDR`, e.g. `https://vault.example.com:8200`; also the default audience (the Vault role's
    `bound_audiences`)."""
    auth_path: Annotated[
        str,
        Field(min_length=1),
        _check(re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"), "a mount path such as 'jwt'"),
    ] = "jwt"
    """`VAULT_AUTH_PATH`: where the JWT auth method is mounted (`vault auth enable -path=<this> jwt`)."""
    namespace: Annotated[str, Field(min_length=1)] | None = None
    """`VAULT_NAMESPACE` (Vault Enterprise / HCP Vault namespaces). Omit for none."""


_SETTINGS = {"aws": "aws", "azure": "azure", "gcp": "gcp", "vault": "vault"}
_NAMES = {
    "aws": ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"),
    "azure": ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID"),
    "gcp": ("KUBE_STS_TOKEN_FILE", "KUBE_STS_IDENTITY"),
    "vault": ("VAULT_JWT_FILE", "VAULT_AUTH_ROLE"),
}
_TOKEN_NAME = "token_environment_variable_name"  # noqa: S105 (a key)
_VALUE_NAME = "label_value_environment_variable_name"


def _given(mapping: dict[str, Any], key: str) -> bool:
    """Whether ``key`` (snake_case, or its camelCase alias) is set explicitly in ``mapping``."""
    return key in mapping or pydantic.alias_generators.to_camel(key) in mapping


def _setting(data: dict[str, Any], block: str, key: str) -> Any:
    settings = data.get(block)
    if not isinstance(settings, dict):
        return None
    return settings.get(key, settings.get(pydantic.alias_generators.to_camel(key)))


def preset_of(data: dict[str, Any]) -> Any:
    """The preset in force for raw endpoint ``data``: ``preset``, else ``aws`` when the injector
    hands the token to AWS SDKs (``AWS_WEB_IDENTITY_TOKEN_FILE``, the seed's layout), else ``generic``."""
    if "preset" in data:
        return data["preset"]
    injector = data.get("injector")
    if isinstance(injector, dict) and injector.get(_TOKEN_NAME) == _NAMES["aws"][0]:
        return "aws"
    return "generic"


def _extras(preset: str, data: dict[str, Any]) -> dict[str, str]:
    """The variables ``preset`` adds for application containers (explicit ``extraEnv`` entries win)."""
    extras: dict[str, str] = {}
    if preset == "aws":
        extras["AWS_STS_REGIONAL_ENDPOINTS"] = "regional"
        region = _setting(data, "aws", "region")
        if isinstance(region, str):
            extras["AWS_REGION"] = extras["AWS_DEFAULT_REGION"] = region
    elif preset == "azure":
        authority = _setting(data, "azure", "authority_host")
        extras["AZURE_AUTHORITY_HOST"] = authority if isinstance(authority, str) else AZURE_AUTHORITY_HOST
        tenant = _setting(data, "azure", "tenant_id")
        if isinstance(tenant, str):
            extras["AZURE_TENANT_ID"] = tenant
    elif preset == "gcp" and isinstance(data.get("name"), str):
        injector = data.get("injector")
        path = injector.get("tokenPath", injector.get("token_path")) if isinstance(injector, dict) else None
        directory = path.rsplit("/", 1)[0] if isinstance(path, str) and "/" in path else token_dir(data["name"])
        extras["GOOGLE_APPLICATION_CREDENTIALS"] = f"{directory}/{CREDENTIAL_CONFIGURATION_FILE}"
    elif preset == "vault":
        address = _setting(data, "vault", "address")
        if isinstance(address, str):
            extras["VAULT_ADDR"] = address
        path = _setting(data, "vault", "auth_path")
        extras["VAULT_AUTH_PATH"] = path if isinstance(path, str) else "jwt"
        namespace = _setting(data, "vault", "namespace")
        if isinstance(namespace, str):
            extras["VAULT_NAMESPACE"] = namespace
    return extras


def _audience(preset: str, data: dict[str, Any]) -> str | None:
    if preset == "aws":
        return "sts.amazonaws.com"
    if preset == "azure":
        return "api://AzureADTokenExchange"
    if preset == "gcp":
        provider = _setting(data, "gcp", "provider")
        match = _GCP_PROVIDER.match(provider) if isinstance(provider, str) else None
        return f"https://iam.googleapis.com/{match.group(1)}" if match else None
    if preset == "vault":
        address = _setting(data, "vault", "address")
        return address if isinstance(address, str) else None
    return None


def apply_preset(data: Any) -> Any:
    """Raw endpoint ``data`` with the preset's defaults filled in where no key is given.

    The preset is a default layer under the values file: an explicit key always wins, for
    ``extraEnv`` variable by variable. The result names its preset, so validating it again (the
    runtime reading the rendered ConfigMap) gives the same endpoint.
    """
    if not isinstance(data, dict):
        return data
    preset = preset_of(data)
    if preset not in _NAMES:
        return data
    if preset == "gcp" and data.get("gcp") is None:
        raise ValueError(
            "preset gcp needs gcp.provider, the workload identity pool provider's resource name "
            "'projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<id>'"
        )
    filled = {**data, "preset": preset}
    # An inferred preset does not choose the audience: the seed's layout always names it, and a
    # file of that layout without one is a mistake to report, not to guess.
    audience = _audience(preset, data) if "preset" in data else None
    if audience is not None and "audience" not in data:
        filled["audience"] = audience
    token = data.get("token", {})
    if isinstance(token, dict) and not _given(token, "algorithm"):
        filled["token"] = {**token, "algorithm": "RS256"}  # the one algorithm every relying party accepts
    injector = data.get("injector")
    if isinstance(injector, dict):
        names = dict(zip((_TOKEN_NAME, _VALUE_NAME), _NAMES[preset], strict=True))
        injector = {**{k: v for k, v in names.items() if k not in injector}, **injector}
        key = "extraEnv" if "extraEnv" in injector or "extra_env" not in injector else "extra_env"
        explicit = injector.get(key, {})
        if isinstance(explicit, dict):
            injector[key] = {**_extras(preset, data), **explicit}
        filled["injector"] = injector
    return filled


def _injector_schema(schema: dict[str, Any]) -> None:
    """The variable names are required unless the endpoint's preset sets them (``_endpoint_schema``)."""
    schema["required"] = [key for key in schema.get("required", []) if key not in (_TOKEN_NAME, _VALUE_NAME)]


def _endpoint_schema(schema: dict[str, Any]) -> None:
    """What ``apply_preset`` fills is required only where no preset does: the audience without an
    audience-setting preset (``vault`` sets it from ``vault.address``), the injector's variable
    names without a preset other than ``generic``, and ``gcp`` with the ``gcp`` preset. The
    ``aws`` preset inferred from ``AWS_WEB_IDENTITY_TOKEN_FILE`` changes nothing here: that
    injector names its variables itself."""
    schema["required"] = [key for key in schema.get("required", []) if key != "audience"]

    def preset(*names: str) -> dict[str, Any]:
        return {"required": ["preset"], "properties": {"preset": {"enum": list(names)}}}

    schema["allOf"] = [
        {
            "if": {"anyOf": [preset("aws", "azure", "gcp"), {**preset("vault"), "required": ["preset", "vault"]}]},
            "else": {"required": ["audience"]},
        },
        {
            "if": preset(*_NAMES),
            "else": {"properties": {"injector": {"required": [_TOKEN_NAME, _VALUE_NAME]}}},
        },
        {"if": preset("gcp"), "then": {"required": ["gcp"]}},
    ]


def _selectable(name: str) -> str:
    if name in PROTECTED_NAMESPACES:
        raise ValueError(
            f"{name!r}: the webhook never selects Pods of {name} (a webhook outage would block the "
            "cluster's own Pods); remove it from serviceAccountNamespaces"
        )
    return name


class Injector(Model):
    """What the admission webhook injects into Pods labelled `tremolo.io/<label>`."""

    model_config = pydantic.ConfigDict(**Model.model_config, json_schema_extra=_injector_schema)

    label: LabelName
    """Pods labelled `tremolo.io/<label>` get the sidecar; the annotation of the same key, on the
    Pod or on its ServiceAccount (which wins), holds the value (for AWS, the role ARN; a
    ServiceAccount's `eks.amazonaws.com/role-arn` counts too)."""
    token_environment_variable_name: Annotated[EnvName, Field(alias="token_environment_variable_name")]
    """Variable set to the token file's path, e.g. `AWS_WEB_IDENTITY_TOKEN_FILE`."""
    label_value_environment_variable_name: Annotated[EnvName, Field(alias="label_value_environment_variable_name")]
    """Variable set to the annotation's value, e.g. `AWS_ROLE_ARN`."""
    explicit_certificate_trust: Annotated[bool, Field(alias="explicit_certificate_trust")] = False
    """Accepted for compatibility; the sidecar always trusts exactly the STS's own CA."""
    extra_env: dict[EnvName, str] = {}
    """Further variables for application containers, e.g. `AWS_STS_REGIONAL_ENDPOINTS`."""
    service_account_namespaces: tuple[Annotated[DnsLabel, pydantic.AfterValidator(_selectable)], ...] = ()
    """ServiceAccount selection, opt-in (IRSA compatible): in these namespaces a Pod without the
    label is injected when its ServiceAccount binds a role (`tremolo.io/<label>`, or for AWS
    endpoints `eks.amazonaws.com/role-arn`), so workloads move from the EKS webhook untouched; a
    Pod labelled `kube-sts.tremolo.io/skip-injection` (AWS endpoints: also
    `eks.amazonaws.com/skip-pod-identity-webhook`) is left out. Every Pod created there passes
    through the webhook. Never `kube-system` or the runtime's namespace."""
    token_path: str | None = None
    """Absolute path of the token file in the Pod's containers, e.g. `/tokens/token.jwt` (where
    OpenUnison's sidecar wrote it). Its directory is the token volume's mount point (read-only in
    application containers; anything the image has there is hidden). Default
    `/var/run/secrets/kube-sts/<endpoint>/token`."""

    @pydantic.field_validator("token_path")
    @classmethod
    def _token_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _FILE_PATH.match(value):
            raise ValueError(
                f"{value!r} is not an absolute file path in a directory of its own, such as '/tokens/token.jwt' "
                "(letters, digits, '.', '_', '-'; no '.' or '..' parts, no trailing '/')"
            )
        directory = value.rsplit("/", 1)[0]
        for reserved in RESERVED_TOKEN_DIRECTORIES:
            if directory == reserved or directory.startswith(reserved + "/"):
                raise ValueError(
                    f"{value!r}: the token may not be mounted at or under {reserved}; choose another folder"
                )
        return value

    @pydantic.model_serializer(mode="wrap")
    def _without_account_selection(self, handler: pydantic.SerializerFunctionWrapHandler) -> Any:
        """Label selection alone (the default) leaves the rendered ``config.json`` as it was."""
        data = handler(self)
        if not self.service_account_namespaces and isinstance(data, dict):
            for key in ("serviceAccountNamespaces", "service_account_namespaces"):
                data.pop(key, None)
        return data

    @pydantic.field_validator("service_account_namespaces")
    @classmethod
    def _selectable_namespaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"{', '.join(map(repr, repeated))} listed more than once; list each namespace once")
        return value

    @property
    def label_key(self) -> str:
        return LABEL_PREFIX + self.label

    def token_file(self, endpoint: str) -> str:
        """Where application containers read the token of ``endpoint`` (the endpoint's name)."""
        return self.token_path if self.token_path is not None else f"{token_dir(endpoint)}/{TOKEN_FILE}"

    def token_directory(self, endpoint: str) -> str:
        """The token volume's mount point: the token file's directory."""
        return self.token_file(endpoint).rsplit("/", 1)[0]


class Endpoint(Model):
    """One STS endpoint: an audience, an issuer with its own key set, and who may use it."""

    model_config = pydantic.ConfigDict(**Model.model_config, json_schema_extra=_endpoint_schema)

    name: DnsLabel
    """Unique name; used in object names and the webhook path."""
    preset: Preset = "generic"
    """The relying party: its audience, injected variable names, algorithm and extra variables
    become this endpoint's defaults; any key set explicitly wins (`extraEnv` variable by variable).
    `aws` (also the default when the injector's token variable is `AWS_WEB_IDENTITY_TOKEN_FILE`,
    the seed's layout; then without choosing the audience): audience `sts.amazonaws.com`,
    `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN` (the annotation), `AWS_STS_REGIONAL_ENDPOINTS=regional`,
    and `AWS_REGION`/`AWS_DEFAULT_REGION` from `aws.region`. `azure`: audience
    `api://AzureADTokenExchange`, `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID` (the annotation),
    `AZURE_TENANT_ID` from `azure.tenantId`, `AZURE_AUTHORITY_HOST`. `gcp`: the provider's default
    audience, and the sidecar writes the `external_account` credential configuration beside the
    token, named by `GOOGLE_APPLICATION_CREDENTIALS` (needs `gcp.provider`). `vault`: audience
    `vault.address`, `VAULT_ADDR`, `VAULT_JWT_FILE`, `VAULT_AUTH_ROLE` (the annotation),
    `VAULT_AUTH_PATH`, `VAULT_NAMESPACE`. Every preset signs RS256. `generic`: no defaults."""
    aws: AwsSettings | None = None
    """Settings of the `aws` preset."""
    azure: AzureSettings | None = None
    """Settings of the `azure` preset."""
    gcp: GcpSettings | None = None
    """Settings of the `gcp` preset (required with it)."""
    vault: VaultSettings | None = None
    """Settings of the `vault` preset."""
    audience: Annotated[str, Field(min_length=1)]
    """`aud` of minted tokens: the relying party's client ID (e.g. `sts.amazonaws.com`). Required
    unless the preset sets it."""
    path: Annotated[str, _check(_PATH, "a URL path such as '/aws' (starts with '/', no trailing '/')")]
    """URL prefix of this endpoint on the token service, e.g. `/aws`."""
    az_rules: Annotated[list[AzRule], Field(alias="azRules")] = []
    """Authorization rules, OR-ed. No rules means no caller is allowed, so `sts-compile` refuses an
    endpoint without rules (`no-az-rules`: OpenUnison read none as allow-all); the runtime denies."""
    issuer: Issuer
    """The issuer relying parties trust."""
    injector: Injector | None = None
    """Admission webhook settings; omit to mint tokens without injection."""
    token: Token = Token()
    """Minted token settings."""

    def rules(self) -> tuple[rule_filter.Filter, ...]:
        return tuple(rule.compiled() for rule in self.az_rules)

    @property
    def rules_mention_role(self) -> bool:
        """Whether any rule looks at the ``role`` attribute (the Pod's annotation)."""

        def mentions(node: rule_filter.Filter) -> bool:
            return node.attribute == "role" or any(mentions(child) for child in node.children)

        return any(mentions(rule) for rule in self.rules())

    @property
    def aws_style(self) -> bool:
        """Whether the injector hands the annotation to AWS SDKs as the role to assume."""
        return self.injector is not None and self.injector.label_value_environment_variable_name == AWS_ROLE_VARIABLE

    @property
    def subject_template(self) -> str:
        """The ``sub`` template in force (``token.subject``, else the default for this endpoint)."""
        if self.token.subject is not None:
            return self.token.subject
        return ROLE_SUBJECT if self.aws_style and self.rules_mention_role else DEFAULT_SUBJECT

    @property
    def account_role_keys(self) -> tuple[str, ...]:
        """ServiceAccount annotations that bind the SA's Pods to a role, strongest first."""
        if self.injector is None:
            return ()
        if self.aws_style:
            return (self.injector.label_key, EKS_ROLE_ANNOTATION)
        return (self.injector.label_key,)

    @property
    def account_lifetime_keys(self) -> tuple[str, ...]:
        """ServiceAccount annotations that set the lifetime of its Pods' tokens, strongest first."""
        if self.injector is None:
            return ()
        if self.aws_style:
            return (LIFETIME_ANNOTATION, EKS_LIFETIME_ANNOTATION)
        return (LIFETIME_ANNOTATION,)

    @property
    def skip_labels(self) -> tuple[str, ...]:
        """Pod labels that keep a Pod out of ServiceAccount selection (``injector.serviceAccountNamespaces``)."""
        return (SKIP_LABEL, EKS_SKIP_LABEL) if self.aws_style else (SKIP_LABEL,)

    def selects_by_account(self, namespace: str, labels: Mapping[str, str]) -> bool:
        """Whether an unlabelled Pod in ``namespace`` with ``labels`` is selected by its ServiceAccount."""
        if self.injector is None or namespace not in self.injector.service_account_namespaces:
            return False
        return not any(key in labels for key in (self.injector.label_key, *self.skip_labels))

    def bound_by(self, account: Mapping[str, str] | None) -> bool:
        """Whether ServiceAccount annotations ``account`` bind a role for this endpoint."""
        return any((account or {}).get(key, "").strip() for key in self.account_role_keys)

    def lifetime_for(self, value: str | None, account: Mapping[str, str] | None = None) -> int:
        """The token lifetime for a Pod whose ``LIFETIME_ANNOTATION`` is ``value`` (None: absent)
        and whose ServiceAccount has ``account`` annotations (``account_lifetime_keys``); the
        Pod's own annotation wins, then the ServiceAccount's, strongest key first.

        Raises ``ValueError`` (saying what is accepted) for a value that is not a duration or is
        outside ``MIN_LIFETIME`` to ``token.lifetime``: refused, not clamped, so a Pod never
        runs with a lifetime other than the one it asked for without anyone being told.
        """
        where = f"the annotation {LIFETIME_ANNOTATION}"
        if value is None:
            for key in self.account_lifetime_keys:
                if (account or {}).get(key) is not None:
                    value, where = (account or {})[key], f"the ServiceAccount's annotation {key}"
                    break
        if value is None:
            return self.token.lifetime
        bounds = f"from {MIN_LIFETIME} to {self.token.lifetime} seconds (endpoint {self.name!r})"
        text = value.strip()
        seconds: Any = None
        if len(text) <= 32:  # bounds the parse whatever the Pod carries
            try:
                seconds = int(text) if text.isascii() and text.isdigit() else parse_duration(text)
            except ValueError:
                seconds = None
        if not isinstance(seconds, int) or not MIN_LIFETIME <= seconds <= self.token.lifetime:
            shown = value if len(value) <= 32 else value[:32] + "..."
            raise ValueError(f"{where} is {shown!r}; write seconds or a duration such as '15m', {bounds}")
        return seconds

    @property
    def role_unenforceable(self) -> bool:
        """Rules decide on ``role`` but the minted ``sub`` does not carry it (the relying party cannot check)."""
        return self.rules_mention_role and "{role}" not in self.subject_template

    @pydantic.model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, data: Any) -> Any:
        return apply_preset(data)

    @pydantic.model_validator(mode="after")
    def _settings_of_the_preset(self) -> Endpoint:
        for block in ("aws", "azure", "gcp", "vault"):
            if getattr(self, block) is not None and self.preset != block:
                raise ValueError(
                    f"{block}: settings apply only with preset: {block} (this endpoint's is {self.preset})"
                )
        return self

    def credential_configuration(self, identity: str) -> dict[str, Any] | None:
        """The credential configuration the sidecar writes beside the token for a Pod whose
        annotation is ``identity`` (``gcp`` preset), or None."""
        if self.gcp is None:
            return None
        return self.gcp.credential_configuration(self.token_file, identity)

    @property
    def token_file(self) -> str:
        """Where injected containers read this endpoint's token (``injector.tokenPath`` or the default)."""
        if self.injector is not None:
            return self.injector.token_file(self.name)
        return f"{token_dir(self.name)}/{TOKEN_FILE}"

    @pydantic.model_validator(mode="after")
    def _tokens_outlived_by_keys(self) -> Endpoint:
        retain = self.issuer.keys.retain_after
        needed = self.token.lifetime + CLOCK_SKEW
        if retain is not None and retain < needed:
            raise ValueError(
                f"issuer.keys.retainAfter ({retain}s) is shorter than token.lifetime ({self.token.lifetime}s) "
                f"plus {CLOCK_SKEW}s clock skew: tokens would outlive their key in the JWKS; "
                f"raise retainAfter to at least {needed}s or shorten the lifetime"
            )
        return self


class TLS(Model):
    """Where the runtime's serving certificate comes from."""

    mode: Literal["runtime", "cert-manager"] = "runtime"
    secret_name: SecretName
    """Secret holding `tls.crt`, `tls.key` and `ca.crt`."""
    dns_names: tuple[str, ...]
    """Names the serving certificate must cover."""
    watch_seconds: Annotated[int, Field(ge=1, le=3600)] = 240
    """Length of one watch on a webhook configuration (`runtime` mode): the API server ends it
    after this many seconds and the runtime lists the configuration again and watches on."""


class RuntimeConfig(Model):
    """Everything the runtime process reads at start (the rendered ConfigMap's `config.json`)."""

    cluster: str
    """Value of the `cluster` claim and rule attribute."""
    namespace: DnsLabel
    """Namespace the runtime runs in (its Secrets live here)."""
    service_url: str
    """Base URL the sidecars use to reach the token service."""
    api_audiences: tuple[str, ...] = ()
    """The cluster's `--api-audiences` beyond the well-known defaults: never a valid `stsAudience`."""
    sts_audience: Annotated[str, Field(min_length=1)]
    """Audience of the projected ServiceAccount tokens the sidecars present (never the API server's)."""
    port: int = 8443
    native_sidecars: bool = True
    """Inject the sidecar as a native sidecar (Kubernetes 1.29+)."""
    sidecar_image: str | None = None
    """Image of the injected sidecars. Unset (the default): the image of the runtime's own
    container (`RUNTIME_CONTAINER`), read from its Pod at start, so an image override by kustomize
    (`images:`) or Argo CD, which rewrites only the Deployment's `image:` field, reaches the sidecars too."""
    sidecar_resources: dict[str, dict[str, str]]
    webhook_configurations: tuple[str, ...] = ()
    """Names of our MutatingWebhookConfigurations (kept current in `runtime` TLS mode)."""
    tls: TLS
    endpoints: tuple[Endpoint, ...]

    @pydantic.field_validator("sts_audience")
    @classmethod
    def _not_the_api_servers(cls, value: str, info: pydantic.ValidationInfo) -> str:
        problem = api_server_audience(value, tuple(info.data.get("api_audiences", ())))
        if problem is not None:
            raise ValueError(problem)
        return value

    @pydantic.model_validator(mode="after")
    def _not_our_namespace(self) -> RuntimeConfig:
        for endpoint in self.endpoints:
            if endpoint.injector is not None and self.namespace in endpoint.injector.service_account_namespaces:
                raise ValueError(own_namespace_selected(endpoint.name, self.namespace))
        return self

    @pydantic.model_validator(mode="after")
    def _one_key_set_per_endpoint(self) -> RuntimeConfig:
        owners: dict[str, str] = {}
        for endpoint in self.endpoints:
            owner = owners.setdefault(endpoint.issuer.keypair, endpoint.name)
            if owner != endpoint.name:
                raise ValueError(
                    f"endpoints {owner!r} and {endpoint.name!r} share issuer.keypair {endpoint.issuer.keypair!r}; "
                    "each endpoint needs its own key set Secret so one endpoint's key never signs for another"
                )
        return self
