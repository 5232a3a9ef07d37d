"""The JSONPatch that injects an endpoint's sidecar, token volume and SDK variables into a Pod.

Pure: ``patch(runtime, endpoints, pod, ca_pem, account)`` returns only targeted ``add`` operations
(RFC 6902, pointers escaped per RFC 6901) and warnings; it never replaces ``containers``,
``initContainers`` or ``volumes``. ``account`` is the annotations of the Pod's ServiceAccount,
read by the caller (the webhook) from the API server. A second pass over its own result returns
an empty patch.

Rules:
- a Pod is injected for an endpoint when it carries the label ``tremolo.io/<label>`` and has a
  role (the value, e.g. an AWS role ARN): its ServiceAccount's binding (``tremolo.io/<label>`` or,
  for AWS endpoints, ``eks.amazonaws.com/role-arn`` on the live ServiceAccount) or else its own
  non-empty annotation ``tremolo.io/<label>``; a Pod annotation that names another role than its
  ServiceAccount's is refused (``roles.role_of``);
- ServiceAccount selection (``injector.serviceAccountNamespaces``): in a listed namespace, a Pod
  without the label and without an opt-out label (``config.Endpoint.skip_labels``) is injected
  when its ServiceAccount binds a role, and left unchanged (no patch, no warning:
  ``Injection.unbound``) when it does not; its own annotation alone never selects it;
- application and init containers get the token volume read-only at the directory of the
  endpoint's token file (``injector.tokenPath``, default ``/var/run/secrets/kube-sts/<endpoint>/token``)
  and the variables, unless they already set them; the
  Pod annotation ``kube-sts.tremolo.io/exclude-containers`` (comma-separated names) leaves the
  containers it lists out, ``kube-sts.tremolo.io/include-containers`` injects only the ones it
  lists (a Pod that sets both is refused: which one wins would be a guess);
- reinvocation: a Pod already injected for an endpoint gets no second sidecar, volume or marker,
  but containers that lack the mount or variables (added by another mutating webhook after ours
  ran, e.g. a service mesh's proxy) get them, still with ``add`` operations only;
- ``kube-sts.tremolo.io/token-lifetime`` (seconds or a duration) outside ``config.MIN_LIFETIME``
  to the endpoint's ``token.lifetime`` is refused (422); the token service applies it at exchange.
  Without it on the Pod, the ServiceAccount's ``kube-sts.tremolo.io/token-lifetime`` (or, for AWS
  endpoints, ``eks.amazonaws.com/token-expiration``) counts, under the same rules;
- the variables are the endpoint's injector names and ``extra_env``, which its preset
  (``config.apply_preset``) fills with each relying party's defaults, e.g.
  ``AWS_STS_REGIONAL_ENDPOINTS=regional`` for ``aws``;
- an endpoint with a credential configuration (the ``gcp`` preset) hands it to the sidecar in
  ``KUBE_STS_CREDENTIAL_CONFIG``, built for the Pod's role value; the sidecar writes it beside the
  token, so ``GOOGLE_APPLICATION_CREDENTIALS`` names a file in the token volume (no ConfigMap
  per namespace);
- without native sidecars (Kubernetes before 1.29) an init container fetches the first token and a
  sidecar container refreshes it; a Pod that runs to completion (``restartPolicy`` ``Never`` or
  ``OnFailure``, e.g. a Job's) gets the init container only, with a warning, since a sidecar
  container would keep it from completing;
- the sidecar receives the STS CA certificate as the PEM in ``KUBE_STS_CA`` (no ConfigMap per
  namespace), and writes the token with mode 0644 into a memory-backed emptyDir (mode 0777), so
  any application user can read it whatever its UID or ``fsGroup``.

Refusals (``RefusedError``: a status code and a message the user sees in ``kubectl``):
- 400, a malformed Pod: every field the patch reads must have its Kubernetes type (the API server
  never sends anything else, so only a hostile caller meets this);
- 400, a Pod larger than kube-sts injects: more than ``MAX_CONTAINERS`` containers, init or
  ephemeral containers, more than ``MAX_ENTRIES`` volumes or env entries or volume mounts in one
  container, an annotation value longer than ``MAX_VALUE``, or a patch of more than
  ``MAX_OPERATIONS`` operations. The patch grows with containers times variables, and each
  variable carries the annotation's value: these caps bound the work and the answer of every
  review whatever the Pod holds (a few containers is what real Pods have; 64 is far above what
  any mesh or agent stack adds, and the caps cost a real Pod nothing);
- 422, a Pod that collides with the injection: a volume or container named like the ones
  kube-sts adds (the API server would refuse the duplicate name), or a container other than the
  sidecar that mounts the token volume without ``readOnly: true`` (it could replace the token the
  application reads). The last check also runs on Pods already injected, since another webhook
  may have added the container since.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from kube_sts.runtime import config, roles, sidecar

__all__ = [
    "CA_ENV",
    "CREDENTIAL_CONFIG_ENV",
    "EXCLUDE_ANNOTATION",
    "INCLUDE_ANNOTATION",
    "MARKER_ANNOTATION",
    "MAX_CONTAINERS",
    "MAX_ENTRIES",
    "MAX_OPERATIONS",
    "MAX_VALUE",
    "SIDECAR_COMMAND",
    "TOKEN_ROOT",
    "Injection",
    "RefusedError",
    "check",
    "escape",
    "patch",
]

MARKER_ANNOTATION = config.INJECTED_ANNOTATION
EXCLUDE_ANNOTATION = config.EXCLUDE_ANNOTATION
INCLUDE_ANNOTATION = config.INCLUDE_ANNOTATION
TOKEN_ROOT = config.TOKEN_ROOT
SA_TOKEN_ROOT = "/var/run/secrets/kube-sts-sa"  # noqa: S105 (a path)
API_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"  # noqa: S105 (a path)
"""Where the API server's ServiceAccount admission mounts the API token into every container that
has nothing mounted there. The sidecar mounts its own STS-audience token there instead, so it
never holds a credential for the API server (found by the control-plane tier: the API server
re-runs that admission after our patch and would mount the API token into the added sidecar)."""
CA_ENV = "KUBE_STS_CA"
CREDENTIAL_CONFIG_ENV = "KUBE_STS_CREDENTIAL_CONFIG"
SIDECAR_COMMAND = "kube-sts-sidecar"
SIDECAR_UID = config.RUN_AS_UID
SA_TOKEN_SECONDS = 3600

MAX_CONTAINERS = 64
"""Entries of ``containers``, ``initContainers`` and ``ephemeralContainers`` (before the sidecars kube-sts adds)."""
MAX_ENTRIES = 1024
"""Entries of ``volumes``, and of ``env`` and ``volumeMounts`` in one container."""
MAX_VALUE = 2048
"""Characters of the annotation's value (an IAM role ARN is at most 2,048; other providers' ids are shorter)."""
MAX_NAME = 253
"""Characters of a ServiceAccount's name (a DNS subdomain)."""
MAX_OPERATIONS = 1024
"""Operations in one patch: 128 containers times a mount and three AWS variables is about 520."""

