"""The runtime's configuration: what the token service, webhook and key manager consume.

The runtime owns this contract. The compiler validates a values file's endpoints with these
very models and renders a ``RuntimeConfig`` into a ConfigMap, so the two cannot drift apart.
Field names are the values file's keys (the seed's spelling where the seed has them,
camelCase for extensions); Python attributes are snake_case.
"""

from __future__ import annotations

import re
import string
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
    "RuntimeConfig",
    "Token",
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
TLS_FILES = ("tls.crt", "tls.key", "ca.crt")
"""The TLS Secret's data keys mounted into ``TLS_DIR`` (never ``ca.key``)."""
RUN_AS_UID = 65532
"""The image's ``nonroot`` user and group (Dockerfile); the runtime and the injected sidecar run as it."""
SERVER_COMMAND = ("kube-sts-server", "--config", CONFIG_PATH)
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

    lifetime: Annotated[Duration, Field(ge=600, le=86400)] = 3600
    """Lifetime of a minted token (10 minutes to 24 hours)."""
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


class Injector(Model):
    """What the admission webhook injects into Pods labelled `tremolo.io/<label>`."""

    label: LabelName
    """Pods labelled `tremolo.io/<label>` get the sidecar; the annotation of the same key holds
    the value (for AWS, the role ARN)."""
    token_environment_variable_name: Annotated[EnvName, Field(alias="token_environment_variable_name")]
    """Variable set to the token file's path, e.g. `AWS_WEB_IDENTITY_TOKEN_FILE`."""
    label_value_environment_variable_name: Annotated[EnvName, Field(alias="label_value_environment_variable_name")]
    """Variable set to the annotation's value, e.g. `AWS_ROLE_ARN`."""
    explicit_certificate_trust: Annotated[bool, Field(alias="explicit_certificate_trust")] = False
    """Accepted for compatibility; the sidecar always trusts exactly the STS's own CA."""
    extra_env: dict[EnvName, str] = {}
    """Further variables for application containers, e.g. `AWS_STS_REGIONAL_ENDPOINTS`."""

    @property
    def label_key(self) -> str:
        return LABEL_PREFIX + self.label


class Endpoint(Model):
    """One STS endpoint: an audience, an issuer with its own key set, and who may use it."""

    name: DnsLabel
    """Unique name; used in object names and the webhook path."""
    audience: Annotated[str, Field(min_length=1)]
    """`aud` of minted tokens: the relying party's client ID (e.g. `sts.amazonaws.com`)."""
    path: Annotated[str, _check(_PATH, "a URL path such as '/aws' (starts with '/', no trailing '/')")]
    """URL prefix of this endpoint on the token service, e.g. `/aws`."""
    az_rules: Annotated[list[AzRule], Field(alias="azRules")] = []
    """Authorization rules, OR-ed. No rules means no caller is allowed."""
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
    def role_unenforceable(self) -> bool:
        """Rules decide on ``role`` but the minted ``sub`` does not carry it (the relying party cannot check)."""
        return self.rules_mention_role and "{role}" not in self.subject_template

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
    sidecar_image: str
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
