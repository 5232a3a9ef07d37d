"""The admission webhook: ``POST /mutate/<endpoint name>`` answers AdmissionReview v1 with a JSONPatch.

The answer keeps the request's ``apiVersion``/``kind`` and ``uid``, always allows the Pod, and
carries the base64 patch (when not empty) and warnings. A body that is not JSON, not an
AdmissionReview v1 with a ``request.uid`` or not about a Pod gets HTTP 400 with a message.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson

from kube_sts.runtime import config, injection, web

__all__ = ["MAX_BODY", "add_routes", "review"]

MAX_BODY = 3 * 1024 * 1024
"""The API server's request limit for objects (etcd's 1.5 MiB) doubled for the review envelope."""

_API_VERSION = "admission.k8s.io/v1"


def _bad(message: str) -> web.HTTPError:
    return web.HTTPError(400, "bad_admission_review", message)


def review(runtime: config.RuntimeConfig, endpoint: config.Endpoint, body: bytes, ca_pem: str) -> dict[str, Any]:
    """The AdmissionReview answer for the request in ``body`` (raises ``web.HTTPError`` 400)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad("the body is not JSON") from None
    if not isinstance(document, dict):
        raise _bad("the body is not a JSON object")
    if document.get("apiVersion") != _API_VERSION or document.get("kind") != "AdmissionReview":
        raise _bad(f"expected apiVersion {_API_VERSION} and kind AdmissionReview")
    request = document.get("request")
    if not isinstance(request, dict):
        raise _bad("the AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise _bad("the AdmissionReview request has no uid")
    kind = request.get("kind")
    if not isinstance(kind, dict) or kind.get("kind") != "Pod" or kind.get("group", "") != "":
        raise _bad("only Pods are handled (request.kind must be the core v1 Pod)")
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise _bad("the AdmissionReview request has no Pod object")
    result = injection.patch(runtime, (endpoint,), pod, ca_pem)
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if result.operations:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(result.operations)).decode("ascii")
    if result.warnings:
        response["warnings"] = result.warnings
    return {"apiVersion": _API_VERSION, "kind": "AdmissionReview", "response": response}


def add_routes(app: Any, runtime: config.RuntimeConfig, ca_bundle: Callable[[], bytes | None]) -> None:
    """Register ``POST /mutate/<name>`` on ``app`` for every endpoint with an injector."""
    for endpoint in runtime.endpoints:
        if endpoint.injector is None:
            continue

        app.add_route("POST", f"/mutate/{endpoint.name}", _handler(runtime, endpoint, ca_bundle), max_body=MAX_BODY)


def _handler(
    runtime: config.RuntimeConfig, endpoint: config.Endpoint, ca_bundle: Callable[[], bytes | None]
) -> web.Handler:
    async def handle(request: web.Request) -> web.Response:
        ca = ca_bundle()
        if ca is None:
            raise web.HTTPError(503, "no_ca", "the token service's CA certificate is not loaded yet")
        return web.Response(200, orjson.dumps(review(runtime, endpoint, request.body, ca.decode("ascii"))))

    return handle