Operation = dict[str, Any]


class RefusedError(Exception):
    """The Pod is not admitted: ``code`` is the HTTP status the API server reports, ``message`` says why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class Injection:
    operations: list[Operation]
    warnings: list[str]
    unbound: tuple[str, ...] = ()
    """Endpoints that selected the Pod by its ServiceAccount, which binds no role: left alone."""


def escape(token: str) -> str:
    """One RFC 6901 reference token: ``~`` -> ``~0``, ``/`` -> ``~1``."""
    return token.replace("~", "~0").replace("/", "~1")


def _name(prefix: str, endpoint: str, suffix: str = "") -> str:
    """A DNS label ``<prefix><endpoint><suffix>``, shortened with a digest beyond 63 characters."""
    name = f"{prefix}{endpoint}{suffix}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: 63 - len(suffix) - 9]}-{digest}{suffix}"


def sidecar_name(endpoint: str) -> str:
    return _name("kube-sts-", endpoint)


def token_dir(endpoint: config.Endpoint) -> str:
    """The token volume's mount point (the token file's directory)."""
    return token_path(endpoint).rsplit("/", 1)[0]


def token_path(endpoint: config.Endpoint) -> str:
    """The token file the sidecar writes and the token variable names."""
    return endpoint.token_file


def credential_config_path(endpoint: config.Endpoint) -> str:
    """The credential configuration the sidecar writes beside the token (``gcp`` preset)."""
    return f"{token_dir(endpoint)}/{config.CREDENTIAL_CONFIGURATION_FILE}"


def app_env(endpoint: config.Endpoint, value: str) -> list[tuple[str, str]]:
    """The variables an application container gets for ``endpoint``, in order."""
    injector = endpoint.injector
    assert injector is not None
    env = [
        (injector.token_environment_variable_name, token_path(endpoint)),
        (injector.label_value_environment_variable_name, value),
    ]
    env.extend(sorted(injector.extra_env.items()))
    return env


def sidecar_args(
    runtime: config.RuntimeConfig, endpoint: config.Endpoint, *, once: bool, credential_config: bool = False
) -> list[str]:
    args = [
        sidecar.Flag.URL,
        runtime.service_url.rstrip("/") + endpoint.path + "/token",
        sidecar.Flag.SERVICE_ACCOUNT_TOKEN,
        f"{SA_TOKEN_ROOT}/{endpoint.name}/token",
        sidecar.Flag.TOKEN_FILE,
        token_path(endpoint),
        sidecar.Flag.CA_ENV,
        CA_ENV,
    ]
    if credential_config:
        args += [
            sidecar.Flag.CREDENTIAL_CONFIG,
            credential_config_path(endpoint),
            sidecar.Flag.CREDENTIAL_CONFIG_ENV,
        ]
        args.append(CREDENTIAL_CONFIG_ENV)
    if once:
        args.append(sidecar.Flag.ONCE)
    return args


def _security_context(pod: Mapping[str, Any]) -> dict[str, Any]:
    pod_user = (pod["spec"].get("securityContext") or {}).get("runAsUser")
    user = pod_user if isinstance(pod_user, int) and pod_user > 0 else SIDECAR_UID
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _sidecar(
    runtime: config.RuntimeConfig,
    endpoint: config.Endpoint,
    pod: Mapping[str, Any],
    ca_pem: str,
    *,
    name: str,
    mode: str,
    identity: str,
) -> dict[str, Any]:
    """``mode``: "native" (restartPolicy Always + startup probe), "once" or "loop"; ``identity``:
    the Pod's annotation value."""
    env = [{"name": CA_ENV, "value": ca_pem}]
    document = endpoint.credential_configuration(identity)
    if document is not None:
        env.append({"name": CREDENTIAL_CONFIG_ENV, "value": json.dumps(document, sort_keys=True)})
    if runtime.sidecar_image is None:
        raise ValueError("the sidecar image is not resolved (server.resolve_sidecar_image runs at start)")
    container: dict[str, Any] = {
        "name": name,
        "image": runtime.sidecar_image,
        "command": [SIDECAR_COMMAND],
        "args": sidecar_args(runtime, endpoint, once=mode == "once", credential_config=document is not None),
        "env": env,
        "resources": {kind: dict(values) for kind, values in sorted(runtime.sidecar_resources.items())},
        "securityContext": _security_context(pod),
        "volumeMounts": [
            {"name": _name("kube-sts-", endpoint.name, "-token"), "mountPath": token_dir(endpoint)},
            {
                "name": _name("kube-sts-", endpoint.name, "-sa"),
                "mountPath": f"{SA_TOKEN_ROOT}/{endpoint.name}",
                "readOnly": True,
            },
            {"name": _name("kube-sts-", endpoint.name, "-sa"), "mountPath": API_TOKEN_PATH, "readOnly": True},
        ],
    }
    if mode != "once":
        check = {
            "exec": {"command": [SIDECAR_COMMAND, sidecar.Flag.CHECK, sidecar.Flag.TOKEN_FILE, token_path(endpoint)]}
        }
        container["readinessProbe"] = {**check, "periodSeconds": 10, "failureThreshold": 3}
    if mode == "native":
        container["restartPolicy"] = "Always"
        container["startupProbe"] = {**check, "periodSeconds": 1, "failureThreshold": 120}
    return container


