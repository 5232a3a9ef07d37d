"""The admission webhook: ``POST /mutate/<endpoint name>`` answers AdmissionReview v1 with a JSONPatch.

The answer keeps the request's ``apiVersion``/``kind`` and ``uid`` and carries the base64 patch
(when not empty) and warnings. A body that is not JSON, not an AdmissionReview v1 with a
``request.uid`` or not about a Pod gets HTTP 400 ``{"error": "bad_request", "message": ...}``: the
API server never sends one, and without a ``uid`` there is nothing to answer to.

A well-formed review whose Pod cannot be injected (malformed, larger than kube-sts injects, or
colliding with the injection: ``injection.RefusedError``) gets an answer with ``allowed: false`` and
a status code and message. That is what the user sees: ``kubectl`` prints
``admission webhook "..." denied the request: kube-sts: ...`` whatever the failure policy, where
an HTTP error would be reported as a failed webhook call without its message (and, under
``failurePolicy: Ignore``, admit the Pod without its identity).

Cost: the body is at most ``MAX_BODY`` bytes and the answer at most ``MAX_ANSWER``; the Pod's
lists are capped (see ``injection``), so the patch is small whatever the Pod holds. What is left is
decoding the body, which is linear in its size; the cyclic garbage collector is paused for the
review, since a body of a million empty objects otherwise costs collections over every one of
them, several times (0.6 s instead of 0.1 s for 3 MiB of ``[[],...]``). The review runs on the
event loop in one piece: a worker thread would not help (the decoder holds the GIL). The one
pause is the read of the Pod's ServiceAccount (its role binding, see ``injection``), done only
for a Pod that passed ``injection.check`` (types and caps), so a Pod refused for its size never
costs an API call; while it waits, the decoded Pod stays in memory (at most one per open
connection, ``limits.Limits.max_connections``). An API server that cannot answer gets the Pod
refused (503 in the status): admitting it could give it a role its ServiceAccount does not
hold in its variables. ``bench/hostile_admission.py`` prints the loop time and memory of the
worst reviews.
"""

from __future__ import annotations

import base64
import contextlib
import gc
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import orjson

from kube_sts.runtime import config
from kube_sts.runtime.http import messages as web
from kube_sts.runtime.http import metrics, router
from kube_sts.runtime.webhook import injection

__all__ = ["MAX_ANSWER", "MAX_BODY", "add_routes", "review"]

MAX_BODY = 3 * 1024 * 1024
"""The API server's request limit for objects (etcd's 1.5 MiB) doubled for the review envelope."""
MAX_ANSWER = 1024 * 1024
"""Bytes of an answer. The largest Pod kube-sts injects gets about a third of it (see the tests)."""

_API_VERSION = "admission.k8s.io/v1"
_MAX_UID = 128
"""Characters of ``request.uid`` (the API server sends a 36-character UUID), echoed in the answer."""
_MAX_PATCH = MAX_ANSWER - 16 * 1024
"""Bytes of the base64 patch; the rest of ``MAX_ANSWER`` is room for the uid, warnings and status."""


def _bad(message: str) -> web.HTTPError:
    return web.HTTPError(400, "bad_request", message)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: decoded JSON holds no cycles, so none is left behind."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


Answer = tuple[dict[str, Any], str]
"""An AdmissionReview answer and its outcome (``OUTCOMES``)."""
OUTCOMES = ("injected", "unchanged", "unbound", "refused")
"""Outcomes of ``kube_sts_webhook_admissions_total``: a patch; allowed without a patch (not
labelled, excluded, or already complete); allowed without a patch because the Pod was selected
by its ServiceAccount (``injector.serviceAccountNamespaces``) and that binds no role; not admitted."""


Accounts = Callable[[str, str], Awaitable[Mapping[str, str]]]
"""``(namespace, name) -> annotations`` of a ServiceAccount, read live (``server.App.account_annotations``)."""


