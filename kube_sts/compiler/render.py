"""Validated values -> Kubernetes objects, one jinja2 template per object, in apply order."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from typing import Any

import jinja2
import yaml

from kube_sts.compiler import values
from kube_sts.runtime import config

__all__ = ["objects"]

_VERSION = "0.1.0"


class _Loader(jinja2.BaseLoader):
    """Templates read from the installed ``kube_sts.templates`` package."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, None, Any]:
        resource = importlib.resources.files("kube_sts.templates").joinpath(template)
        if not resource.is_file():
            raise jinja2.TemplateNotFound(template)
        return resource.read_text(encoding="utf-8"), None, lambda: True


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=_Loader(),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - YAML output; every value goes through tojson
        keep_trailing_newline=True,
    )
    env.filters["tojson"] = tojson
    env.globals["labels"] = labels
    return env


def tojson(value: Any) -> str:
    """JSON (a subset of YAML) with every non-printable character as a YAML escape.

    Only string contents can hold such characters, and they are always inside double quotes."""
    text = json.dumps(value, ensure_ascii=False)
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in text
    )


def labels(sts: values.Sts, component: str) -> dict[str, str]:
    """The recommended ``app.kubernetes.io/*`` labels."""
    return {
        config.NAME_LABEL: config.PRODUCT,
        config.INSTANCE_LABEL: sts.name,
        config.VERSION_LABEL: sts.image.tag,
        config.COMPONENT_LABEL: component,
        config.PART_OF_LABEL: config.PRODUCT,
        config.MANAGED_BY_LABEL: "sts-compile",
    }


def selector(sts: values.Sts) -> dict[str, str]:
    return {config.NAME_LABEL: config.PRODUCT, config.INSTANCE_LABEL: sts.name}


def config_json(runtime: config.RuntimeConfig) -> str:
    """The ConfigMap's ``config.json``: the runtime's own model, by alias, indented."""
    return runtime.model_dump_json(by_alias=True, indent=2) + "\n"


def objects(model: values.Values) -> list[dict[str, Any]]:
    """Every object, ordered so that one ``kubectl apply`` pass succeeds."""
    sts = model.sts
    runtime = values.runtime_config(sts)
    text = config_json(runtime)
    runtime_tls = sts.webhook.certificates.mode == "runtime"
    managed = [e.issuer.keypair for e in sts.endpoints if e.issuer.keys.mode == "managed"]
    provided = [e.issuer.keypair for e in sts.endpoints if e.issuer.keys.mode == "provided"]
    writable = managed + ([sts.tls_secret] if runtime_tls else [])
    readable = provided + ([] if runtime_tls else [sts.tls_secret])
    context: dict[str, Any] = {
        "contract": config,  # every path, UID, port and key the runtime relies on (config.py)
        "sts": sts,
        "runtime": runtime,
        "config_json": text,
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "selector": selector(sts),
        "image": values.image_reference(sts.image),
        "namespace_labels": {
            "kubernetes.io/metadata.name": sts.namespace,
            **labels(sts, "token-service"),
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        },
        "readable_secrets": readable,
        "writable_secrets": writable,
        "tolerations": [t.model_dump(by_alias=True, exclude_none=True) for t in sts.tolerations],
        "pull_secrets": [{"name": name} for name in sts.image_pull_secrets],
    }
    injected = [e for e in sts.endpoints if e.injector is not None]
    plan: list[tuple[str, dict[str, Any]]] = [
        ("namespace.yaml.j2", {}),
        ("serviceaccount.yaml.j2", {}),
        ("clusterrole.yaml.j2", {}),
        ("clusterrolebinding.yaml.j2", {}),
        ("role.yaml.j2", {}),
        ("rolebinding.yaml.j2", {}),
    ]
    if runtime_tls and injected:
        plan += [("webhook-clusterrole.yaml.j2", {}), ("webhook-clusterrolebinding.yaml.j2", {})]
    if sts.priority_class_name is None:
        plan.append(("priorityclass.yaml.j2", {}))
    plan.append(("configmap.yaml.j2", {}))
    if not runtime_tls:
        plan += [
            ("certmanager-selfsigned-issuer.yaml.j2", {}),
            ("certmanager-ca-certificate.yaml.j2", {}),
            ("certmanager-ca-issuer.yaml.j2", {}),
            ("certmanager-certificate.yaml.j2", {}),
        ]
    plan += [
        ("service.yaml.j2", {}),
        ("deployment.yaml.j2", {}),
        ("poddisruptionbudget.yaml.j2", {}),
        ("networkpolicy.yaml.j2", {"fetches_issuer": any(e.issuer.keys.wait_for_publication for e in sts.endpoints)}),
    ]
    if sts.service_monitor.enabled:
        plan.append(("servicemonitor.yaml.j2", {}))
    annotations = {} if runtime_tls else {"cert-manager.io/inject-ca-from": f"{sts.namespace}/{sts.tls_secret}"}
    plan += [
        ("mutatingwebhookconfiguration.yaml.j2", {"endpoint": e, "webhook_annotations": annotations}) for e in injected
    ]
    env = _environment()
    # Template output is parsed with libyaml (PyYAML's C loader): the pure-Python parser was the
    # slowest step for large values files. Emitting stays with ruamel (emit.py).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    rendered: list[dict[str, Any]] = []
    for name, extra in plan:
        document = env.get_template(name).render(**context, **extra)
        rendered.append(_site(sts, yaml.load(document, Loader=loader)))  # noqa: S506 - a safe loader
    return rendered


def _site(sts: values.Sts, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with ``commonLabels`` and ``commonAnnotations``, also on a Pod template; kube-sts's own
    labels and annotations win, selectors are left alone (immutable, and they must keep matching)."""
    metadatas = [obj["metadata"]]
    if obj["kind"] == "Deployment":
        metadatas.append(obj["spec"]["template"]["metadata"])
    for metadata in metadatas:
        if sts.common_labels:
            metadata["labels"] = {**sts.common_labels, **(metadata.get("labels") or {})}
        if sts.common_annotations:
            metadata["annotations"] = {**sts.common_annotations, **(metadata.get("annotations") or {})}
    return obj