def _volumes(runtime: config.RuntimeConfig, endpoint: config.Endpoint) -> list[dict[str, Any]]:
    return [
        {
            "name": _name("kube-sts-", endpoint.name, "-token"),
            "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"},
        },
        {
            "name": _name("kube-sts-", endpoint.name, "-sa"),
            "projected": {
                "defaultMode": 0o444,
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": runtime.sts_audience,
                            "expirationSeconds": SA_TOKEN_SECONDS,
                            "path": "token",
                        }
                    }
                ],
            },
        },
    ]


class _Builder:
    """Accumulates add operations, tracking list lengths so appends stay valid."""

    def __init__(self, pod: Mapping[str, Any]) -> None:
        self.operations: list[Operation] = []
        self.lengths: dict[str, int | None] = {}
        self.pod = pod

    def _length(self, pointer: str, current: Any) -> int | None:
        if pointer not in self.lengths:
            self.lengths[pointer] = len(current) if isinstance(current, list) else None
        return self.lengths[pointer]

    def append(self, pointer: str, current: Any, value: Any) -> None:
        length = self._length(pointer, current)
        if length is None:
            self.operations.append({"op": "add", "path": pointer, "value": [value]})
            self.lengths[pointer] = 1
        else:
            self.operations.append({"op": "add", "path": pointer + "/-", "value": value})
            self.lengths[pointer] = length + 1

    def insert(self, pointer: str, current: Any, index: int, value: Any) -> None:
        length = self._length(pointer, current)
        if length is None:
            self.operations.append({"op": "add", "path": pointer, "value": [value]})
            self.lengths[pointer] = 1
        else:
            self.operations.append({"op": "add", "path": f"{pointer}/{index}", "value": value})
            self.lengths[pointer] = length + 1


