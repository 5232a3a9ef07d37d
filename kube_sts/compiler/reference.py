"""The values reference (``docs/values.md``) generated from the models' fields and docstrings."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import pydantic
from pydantic_core import PydanticUndefined

__all__ = ["markdown"]

_INTRO = """\
# Values reference

Generated from the models by `python -m kube_sts.compiler.schema` (a test fails when this file is
stale). The JSON Schema of the same file is `kube_sts/schemas/values.schema.json` (`sts-compile --schema`).

## Usage

    sts-compile examples/aws/values.yaml | kubectl apply -f -
    sts-compile examples/aws/values.yaml --output-dir deploy/   # one file per object + kustomization.yaml
    sts-compile examples/aws/values.yaml --check deploy/        # exit 1 and a diff when deploy/ is stale
    sts-compile --schema                                         # the values JSON Schema
    sts-compile keys ... / sts-compile issuer-docs ...           # key sets and issuer documents

stdout carries only manifests. Problems go to stderr, all at once and sorted, as
`values.yaml:LINE:COL: error: sts.endpoints[0].issuer.host: message [code]` with the source line
and a caret. Exit codes: 0 ok, 1 invalid values file (or `--check` found a stale directory),
2 usage error (unknown option, unreadable file).

The seed's `sts:` section is accepted as printed (`examples/aws/values.yaml`); every other key is
an extension with a safe default. Unknown keys are errors with a "did you mean" hint. Beyond types,
the compiler checks: unique endpoint names, paths, injector labels and key set Secrets (audiences
may repeat), `azRules` filters parse with the runtime's own RFC 4515 parser, host names carry no
scheme, environment variable names and labels are valid.

**OpenUnison values files.** A whole OpenUnison values file compiles as it is (`examples/openunison`).
Its top-level `k8s_cluster_name` is the cluster name (`sts.cluster` when that is not set), so
`sub` stays `<k8s_cluster_name>:<namespace>:<serviceaccount>`. The sections only OpenUnison
reads are ignored, each with one line on stderr
(`values.yaml:5:1: info: network: an OpenUnison setting kube-sts does not use; ignored [openunison-ignored]`):
at the top level @TOP@; under `sts:` @STS@, and `sts.image` when it names OpenUnison's token
sidecar (`.../openunison-cli`, its chart's default; any other string is kube-sts's own image,
`repository[:tag][@digest]`). Any other unknown key is still an error with a "did you mean" hint.
In such a file an endpoint whose key set is `managed` gets a warning (`openunison-rekey`): kube-sts
would sign with a new key, while the relying parties trust OpenUnison's; import that key pair with
`sts-compile keys import-openunison` and set `issuer.keys.mode: provided` (README, "Migrating
from OpenUnison").

**An endpoint without `azRules` is an error** (`no-az-rules`), with the fix in the message. No
rules means that no caller may use the endpoint; in OpenUnison it meant that every ServiceAccount
of the cluster may (its chart put in a rule every user passes). A warning would let such a file
deploy and refuse every Pod the endpoint served the moment kube-sts takes over, the outage a
migration must not cause; and an endpoint nobody may use is never what a values file means. The
fix is one explicit line: `(namespace=*)` keeps OpenUnison's allow-all, a narrower filter is better.

## What is rendered

In apply order: Namespace (Pod Security `restricted`), ServiceAccount, ClusterRole and binding
(`create tokenreviews`, `get pods`, `get serviceaccounts`), Role and binding for Secrets, in
`runtime` TLS mode a ClusterRole and binding for `get/patch/update` of our own
MutatingWebhookConfigurations (by `resourceNames`), the ConfigMap `<name>-config` holding the
runtime's `config.json`, in `cert-manager` mode a self-signed Issuer, a CA Certificate, a CA Issuer and the serving
Certificate, the Service (443 -> 8443), the Deployment, a PodDisruptionBudget, a NetworkPolicy
(ingress only on TCP 8443: the API server calls the webhook and sidecars call the token service
on the same port) and one MutatingWebhookConfiguration per endpoint with an `injector`, last.
No Secret and no private key material is ever rendered.

**RBAC for Secrets.** `get`, `update` and `patch` are limited by `resourceNames` to the endpoints'
key set Secrets and the TLS Secret. Kubernetes cannot limit `create` by `resourceNames` (the name
is not known when the request is authorized), so `create secrets` is a separate rule in the
runtime's namespace only, present only when the runtime creates Secrets (a `managed` key set or
`runtime` TLS). With every key set `provided` and `cert-manager` TLS the Role is read-only.

**checkov.** The rendered output passes checkov except for the checks listed, each with its
reason, in `.checkov.yaml` (`checkov -d deploy/ --config-file .checkov.yaml`).

## Keys
"""


def markdown() -> str:
    from kube_sts.compiler import openunison, values  # noqa: PLC0415

    rows: list[str] = []
    _walk(values.Values, "", rows)
    header = "| key | type | default | description |\n|---|---|---|---|\n"
    intro = _INTRO.replace("@TOP@", ", ".join(f"`{name}`" for name in sorted(openunison.SECTIONS)))
    intro = intro.replace("@STS@", ", ".join(f"`sts.{name}`" for name in sorted(openunison.STS_SECTIONS)))
    return intro + "\n" + header + "".join(rows)


def _walk(model: type[pydantic.BaseModel], prefix: str, rows: list[str]) -> None:
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        annotation = field.annotation
        nested, suffix = _nested(annotation)
        default = "required" if field.is_required() else _default(field)
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{key}{suffix}` | {_type(annotation)} | {default} | {description} |\n")
        if nested is not None:
            _walk(nested, f"{key}{suffix}.", rows)


def _default(field: Any) -> str:
    value = field.default
    if value is PydanticUndefined:
        value = field.default_factory() if field.default_factory else None
    if isinstance(value, pydantic.BaseModel):
        dumped = json.dumps(value.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":"))
        return f"`{dumped}`" if len(dumped) <= 120 else "see below"
    if value in ([], {}, ()):
        return "empty"
    return f"`{json.dumps(value)}`"


def _args(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _args(typing.get_args(annotation)[0])
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        return [a for arg in typing.get_args(annotation) for a in _args(arg)]
    return [annotation]


def _nested(annotation: Any) -> tuple[type[pydantic.BaseModel] | None, str]:
    for arg in _args(annotation):
        if isinstance(arg, type) and issubclass(arg, pydantic.BaseModel):
            return arg, ""
        if typing.get_origin(arg) in (list, tuple):
            inner = typing.get_args(arg)[0]
            if isinstance(inner, type) and issubclass(inner, pydantic.BaseModel):
                return inner, "[]"
    return None, ""


def _type(annotation: Any) -> str:
    names = []
    for arg in _args(annotation):
        origin = typing.get_origin(arg)
        if arg is type(None):
            names.append("null")
        elif origin is typing.Literal:
            names.append(" \\| ".join(f"`{v}`" for v in typing.get_args(arg)))
        elif origin in (list, tuple):
            names.append("list")
        elif origin is dict:
            names.append("map")
        elif isinstance(arg, type) and issubclass(arg, pydantic.BaseModel):
            names.append("mapping")
        else:
            names.append(getattr(arg, "__name__", str(arg)))
    return " \\| ".join(dict.fromkeys(names))
