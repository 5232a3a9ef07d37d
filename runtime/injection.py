"""The JSONPatch that injects an endpoint's sidecar, token volume and SDK variables into a Pod.

Pure: ``patch(runtime, endpoints, pod, ca_pem)`` returns only targeted ``add`` operations (RFC 6902,
pointers escaped per RFC 6901) and warnings; it never replaces ``containers``, ``initContainers``
or ``volumes``. A Pod already injected for an endpoint (marker annotation or sidecar present) gets
nothing more for it, so a second pass returns an empty patch.

Rules:
- a Pod is injected for an endpoint when it carries the label ``tremolo.io/<label>`` and a
  non-empty annotation of the same key (the value, e.g. an AWS role ARN);
- application and init containers get the token volume read-only at
  ``/var/run/secrets/kube-sts/<endpoint>`` and the variables, unless they already set them or are
  listed in the ``kube-sts.tremolo.io/exclude-containers`` annotation (comma-separated names);
- AWS rule: an endpoint whose token variable is ``AWS_WEB_IDENTITY_TOKEN_FILE`` (the variable
  every AWS SDK reads) also gets ``AWS_STS_REGIONAL_ENDPOINTS=regional`` unless its
  ``extra_env`` sets that variable;
- without native sidecars (Kubernetes before 1.29) an init container fetches the first token and a
  sidecar container refreshes it; a Pod that runs to completion (``restartPolicy`` ``Never`` or
  ``OnFailure``, e.g. a Job's) gets the init container only, with a warning, since a sidecar
  container would keep it from completing;
- the sidecar receives the STS CA certificate as the PEM in ``KUBE_STS_CA`` (no ConfigMap per
  namespace), and writes the token with mode 0644 into a memory-backed emptyDir (mode 0777), so
  any application user can read it whatever its UID or ``fsGroup``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from kube_sts.runtime import config

__all__ = [
    "CA_ENV",
    "EXCLUDE_ANNOTATION",
    "MARKER_ANNOTATION",
    "SIDECAR_COMMAND",
    "TOKEN_ROOT",
    "Injection",
    "escape",
    "patch",
]

MARKER_ANNOTATION = "kube-sts.tremolo.io/injected"
EXCLUDE_ANNOTATION = "kube-sts.tremolo.io/exclude-containers"
TOKEN_ROOT = "/var/run/secrets/kube-sts"  # noqa: S105 (a path, not a secret)
SA_TOKEN_ROOT = "/var/run/secrets/kube-sts-sa"  # noqa: S105 (a path)
CA_ENV = "KUBE_STS_CA"
SIDECAR_COMMAND = "kube-sts-sidecar"
SIDECAR_UID = 65532
SA_TOKEN_SECONDS = 3600
AWS_TOKEN_VARIABLE = "AWS_WEB_IDENTITY_TOKEN_FILE"  # noqa: S105 (a variable name)

Operation = dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Injection:
    operations: list[Operation]
    warnings: list[str]


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


def token_dir(endpoint: str) -> str:
    return f"{TOKEN_ROOT}/{endpoint}"


def token_path(endpoint: str) -> str:
    return f"{token_dir(endpoint)}/token"


def app_env(endpoint: config.Endpoint, value: str) -> list[tuple[str, str]]:
    """The variables an application container gets for ``endpoint``, in order."""
    injector = endpoint.injector
    assert injector is not None
    env = [
        (injector.token_environment_variable_name, token_path(endpoint.name)),
        (injector.label_value_environment_variable_name, value),
    ]
    extras = dict(injector.extra_env)
    if injector.token_environment_variable_name == AWS_TOKEN_VARIABLE:
        extras.setdefault("AWS_STS_REGIONAL_ENDPOINTS", "regional")
    env.extend(sorted(extras.items()))
    return env


def sidecar_args(runtime: config.RuntimeConfig, endpoint: config.Endpoint, *, once: bool) -> list[str]:
    args = [
        "--url",
        runtime.service_url.rstrip("/") + endpoint.path + "/token",
        "--service-account-token",
        f"{SA_TOKEN_ROOT}/{endpoint.name}/token",
        "--token-file",
        token_path(endpoint.name),
        "--ca-env",
        CA_ENV,
    ]
    if once:
        args.append("--once")
    return args


def _security_context(pod: Mapping[str, Any]) -> dict[str, Any]:
    pod_user = (pod.get("spec", {}).get("securityContext") or {}).get("runAsUser")
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
) -> dict[str, Any]:
    """``mode``: "native" (restartPolicy Always + startup probe), "once" or "loop"."""
    container: dict[str, Any] = {
        "name": name,
        "image": runtime.sidecar_image,
        "command": [SIDECAR_COMMAND],
        "args": sidecar_args(runtime, endpoint, once=mode == "once"),
        "env": [{"name": CA_ENV, "value": ca_pem}],
        "resources": {kind: dict(values) for kind, values in sorted(runtime.sidecar_resources.items())},
        "securityContext": _security_context(pod),
        "volumeMounts": [
            {"name": _name("kube-sts-", endpoint.name, "-token"), "mountPath": token_dir(endpoint.name)},
            {
                "name": _name("kube-sts-", endpoint.name, "-sa"),
                "mountPath": f"{SA_TOKEN_ROOT}/{endpoint.name}",
                "readOnly": True,
            },
        ],
    }
    if mode != "once":
        check = {"exec": {"command": [SIDECAR_COMMAND, "--check", "--token-file", token_path(endpoint.name)]}}
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


def patch(  # noqa: PLR0915 (one pass over endpoints and containers)
    runtime: config.RuntimeConfig,
    endpoints: Sequence[config.Endpoint],
    pod: Mapping[str, Any],
    ca_pem: str,
) -> Injection:
    """The operations that inject ``endpoints`` into ``pod`` (the Pod JSON as received)."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    marker = {name for name in str(annotations.get(MARKER_ANNOTATION, "")).split(",") if name}
    excluded = {name.strip() for name in str(annotations.get(EXCLUDE_ANNOTATION, "")).split(",") if name.strip()}
    containers = _list(spec.get("containers"))
    init_containers = _list(spec.get("initContainers"))
    existing_names = {c.get("name") for c in containers + init_containers if isinstance(c, dict)}
    builder = _Builder(pod)
    state: dict[tuple[str, int], _ContainerState] = {}
    warnings: list[str] = []
    injected: list[str] = []
    ours: set[str] = set()
    for endpoint in endpoints:
        injector = endpoint.injector
        if injector is None or injector.label_key not in labels:
            continue
        if endpoint.name in marker or sidecar_name(endpoint.name) in existing_names:
            continue
        value = annotations.get(injector.label_key)
        if not isinstance(value, str) or not value.strip():
            warnings.append(
                f"kube-sts: Pod carries the label {injector.label_key} but no non-empty annotation "
                f"{injector.label_key}; endpoint {endpoint.name!r} was not injected"
            )
            continue
        injected.append(endpoint.name)
        for volume in _volumes(runtime, endpoint):
            builder.append("/spec/volumes", spec.get("volumes"), volume)
        name = sidecar_name(endpoint.name)
        ours.add(name)
        position = len(injected) - 1
        if runtime.native_sidecars:
            sidecar = _sidecar(runtime, endpoint, pod, ca_pem, name=name, mode="native")
            builder.insert("/spec/initContainers", spec.get("initContainers"), position, sidecar)
        else:
            init_name = _name("kube-sts-", endpoint.name, "-init")
            ours.add(init_name)
            first = _sidecar(runtime, endpoint, pod, ca_pem, name=init_name, mode="once")
            builder.insert("/spec/initContainers", spec.get("initContainers"), position, first)
            if spec.get("restartPolicy") in ("Never", "OnFailure"):
                # A regular sidecar container would keep a Job's Pod from ever completing.
                warnings.append(
                    f"kube-sts: endpoint {endpoint.name!r}: this Pod runs to completion and the cluster has no "
                    f"native sidecars, so it gets one token (valid {endpoint.token.lifetime}s) that is not refreshed"
                )
            else:
                loop = _sidecar(runtime, endpoint, pod, ca_pem, name=name, mode="loop")
                builder.append("/spec/containers", spec.get("containers"), loop)
        mount = {
            "name": _name("kube-sts-", endpoint.name, "-token"),
            "mountPath": token_dir(endpoint.name),
            "readOnly": True,
        }
        env = app_env(endpoint, value.strip())
        for field, listed in (("initContainers", init_containers), ("containers", containers)):
            for index, container in enumerate(listed):
                if not isinstance(container, dict) or container.get("name") in excluded | ours:
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
    return Injection(builder.operations, warnings)