def review(
    runtime: config.RuntimeConfig,
    endpoint: config.Endpoint,
    body: bytes,
    ca_pem: str,
    account: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The AdmissionReview answer for the request in ``body`` (raises ``web.HTTPError`` 400).

    ``account``: the annotations of the Pod's ServiceAccount (None: not read).
    """
    return _review(runtime, endpoint, body, ca_pem, account)[0]


def _review(
    runtime: config.RuntimeConfig,
    endpoint: config.Endpoint,
    body: bytes,
    ca_pem: str,
    account: Mapping[str, str] | None = None,
) -> Answer:
    with _collector_paused():
        uid, pod, namespace = _parse(body)
        # the decoded body is freed before the collector resumes
        return _answer(runtime, endpoint, uid, pod, ca_pem, account=account, namespace=namespace)


def _parse(body: bytes) -> tuple[str, dict[str, Any], str]:
    """The review's uid, Pod and namespace (raises ``web.HTTPError`` 400)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad("the body is not JSON (or nests deeper than 1,024 levels)") from None
    if not isinstance(document, dict):
        raise _bad("the body is not a JSON object")
    if document.get("apiVersion") != _API_VERSION or document.get("kind") != "AdmissionReview":
        raise _bad(f"expected apiVersion {_API_VERSION} and kind AdmissionReview")
    request = document.get("request")
    if not isinstance(request, dict):
        raise _bad("the AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > _MAX_UID:
        raise _bad(f"the AdmissionReview request has no uid (a string of 1 to {_MAX_UID} characters)")
    kind = request.get("kind")
    if not isinstance(kind, dict) or kind.get("kind") != "Pod" or kind.get("group", "") != "":
        raise _bad("only Pods are handled (request.kind must be the core v1 Pod)")
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise _bad("the AdmissionReview request has no Pod object")
    namespace = request.get("namespace")
    return uid, pod, namespace if isinstance(namespace, str) else ""


def _refusal(uid: str, refused: injection.RefusedError) -> Answer:
    response = {"uid": uid, "allowed": False, "status": {"code": refused.code, "message": refused.message}}
    return {"apiVersion": _API_VERSION, "kind": "AdmissionReview", "response": response}, "refused"


def _answer(
    runtime: config.RuntimeConfig,
    endpoint: config.Endpoint,
    uid: str,
    pod: dict[str, Any],
    ca_pem: str,
    *,
    account: Mapping[str, str] | None,
    namespace: str,
) -> Answer:
    response: dict[str, Any] = {"uid": uid}
    try:
        result = injection.patch(runtime, (endpoint,), pod, ca_pem, account, namespace=namespace)
        patch = base64.b64encode(orjson.dumps(result.operations)).decode("ascii") if result.operations else ""
        if len(patch) > _MAX_PATCH:
            raise injection.RefusedError(
                400, f"kube-sts: the patch for this Pod would be {len(patch)} bytes; at most {_MAX_PATCH} are sent"
            )
    except injection.RefusedError as refused:
        return _refusal(uid, refused)
    response["allowed"] = True
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = patch
    if result.warnings:
        response["warnings"] = result.warnings
    outcome = "injected" if patch else "unbound" if result.unbound else "unchanged"
    return {"apiVersion": _API_VERSION, "kind": "AdmissionReview", "response": response}, outcome


def _account_of(endpoint: config.Endpoint, pod: Mapping[str, Any], namespace: str) -> tuple[str, str] | None:
    """(namespace, name) of the ServiceAccount to read for a checked Pod, or None when none is needed."""
    injector = endpoint.injector
    metadata = pod["metadata"]
    labels = metadata.get("labels") or {}
    namespace = namespace or metadata.get("namespace") or ""
    if injector is None or not (injector.label_key in labels or endpoint.selects_by_account(namespace, labels)):
        return None
    spec = pod["spec"]
    name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    if not isinstance(namespace, str) or not namespace or not isinstance(name, str):
        return None
    return namespace, name


async def _review_with_account(
    runtime: config.RuntimeConfig, endpoint: config.Endpoint, body: bytes, ca_pem: str, accounts: Accounts
) -> Answer:
    """``review`` with the Pod's ServiceAccount read live; the Pod is checked (caps, types) before the read."""
    with _collector_paused():
        uid, pod, namespace = _parse(body)
        try:
            injection.check(pod)
        except injection.RefusedError as refused:
            return _refusal(uid, refused)
    wanted = _account_of(endpoint, pod, namespace)
    account: Mapping[str, str] | None = None
    if wanted is not None:
        try:
            account = await accounts(*wanted)
        except web.HTTPError as failed:
            return _refusal(
                uid,
                injection.RefusedError(
                    503,
                    f"kube-sts: cannot read the Pod's ServiceAccount {wanted[1]!r} ({failed.message}); "
                    "the Pod is not admitted without its identity, try again",
                ),
            )
    with _collector_paused():
        return _answer(runtime, endpoint, uid, pod, ca_pem, account=account, namespace=namespace)


def add_routes(
    app: router.Router,
    runtime: config.RuntimeConfig,
    ca_bundle: Callable[[], bytes | None],
    accounts: Accounts | None = None,
) -> None:
    """Register ``POST {config.WEBHOOK_PATH}<name>`` on ``app`` for every endpoint with an injector.

    ``accounts`` reads a ServiceAccount's annotations (the role binding); without it the webhook
    reads none and only Pod annotations count.
    """
    if not any(endpoint.injector is not None for endpoint in runtime.endpoints):
        return
    outcomes = app.registry.counter(
        "kube_sts_webhook_admissions_total",
        "Admission reviews answered, by endpoint and outcome: injected (a patch), unchanged (allowed "
        "without a patch: not labelled, excluded, or already complete), unbound (selected by its "
        "ServiceAccount's namespace, whose ServiceAccount binds no role: allowed without a patch) or refused",
        ("endpoint", "outcome"),
    )
    for endpoint in runtime.endpoints:
        if endpoint.injector is None:
            continue

        app.add_route(
            "POST",
            config.WEBHOOK_PATH + endpoint.name,
            _handler(runtime, endpoint, ca_bundle, accounts, outcomes),
            max_body=MAX_BODY,
        )


def _handler(
    runtime: config.RuntimeConfig,
    endpoint: config.Endpoint,
    ca_bundle: Callable[[], bytes | None],
    accounts: Accounts | None,
    outcomes: metrics.Counter,
) -> web.Handler:
    async def handle(request: web.Request) -> web.Response:
        ca = ca_bundle()
        if ca is None:
            raise web.HTTPError(503, "no_ca", "the token service's CA certificate is not loaded yet")
        pem = ca.decode("ascii")
        if accounts is None:
            answer, outcome = _review(runtime, endpoint, request.body, pem)
        else:
            answer, outcome = await _review_with_account(runtime, endpoint, request.body, pem, accounts)
        outcomes.inc(endpoint.name, outcome)
        return web.Response(200, orjson.dumps(answer))

    return handle
