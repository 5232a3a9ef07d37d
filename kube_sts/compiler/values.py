"""The values file model: the seed's ``sts:`` section plus extensions, each with a safe default.

Endpoints are the runtime's own ``config.Endpoint`` model, so what the compiler accepts is exactly
what the runtime runs. ``conflicts`` adds the checks that span several endpoints, and
``runtime_config`` builds the ConfigMap's content from validated values.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field

from kube_sts.runtime import config

__all__ = ["Conflict", "Values", "conflicts", "image_reference", "runtime_config", "warnings"]

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_REPOSITORY = re.compile(r"^[a-z0-9]+([._/:-][a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_VERSION = re.compile(r"^1\.([0-9]{1,2})$")
NATIVE_SIDECARS_SINCE = 29


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity such as '5m', '100m', '16Mi' or '1Gi'")
    return value


Quantity = Annotated[str, pydantic.AfterValidator(_quantity)]


class Compute(config.Model):
    """CPU and memory quantities."""

    cpu: Quantity | None = None
    """CPU, e.g. `50m`. Omit to leave unset."""
    memory: Quantity | None = None
    """Memory, e.g. `64Mi`. Omit to leave unset."""

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v is not None}


class ResourceRequirements(config.Model):
    """Requests and limits of one container."""

    requests: Compute
    """What the scheduler reserves."""
    limits: Compute
    """The ceiling; a memory limit is always set, a CPU limit is optional."""

    def as_dict(self) -> dict[str, dict[str, str]]:
        return {"requests": self.requests.as_dict(), "limits": self.limits.as_dict()}


class Resources(config.Model):
    """Resources of the token service and of the injected sidecar."""

    runtime: ResourceRequirements = ResourceRequirements(
        requests=Compute(cpu="50m", memory="96Mi"), limits=Compute(cpu="1", memory="256Mi")
    )
    """The token service and webhook container."""
    sidecar: ResourceRequirements = ResourceRequirements(
        requests=Compute(cpu="5m", memory="16Mi"), limits=Compute(cpu="100m", memory="32Mi")
    )
    """The sidecar injected into every labelled Pod: small, since it wakes up a few times an hour."""


class Image(config.Model):
    """The container image of the runtime (token service, webhook and sidecar)."""

    repository: Annotated[str, pydantic.AfterValidator(lambda v: _match(_REPOSITORY, v, "an image repository"))] = (
        "ghcr.io/kube-sts/kube-sts"
    )
    """Image repository, without tag or digest."""
    tag: Annotated[str, pydantic.AfterValidator(lambda v: _match(_TAG, v, "an image tag"))] = "0.1.0"
    """Image tag; ignored for pulling when `digest` is set, but kept as the version label."""
    digest: (
        Annotated[str, pydantic.AfterValidator(lambda v: _match(_DIGEST, v, "a digest 'sha256:<64 hex>'"))] | None
    ) = None
    """Image digest `sha256:...`; when set the image is pulled by digest (recommended)."""
    pull_policy: Literal["IfNotPresent", "Always", "Never"] | None = None
    """Kubernetes `imagePullPolicy`; default `IfNotPresent` with a digest, `Always` with only a tag
    (a tag can move, so every Pod start checks it)."""

    @property
    def effective_pull_policy(self) -> str:
        if self.pull_policy is not None:
            return self.pull_policy
        return "IfNotPresent" if self.digest else "Always"


def _match(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"{value!r} is not {what}")
    return value


def image_reference(image: Image) -> str:
    """``repository@digest`` when a digest is set, else ``repository:tag``."""
    return f"{image.repository}@{image.digest}" if image.digest else f"{image.repository}:{image.tag}"


def _image_string(value: object) -> object:
    """``sts.image`` as a reference string (OpenUnison's spelling): ``repository[:tag][@digest]``."""
    if not isinstance(value, str):
        return value
    reference, _, digest = value.partition("@")
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    parsed: dict[str, str] = {}
    if colon > slash:
        reference, parsed["tag"] = reference[:colon], reference[colon + 1 :]
    parsed["repository"] = reference
    if digest:
        parsed["digest"] = digest
    return parsed


class Certificates(config.Model):
    """How the serving certificate of the token service and webhook is obtained."""

    mode: Literal["runtime", "cert-manager"] = "runtime"
    """`runtime`: the runtime creates and renews its own CA and certificate in a Secret and keeps each
    webhook's `caBundle` current (no other software needed). `cert-manager`: rendered Issuer and
    Certificate objects; cert-manager's CA injector fills `caBundle`."""
    duration: config.Duration = 90 * 86400
    """Lifetime of the serving certificate (cert-manager mode)."""
    renew_before: config.Duration = 30 * 86400
    """Renew this long before expiry (cert-manager mode)."""


class Webhook(config.Model):
    """The mutating admission webhook that injects the sidecar."""

    failure_policy: Literal["Fail", "Ignore"] = "Fail"
    """`Fail` (default) rejects labelled Pods while the webhook is down, so no Pod that asked for an
    identity runs without one. Only labelled Pods are affected (objectSelector)."""
    timeout_seconds: Annotated[int, Field(ge=1, le=30)] = 5
    """Admission timeout, 1 to 30 seconds."""
    certificates: Certificates = Certificates()
    """Where the webhook's TLS certificate comes from."""


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR block such as '10.0.0.0/16' or '::/0' ({exc})") from None


def _some(value: tuple[object, ...]) -> tuple[object, ...]:
    if not value:
        raise ValueError("give at least one")
    return value


Cidr = Annotated[str, pydantic.AfterValidator(_cidr)]
Port = Annotated[int, Field(ge=1, le=65535)]
Cidrs = Annotated[tuple[Cidr, ...], pydantic.AfterValidator(_some)]
_ANYWHERE: tuple[str, ...] = ("0.0.0.0/0", "::/0")


class NetworkPolicy(config.Model):
    """Where the runtime may connect: the NetworkPolicy's egress rules (ingress is TCP 8443 only)."""

    api_server: Cidrs = _ANYWHERE
    """Addresses of the Kubernetes API server. Its address depends on the cluster, so the default
    is any address (on `apiServerPorts` only); narrow it to your control plane, e.g. the addresses
    `kubectl get endpointslices -l kubernetes.io/service-name=kubernetes` lists."""
    api_server_ports: Annotated[tuple[Port, ...], pydantic.AfterValidator(_some)] = (443, 6443)
    """TCP ports of the API server: 443 for the `kubernetes` Service's address and the API server's
    own port (6443 on most distributions), since CNIs check the policy before or after the
    Service's address translation."""
    dns_namespace: config.DnsLabel = "kube-system"
    """Namespace of the cluster DNS (UDP and TCP 53 to its Pods)."""
    issuer: Cidrs = _ANYWHERE
    """Addresses of the issuer hosts (TCP 443), rendered only when an endpoint has
    `waitForPublication`: the runtime fetches `https://<host>/certs`. A CDN's addresses change, so
    the default is any address."""


_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


def _qualified_name(value: str) -> str:
    prefix, _, name = value.rpartition("/")
    if not _QUALIFIED_NAME.match(value) or len(name) > 63 or len(prefix) > 253:
        raise ValueError(f"{value!r} is not a label or annotation key ([prefix/]name, name at most 63 characters)")
    return value


QualifiedName = Annotated[str, pydantic.AfterValidator(_qualified_name)]
LabelValue = Annotated[
    str, Field(max_length=63), pydantic.AfterValidator(lambda v: _match(_LABEL_VALUE, v, "a label value"))
]


class Toleration(config.Model):
    """A Pod toleration (Kubernetes' own fields)."""

    key: QualifiedName | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ServiceMonitor(config.Model):
    """A Prometheus Operator `ServiceMonitor` (`monitoring.coreos.com/v1`) for `/metrics`."""

    enabled: bool = False
    """Render it (the Prometheus Operator's CRDs must be installed)."""
    interval: Annotated[str, pydantic.AfterValidator(lambda v: _match(_INTERVAL, v, "a duration such as '30s'"))] = (
        "30s"
    )
    """Scrape interval."""
    labels: dict[QualifiedName, LabelValue] = Field(default_factory=dict)
    """Labels of the ServiceMonitor, e.g. the `release` label your Prometheus selects."""


_INTERVAL = re.compile(r"^([0-9]+(ms|s|m|h))+$")
OUR_LABELS = frozenset(
    {
        config.NAME_LABEL,
        config.INSTANCE_LABEL,
        config.VERSION_LABEL,
        config.COMPONENT_LABEL,
        config.PART_OF_LABEL,
        config.MANAGED_BY_LABEL,
    }
)


class Sts(config.Model):
    """The `sts:` section."""

    endpoints: Annotated[list[config.Endpoint], Field(min_length=1)]
    """STS endpoints: each an audience, an issuer with its own key set, and authorization rules."""
    namespace: config.DnsLabel = "kube-sts"
    """Namespace of the token service; the webhook never injects into it or into `kube-system`."""
    name: Annotated[config.DnsLabel, Field(max_length=40)] = "kube-sts"
    """Name (and prefix) of the rendered objects."""
    cluster: Annotated[str, Field(min_length=1, max_length=253)] = "kubernetes"
    """Cluster name: the `cluster` claim of minted tokens and the `cluster` rule attribute."""
    kubernetes_version: Annotated[
        str, pydantic.AfterValidator(lambda v: _match(_VERSION, v, "a Kubernetes version such as '1.31'"))
    ] = "1.31"
    """Oldest Kubernetes version the output must run on (`1.N`). From 1.29 the sidecar is a native
    sidecar (an init container with `restartPolicy: Always`); before, an init container plus a sidecar."""
    image: Annotated[Image, pydantic.BeforeValidator(_image_string, json_schema_input_type=str | Image)] = Image()
    """Container image: a mapping, or a reference string `repository[:tag][@digest]` (OpenUnison's
    spelling). OpenUnison's own sidecar image (`.../openunison-cli`, the default of its chart) is
    ignored with a note: kube-sts replaces that sidecar."""
    sidecar_image: (
        Annotated[Image, pydantic.BeforeValidator(_image_string, json_schema_input_type=str | Image)] | None
    ) = None
    """Image of the injected sidecars, only to run a different one than the runtime's. Unset (the
    default), the sidecars run the runtime's own image as its Pod holds it, so an override by
    kustomize (`images:`), Argo CD or `kubectl set image` reaches them too; set, it is frozen into
    the ConfigMap and such overrides no longer reach the sidecars."""
    replicas: Annotated[int, Field(ge=1, le=20)] = 2
    """Replicas of the token service; at least 2 keeps the fail-closed webhook available. One
    replica is refused while the webhook fails closed (`webhook.failurePolicy: Fail`): a node drain
    would evict it and labelled Pods would be refused until it is back."""
    resources: Resources = Resources()
    """Container resources."""
    node_selector: dict[QualifiedName, LabelValue] = Field(default_factory=dict)
    """`nodeSelector` of the token service's Pods."""
    tolerations: tuple[Toleration, ...] = ()
    """`tolerations` of the token service's Pods."""
    affinity: dict[str, Any] | None = None
    """`affinity` of the token service's Pods (Kubernetes' own schema), replacing the default: a
    preferred anti-affinity that spreads the replicas over nodes."""
    priority_class_name: Annotated[str, Field(max_length=253)] | None = None
    """`priorityClassName` of the token service's Pods. Unset: a PriorityClass `<name>-webhook`
    (value 1000000, above every workload at the default 0) is rendered and used, so a full node
    preempts ordinary Pods rather than leaving the fail-closed webhook unscheduled (while it is
    down, labelled Pods are refused). Not `system-cluster-critical`: many clusters (GKE among them)
    allow the `system-*` classes only in `kube-system` through their ResourceQuota admission
    configuration. A name: that existing class, nothing rendered; `""`: no priority class."""
    image_pull_secrets: tuple[config.SecretName, ...] = ()
    """`imagePullSecrets` of the token service's Pods (Secrets in its namespace). The injected
    sidecars run in the application's Pod and pull with that Pod's own secrets (or its node's
    credentials): a private registry must be pullable there too."""
    common_labels: dict[QualifiedName, LabelValue] = Field(default_factory=dict)
    """Labels added to every rendered object and to the token service's Pods (never to selectors,
    which are immutable); the `app.kubernetes.io/*` labels kube-sts sets cannot be replaced."""
    common_annotations: dict[QualifiedName, str] = Field(default_factory=dict)
    """Annotations added to every rendered object and to the token service's Pods."""
    service_monitor: ServiceMonitor = ServiceMonitor()
    """Optional Prometheus Operator ServiceMonitor for `/metrics` (off by default)."""
    webhook: Webhook = Webhook()
    """Admission webhook settings."""
    api_audiences: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    """The cluster's API server audiences (`--api-audiences`) beyond the well-known defaults
    (`https://kubernetes.default.svc.cluster.local`, `https://kubernetes.default.svc`, `kubernetes`, ...);
    `stsAudience` may be none of them."""
    network_policy: NetworkPolicy = NetworkPolicy()
    """Egress of the token service's NetworkPolicy."""
    sts_audience: Annotated[str, Field(min_length=1)] = "kube-sts"
    """Audience of the projected ServiceAccount token the sidecar presents to the token service
    (never the API server's audience, so neither token can be replayed to the other)."""

    @pydantic.field_validator("sts_audience")
    @classmethod
    def _not_the_api_servers(cls, value: str, info: pydantic.ValidationInfo) -> str:
        problem = config.api_server_audience(value, tuple(info.data.get("api_audiences", ())))
        if problem is not None:
            raise ValueError(problem)
        return value

    @pydantic.field_validator("common_labels")
    @classmethod
    def _not_ours(cls, value: dict[str, str]) -> dict[str, str]:
        taken = sorted(OUR_LABELS & set(value))
        if taken:
            raise ValueError(f"kube-sts sets {', '.join(taken)} itself (its selectors rely on them)")
        return value

    @property
    def priority_class(self) -> str | None:
        """The priorityClassName of the Pods, or None."""
        if self.priority_class_name is None:
            return f"{self.name}-webhook"
        return self.priority_class_name or None

    @property
    def native_sidecars(self) -> bool:
        match = _VERSION.match(self.kubernetes_version)
        assert match is not None
        return int(match.group(1)) >= NATIVE_SIDECARS_SINCE

    @property
    def service_host(self) -> str:
        return f"{self.name}.{self.namespace}.svc"

    @property
    def tls_secret(self) -> str:
        return f"{self.name}-tls"

    def webhook_configuration(self, endpoint: config.Endpoint) -> str:
        return f"{self.name}-{endpoint.name}"

    def webhook_configurations(self) -> tuple[str, ...]:
        return tuple(self.webhook_configuration(e) for e in self.endpoints if e.injector is not None)


class Values(config.Model):
    """A kube-sts values file (an OpenUnison values file is one too: see `compiler/openunison.py`)."""

    sts: Sts
    """The STS settings (the seed's `sts:` section plus extensions)."""
    k8s_cluster_name: Annotated[str | None, Field(alias="k8s_cluster_name", min_length=1, max_length=253)] = None
    """OpenUnison's cluster name (top level of its values file): used as `sts.cluster` when that is
    not set, so `sub` stays `<k8s_cluster_name>:<namespace>:<serviceaccount>`. Both set and
    different is an error."""

    @pydantic.model_validator(mode="before")
    @classmethod
    def _cluster_from_openunison(cls, data: object) -> object:
        name = data.get("k8s_cluster_name") if isinstance(data, dict) else None
        if isinstance(data, dict) and isinstance(name, str) and 0 < len(name) <= 253:  # else its own error
            sts = data.get("sts")
            if isinstance(sts, dict) and "cluster" not in sts:
                return {**data, "sts": {**sts, "cluster": data["k8s_cluster_name"]}}
        return data


@dataclasses.dataclass(frozen=True)
class Conflict:
    """A problem spanning several endpoints, at ``loc`` (aliases, as pydantic reports them)."""

    loc: tuple[str | int, ...]
    message: str
    code: str


NO_RULES = (
    "no azRules: kube-sts lets no caller use this endpoint (OpenUnison let every ServiceAccount of the "
    "cluster use an endpoint without azRules). Say who may: e.g. "
    "'azRules: [{scope: filter, constraint: \"(namespace=myns)\"}]', or "
    "'constraint: \"(namespace=*)\"' for every namespace, as OpenUnison did"
)


def conflicts(document: Values) -> list[Conflict]:
    """Names, paths, injector labels, key set Secrets and token directories must be unique;
    audiences may repeat; every endpoint needs rules; one replica only with a webhook that does not
    fail closed; ``k8s_cluster_name`` and ``sts.cluster`` agree."""
    sts = document.sts
    found: list[Conflict] = []
    if document.k8s_cluster_name is not None and document.k8s_cluster_name != sts.cluster:
        found.append(
            Conflict(
                ("k8s_cluster_name",),
                f"{document.k8s_cluster_name!r} differs from sts.cluster {sts.cluster!r}; both name the cluster in "
                "sub (<cluster>:<namespace>:<serviceaccount>), so keep one of them, or make them equal",
                "cluster-conflict",
            )
        )
    seen: dict[tuple[str, str], int] = {}
    for index, endpoint in enumerate(sts.endpoints):
        checks: list[tuple[str, str, tuple[str | int, ...]]] = [
            ("name", endpoint.name, ("name",)),
            ("path", endpoint.path, ("path",)),
            ("keypair", endpoint.issuer.keypair, ("issuer", "keypair")),
        ]
        if endpoint.injector is not None:
            checks.append(("label", endpoint.injector.label, ("injector", "label")))
        if not endpoint.az_rules:
            found.append(Conflict(("sts", "endpoints", index, "azRules"), NO_RULES, "no-az-rules"))
        for what, value, where in checks:
            first = seen.setdefault((what, value), index)
            if first != index:
                found.append(
                    Conflict(
                        ("sts", "endpoints", index, *where),
                        f"{value!r} is already used by sts.endpoints[{first}]; each endpoint needs its own {what}",
                        f"duplicate-{what}",
                    )
                )
        if endpoint.issuer.keypair == sts.tls_secret:
            found.append(
                Conflict(
                    ("sts", "endpoints", index, "issuer", "keypair"),
                    f"{endpoint.issuer.keypair!r} is the runtime's TLS Secret; choose another name",
                    "duplicate-keypair",
                )
            )
    found += _shared_token_directories(sts)
    found += _account_selection(sts)
    injects = any(endpoint.injector is not None for endpoint in sts.endpoints)
    if sts.replicas == 1 and sts.webhook.failure_policy == "Fail" and injects:
        found.append(
            Conflict(
                ("sts", "replicas"),
                "one replica and a webhook that fails closed: the PodDisruptionBudget cannot keep a replica"
                " running through a node drain, and labelled Pods are refused until it is back; set replicas"
                " to 2 or more, or webhook.failurePolicy to Ignore to let labelled Pods start without an"
                " identity meanwhile",
                "single-replica",
            )
        )
    return found


def _shared_token_directories(sts: Sts) -> list[Conflict]:
    """A Pod labelled for two endpoints would mount both token volumes at one directory."""
    found: list[Conflict] = []
    owners: dict[str, int] = {}
    for index, endpoint in enumerate(sts.endpoints):
        if endpoint.injector is None:
            continue
        directory = endpoint.injector.token_directory(endpoint.name)
        first = owners.setdefault(directory, index)
        if first != index and sts.endpoints[first].name != endpoint.name:
            found.append(
                Conflict(
                    ("sts", "endpoints", index, "injector", "tokenPath"),
                    f"the token directory {directory!r} is already that of sts.endpoints[{first}]; a Pod labelled for "
                    "both would mount two volumes there: give each endpoint's tokenPath a folder of its own",
                    "duplicate-token-directory",
                )
            )
    return found


def _account_selection(sts: Sts) -> list[Conflict]:
    """``injector.serviceAccountNamespaces`` never lists the runtime's namespace, and two endpoints
    that both read ``eks.amazonaws.com/role-arn`` never select the same namespace by it."""
    found: list[Conflict] = []
    readers: dict[str, int] = {}
    for index, endpoint in enumerate(sts.endpoints):
        if endpoint.injector is None:
            continue
        for position, namespace in enumerate(endpoint.injector.service_account_namespaces):
            where = ("sts", "endpoints", index, "injector", "serviceAccountNamespaces", position)
            if namespace == sts.namespace:
                found.append(
                    Conflict(where, config.own_namespace_selected(endpoint.name, namespace), "selects-own-namespace")
                )
            if config.EKS_ROLE_ANNOTATION not in endpoint.account_role_keys:
                continue
            first = readers.setdefault(namespace, index)
            if first != index:
                found.append(
                    Conflict(
                        where,
                        f"{namespace!r} is also selected by sts.endpoints[{first}], and both endpoints read "
                        f"{config.EKS_ROLE_ANNOTATION}: its Pods would get both sidecars for one role; list the "
                        "namespace under one endpoint",
                        "duplicate-service-account-namespace",
                    )
                )
    return found


def warnings(sts: Sts) -> list[Conflict]:
    """Values that compile but weaken what they seem to promise."""
    found: list[Conflict] = []
    for index, endpoint in enumerate(sts.endpoints):
        if endpoint.role_unenforceable:
            where: tuple[str | int, ...] = ("token", "subject") if endpoint.token.subject is not None else ("azRules",)
            found.append(
                Conflict(
                    ("sts", "endpoints", index, *where),
                    f"the rules decide on 'role', but the minted sub ({endpoint.subject_template!r}) does not carry "
                    "it, so a relying party cannot refuse a token authorized for one role when it is presented for "
                    "another; put {role} in token.subject (e.g. '{cluster}:{namespace}:{saname}:{role}') and pin "
                    "the whole sub in each role's trust policy",
                    "role-not-enforceable",
                )
            )
    return found


def runtime_config(sts: Sts) -> config.RuntimeConfig:
    """The runtime's configuration (the ConfigMap's ``config.json``) for validated values."""
    return config.RuntimeConfig(
        cluster=sts.cluster,
        namespace=sts.namespace,
        service_url=f"https://{sts.service_host}",
        api_audiences=tuple(sts.api_audiences),
        sts_audience=sts.sts_audience,
        native_sidecars=sts.native_sidecars,
        sidecar_image=image_reference(sts.sidecar_image) if sts.sidecar_image is not None else None,
        sidecar_resources=sts.resources.sidecar.as_dict(),
        webhook_configurations=sts.webhook_configurations() if sts.webhook.certificates.mode == "runtime" else (),
        tls=config.TLS(
            mode=sts.webhook.certificates.mode,
            secret_name=sts.tls_secret,
            dns_names=(sts.name, f"{sts.name}.{sts.namespace}", sts.service_host, f"{sts.service_host}.cluster.local"),
        ),
        endpoints=tuple(sts.endpoints),
    )