class _ContainerState:
    """What one container already has, as the patch so far leaves it."""

    def __init__(self, container: Mapping[str, Any]) -> None:
        self.lists = {key: isinstance(container.get(key), list) for key in ("env", "volumeMounts")}
        self.env_names = {v.get("name") for v in _list(container.get("env")) if isinstance(v, dict)}
        self.mount_paths = {m.get("mountPath") for m in _list(container.get("volumeMounts")) if isinstance(m, dict)}

    def add(self, base: str, key: str, value: dict[str, Any]) -> Operation:
        if self.lists[key]:
            return {"op": "add", "path": f"{base}/{key}/-", "value": value}
        self.lists[key] = True
        return {"op": "add", "path": f"{base}/{key}", "value": [value]}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _shown(name: str) -> str:
    """``name`` quoted for a message, cut to 63 characters (a Kubernetes name's length)."""
    return repr(name if len(name) <= 63 else name[:63] + "...")


def _malformed(where: str, expected: str) -> RefusedError:
    return RefusedError(400, f"kube-sts: the Pod is malformed: {where} must be {expected}")


def _object(parent: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> dict[str, Any]:
    value = parent.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise _malformed(where, "an object")
    return value


def _entries(parent: Mapping[str, Any], key: str, where: str, limit: int) -> list[dict[str, Any]]:
    """The list ``parent[key]`` of objects (absent or null: empty), refused past ``limit`` entries."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _malformed(where, "a list")
    if len(value) > limit:
        raise RefusedError(
            400, f"kube-sts: {where} has {len(value)} entries; kube-sts injects into Pods of at most {limit}"
        )
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise _malformed(f"{where}[{index}]", "an object")
    return value


def _typed(parent: Mapping[str, Any], key: str, where: str, kind: type, expected: str, *, required: bool) -> None:
    value = parent.get(key)
    if value is None and not required:
        return
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):  # bool is an int in Python
        raise _malformed(where, expected)


def _strings(parent: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    mapping = _object(parent, key, where)
    for name, value in mapping.items():
        if not isinstance(value, str):
            raise _malformed(f"{where}[{_shown(name)}]", "a string")
    return mapping


def check(pod: Mapping[str, Any]) -> None:
    """Refuse a Pod whose fields the patch reads do not have their Kubernetes types, or are over the caps."""
    metadata = _object(pod, "metadata", "metadata", required=True)
    _strings(metadata, "labels", "metadata.labels")
    _strings(metadata, "annotations", "metadata.annotations")
    spec = _object(pod, "spec", "spec", required=True)
    context = _object(spec, "securityContext", "spec.securityContext")
    _typed(context, "runAsUser", "spec.securityContext.runAsUser", int, "an integer", required=False)
    _typed(spec, "restartPolicy", "spec.restartPolicy", str, "a string", required=False)
    _typed(metadata, "namespace", "metadata.namespace", str, "a string", required=False)
    for field in ("serviceAccountName", "serviceAccount"):  # whose annotations the webhook reads
        _typed(spec, field, f"spec.{field}", str, "a string", required=False)
        if len(spec.get(field) or "") > MAX_NAME:
            raise _malformed(f"spec.{field}", f"a name of at most {MAX_NAME} characters")
    _entries(spec, "ephemeralContainers", "spec.ephemeralContainers", MAX_CONTAINERS)
    for index, volume in enumerate(_entries(spec, "volumes", "spec.volumes", MAX_ENTRIES)):
        _typed(volume, "name", f"spec.volumes[{index}].name", str, "a string", required=True)
    for field in ("initContainers", "containers"):
        for index, container in enumerate(_entries(spec, field, f"spec.{field}", MAX_CONTAINERS)):
            where = f"spec.{field}[{index}]"
            _typed(container, "name", f"{where}.name", str, "a string", required=True)
            for number, variable in enumerate(_entries(container, "env", f"{where}.env", MAX_ENTRIES)):
                _typed(variable, "name", f"{where}.env[{number}].name", str, "a string", required=True)
            for number, mount in enumerate(_entries(container, "volumeMounts", f"{where}.volumeMounts", MAX_ENTRIES)):
                at = f"{where}.volumeMounts[{number}]"
                _typed(mount, "name", f"{at}.name", str, "a string", required=True)
                _typed(mount, "mountPath", f"{at}.mountPath", str, "a string", required=True)
                _typed(mount, "readOnly", f"{at}.readOnly", bool, "true or false", required=False)


def _check_collisions(endpoint: config.Endpoint, spec: Mapping[str, Any], ours: set[str], *, injected: bool) -> None:
    """Refuse a Pod whose own volumes or containers take our names, or that can write our token.

    ``ours``: the names of the containers kube-sts adds for ``endpoint``; ``injected``: whether it did.
    """
    token_volume = _name("kube-sts-", endpoint.name, "-token")
    fields = ("initContainers", "containers")
    if not injected:
        reserved = {token_volume, _name("kube-sts-", endpoint.name, "-sa")}
        for index, volume in enumerate(_list(spec.get("volumes"))):
            if volume["name"] in reserved:
                raise RefusedError(
                    422,
                    f"kube-sts: spec.volumes[{index}] is named {volume['name']!r}, a name kube-sts reserves for "
                    f"endpoint {endpoint.name!r}; rename the volume",
                )
        for field in fields:
            for index, container in enumerate(_list(spec.get(field))):
                if container["name"] in ours:
                    raise RefusedError(
                        422,
                        f"kube-sts: spec.{field}[{index}] is named {_shown(container['name'])}, a name kube-sts "
                        f"reserves for endpoint {endpoint.name!r}; rename the container",
                    )
    for field in fields:
        for index, container in enumerate(_list(spec.get(field))):
            if container["name"] in ours:
                continue
            for mount in _list(container.get("volumeMounts")):
                if mount["name"] == token_volume and mount.get("readOnly") is not True:
                    raise RefusedError(
                        422,
                        f"kube-sts: spec.{field}[{index}] ({_shown(container['name'])}) mounts the token volume "
                        f"{token_volume!r} without readOnly: true; only the kube-sts sidecar may write the token",
                    )


def _names(annotations: Mapping[str, Any], key: str) -> set[str] | None:
    """The comma-separated container names of annotation ``key``; None when it is absent."""
    value = annotations.get(key)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _sidecar_names(runtime: config.RuntimeConfig) -> set[str]:
    """Every container name kube-sts adds, for every endpoint with an injector."""
    names: set[str] = set()
    for endpoint in runtime.endpoints:
        if endpoint.injector is not None:
            names |= {sidecar_name(endpoint.name), _name("kube-sts-", endpoint.name, "-init")}
    return names


def _role(endpoint: config.Endpoint, annotations: Mapping[str, Any], account: Mapping[str, str] | None) -> str | None:
    """The endpoint's role for the Pod (``roles.role_of``), refused past ``MAX_VALUE`` or on a conflict."""
    assert endpoint.injector is not None
    try:
        value = roles.role_of(endpoint, annotations, account)
    except roles.RoleConflictError as conflict:
        raise RefusedError(422, conflict.message) from None
    if value is not None and len(value) > MAX_VALUE:
        bound = [key for key in endpoint.account_role_keys if (account or {}).get(key, "").strip()]
        where = f"ServiceAccount's annotation {bound[0]}" if bound else f"annotation {endpoint.injector.label_key}"
        raise RefusedError(
            400, f"kube-sts: the {where} is {len(value)} characters long; at most {MAX_VALUE} are accepted"
        )
    return value.strip() if value is not None and value.strip() else None


def patch(  # noqa: PLR0915 (one pass over endpoints and containers)
    runtime: config.RuntimeConfig,
    endpoints: Sequence[config.Endpoint],
    pod: Mapping[str, Any],
    ca_pem: str,
    account: Mapping[str, str] | None = None,
    *,
    namespace: str = "",
) -> Injection:
    """The operations that inject ``endpoints`` into ``pod`` (the Pod JSON as received).

    ``account``: the annotations of the Pod's ServiceAccount as the API server holds them (None:
    not read), which may bind the Pod to a role (``roles.role_of``) and set its token lifetime.
    ``namespace``: the review's namespace (else the Pod's ``metadata.namespace``); an endpoint
    selects an unlabelled Pod there by its ServiceAccount when it lists it in
    ``injector.serviceAccountNamespaces`` (``config.Endpoint.selects_by_account``), and leaves
    it alone (``Injection.unbound``) when that ServiceAccount binds no role.

    A Pod already injected for an endpoint (marker or sidecar present) gets no second sidecar or
    volume; containers added since (by another mutating webhook, before a reinvocation) get the
    mount and the variables they lack, so a second pass over a complete Pod returns nothing.
    Raises ``RefusedError`` for a Pod that is malformed, over the caps or collides with the injection.
    """
    check(pod)
    metadata = pod["metadata"]
    spec = pod["spec"]
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    marker = {name for name in annotations.get(MARKER_ANNOTATION, "").split(",") if name}
    excluded = _names(annotations, EXCLUDE_ANNOTATION)
    included = _names(annotations, INCLUDE_ANNOTATION)
    containers = _list(spec.get("containers"))
    init_containers = _list(spec.get("initContainers"))
    existing_names = {c["name"] for c in containers + init_containers}
    volume_names = {v["name"] for v in _list(spec.get("volumes"))}
    sidecars = _sidecar_names(runtime)
    builder = _Builder(pod)
    state: dict[tuple[str, int], _ContainerState] = {}
    warnings: list[str] = []
    injected: list[str] = []
    unbound: list[str] = []
    namespace = namespace or metadata.get("namespace") or ""
    for endpoint in endpoints:
        injector = endpoint.injector
        if injector is None:
            continue
        if injector.label_key not in labels:
            if not endpoint.selects_by_account(namespace, labels):
                continue
            if not endpoint.bound_by(account):
                unbound.append(endpoint.name)
                continue
        name = sidecar_name(endpoint.name)
        init_name = _name("kube-sts-", endpoint.name, "-init")
        token_volume = _name("kube-sts-", endpoint.name, "-token")
        already = endpoint.name in marker or name in existing_names
        _check_collisions(endpoint, spec, {name} if runtime.native_sidecars else {name, init_name}, injected=already)
        if included is not None and excluded is not None:
            raise RefusedError(
                422,
                f"kube-sts: the Pod sets both {INCLUDE_ANNOTATION} and {EXCLUDE_ANNOTATION}; "
                "set one of them (include: only the containers listed; exclude: all but those listed)",
            )
        if already and token_volume not in volume_names:
            continue  # marked by hand, or injected by another release: nothing to complete
        value = _role(endpoint, annotations, account)
        if value is None:
            if not already:
                warnings.append(
                    f"kube-sts: Pod carries the label {injector.label_key} but neither it nor its ServiceAccount "
                    f"has a non-empty annotation {injector.label_key}; endpoint {endpoint.name!r} was not injected"
                )
            continue
        if not already:
            try:
                endpoint.lifetime_for(annotations.get(config.LIFETIME_ANNOTATION), account)
            except ValueError as problem:
                raise RefusedError(422, f"kube-sts: {problem}") from None
            injected.append(endpoint.name)
            for volume in _volumes(runtime, endpoint):
                builder.append("/spec/volumes", spec.get("volumes"), volume)
            position = len(injected) - 1
            if runtime.native_sidecars:
                sidecar = _sidecar(runtime, endpoint, pod, ca_pem, name=name, mode="native", identity=value)
                builder.insert("/spec/initContainers", spec.get("initContainers"), position, sidecar)
            else:
                first = _sidecar(runtime, endpoint, pod, ca_pem, name=init_name, mode="once", identity=value)
                builder.insert("/spec/initContainers", spec.get("initContainers"), position, first)
                if spec.get("restartPolicy") in ("Never", "OnFailure"):
                    # A regular sidecar container would keep a Job's Pod from ever completing.
                    warnings.append(
                        f"kube-sts: endpoint {endpoint.name!r}: this Pod runs to completion and the cluster has no "
                        f"native sidecars, so it gets one token (valid {endpoint.token.lifetime}s) that is not "
                        "refreshed"
                    )
                else:
                    loop = _sidecar(runtime, endpoint, pod, ca_pem, name=name, mode="loop", identity=value)
                    builder.append("/spec/containers", spec.get("containers"), loop)
        mount = {"name": token_volume, "mountPath": token_dir(endpoint), "readOnly": True}
        env = app_env(endpoint, value)
        for field, listed in (("initContainers", init_containers), ("containers", containers)):
            for index, container in enumerate(listed):
                own = container["name"]
                if own in sidecars or (excluded is not None and own in excluded):
                    continue
                if included is not None and own not in included:
                    continue
                # existing init containers shift by the sidecars inserted before them
                shift = len(injected) if field == "initContainers" else 0
                base = f"/spec/{field}/{index + shift}"
                seen = state.setdefault((field, index), _ContainerState(container))
                if mount["mountPath"] not in seen.mount_paths:
                    builder.operations.append(seen.add(base, "volumeMounts", mount))
                    seen.mount_paths.add(str(mount["mountPath"]))
                for variable, setting in env:
                    if variable not in seen.env_names:
                        builder.operations.append(seen.add(base, "env", {"name": variable, "value": setting}))
                        seen.env_names.add(variable)
                if len(builder.operations) > MAX_OPERATIONS:
                    raise RefusedError(
                        400,
                        f"kube-sts: the patch for this Pod would need more than {MAX_OPERATIONS} operations "
                        "(containers times variables to add); set fewer containers or extra variables",
                    )
    if injected:
        if not isinstance(metadata.get("annotations"), dict):
            builder.operations.append({"op": "add", "path": "/metadata/annotations", "value": {}})
        builder.operations.append(
            {
                "op": "add",
                "path": "/metadata/annotations/" + escape(MARKER_ANNOTATION),
                "value": ",".join(sorted(marker | set(injected))),
            }
        )
    return Injection(builder.operations, warnings, tuple(unbound))
