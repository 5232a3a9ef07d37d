"""The token service's decisions driven straight through the ASGI app against the API server double:
what needs an API server that fails or is slow, the exact requests the runtime sends (the double
records them), tokens the real API server will not issue (expired, seconds-long, a review that
contradicts the token), and the window in which a deleted Pod's token is still accepted. The
decisions on real tokens are tests/controlplane/test_token_decisions.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import pathlib
import time
import urllib.request
from collections.abc import Iterator

import pytest

from harness import apiserver
from harness import runtime as harness
from kube_sts.runtime import server
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.tokens import callers

ROLE = "arn:aws:iam::123456789012:role/app"


@pytest.fixture
def keys_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    harness.write_keyset(tmp_path, "aws", "RS256")
    return tmp_path


@pytest.fixture
def app(kube: kubeapi.KubeAPI, keys_dir: pathlib.Path) -> Iterator[server.App]:
    runtime = harness.runtime_config(harness.endpoint(rules=["(&(namespace=myns)(role=arn:aws:iam::*:role/app))"]))
    application = harness.make_app(runtime, kube, keys_dir)
    yield application
    application.executor.shutdown(wait=True)


def pod_token(api_server: apiserver.APIServer, namespace: str = "myns", role: str | None = ROLE, **kw: object) -> str:
    annotations = {"tremolo.io/aws-role": role} if role else {}
    pod = api_server.add_pod(namespace, "app-1", annotations=annotations)
    return api_server.issue_token(namespace, "app", pod=pod, audiences=[harness.STS_AUDIENCE], **kw)  # type: ignore[arg-type]


def exchange(app: server.App, token: str | None, path: str = "/aws/token") -> harness.Answer:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return harness.asgi_call(app, "POST", path, headers)


def test_review_is_cached_briefly(api_server: apiserver.APIServer, app: server.App) -> None:
    token = pod_token(api_server)
    first, second = exchange(app, token), exchange(app, token)
    assert first.status == second.status == 200
    assert first.json()["token"] != second.json()["token"]  # a fresh jti each time
    assert len(api_server.requests_to("/apis/authentication.k8s.io/v1/tokenreviews")) == 1
    assert len(api_server.requests_to("/api/v1/namespaces/myns/pods/app-1")) == 1
    app.callers.cache_ttl = 0.0
    app.callers.cache = callers.ReviewCache(10)
    exchange(app, token)
    exchange(app, token)
    assert len(api_server.requests_to("/apis/authentication.k8s.io/v1/tokenreviews")) == 3


def test_concurrent_requests_share_one_validation(api_server: apiserver.APIServer, app: server.App) -> None:
    token = pod_token(api_server)

    async def burst() -> list[server.Identity]:
        return await asyncio.gather(*(app.identity(token) for _ in range(12)))

    identities = asyncio.run(burst())
    assert all(identity == identities[0] for identity in identities)
    assert len(api_server.requests_to("/apis/authentication.k8s.io/v1/tokenreviews")) == 1
    assert len(api_server.requests_to("/api/v1/namespaces/myns/pods/app-1")) == 1
    assert app.callers.m_cache.value("shared") == 11 and app.callers.m_cache.value("miss") == 1
    assert not app.callers._validating


def test_concurrent_requests_share_a_refusal(api_server: apiserver.APIServer, app: server.App) -> None:
    token = pod_token(api_server)
    api_server.delete_pod("myns", "app-1")

    async def burst() -> list[BaseException | server.Identity]:
        return await asyncio.gather(*(app.identity(token) for _ in range(5)), return_exceptions=True)

    outcomes = asyncio.run(burst())
    assert [(o.status, o.code) for o in outcomes if isinstance(o, server.HTTPError)] == [(401, "invalid_token")] * 5
    assert len(api_server.requests_to("/apis/authentication.k8s.io/v1/tokenreviews")) == 1
    assert not app.callers._validating and len(app.callers.cache) == 0


def test_cache_never_outlives_the_token(api_server: apiserver.APIServer, app: server.App) -> None:
    token = pod_token(api_server, expires=int(time.time()) + 2)
    assert exchange(app, token).status == 200
    digest = next(iter(app.callers.cache._entries))
    assert app.callers.cache._entries[digest][1] <= int(time.time()) + 2


def test_cache_is_bounded() -> None:
    cache = callers.ReviewCache(2)
    identity = server.Identity("ns", "sa", "p", "u", (), 0)
    for index in range(5):
        cache.put(bytes([index]), identity, 100.0, 0.0)
    assert len(cache) == 2
    assert cache.get(bytes([4]), 1.0) is identity and cache.get(bytes([0]), 1.0) is None
    assert cache.get(bytes([4]), 100.0) is None


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_token"),
        ("Basic abc", "malformed_token"),
        ("Bearer ", "malformed_token"),
        ("Bearer not-a-jwt", "malformed_token"),
        ("Bearer a.b$.c", "malformed_token"),
        ("Bearer aaaa.bbbb.cccc", "malformed_token"),
        ("Bearer h\u00e9.llo.w", "malformed_token"),  # not ASCII: still a 401, not a 500
    ],
)
def test_malformed_credentials_are_401(app: server.App, header: str | None, code: str) -> None:
    headers = {"authorization": header} if header is not None else {}
    answer = harness.asgi_call(app, "POST", "/aws/token", headers)
    assert (answer.status, answer.json()["error"]) == (401, code)
    assert answer.headers["content-type"] == "application/json"


def test_expired_token_is_401_without_a_review(api_server: apiserver.APIServer, app: server.App) -> None:
    token = pod_token(api_server, expires=int(time.time()) - 5)
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (401, "token_expired")
    assert api_server.requests_to("/apis/authentication.k8s.io") == []


def test_review_audience_is_authoritative(api_server: apiserver.APIServer, app: server.App) -> None:
    # The token claims our audience, but the API server does not recognise it for us.
    token = pod_token(api_server)
    api_server.tokens[token].audiences = ("something-else",)
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (401, "wrong_audience")
    assert len(api_server.requests_to("/apis/authentication.k8s.io/v1/tokenreviews")) == 1


def test_deleted_pod_is_401(api_server: apiserver.APIServer, app: server.App) -> None:
    token = pod_token(api_server)
    api_server.delete_pod("myns", "app-1")
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (401, "invalid_token")
    api_server.verify_bindings = False  # the window before the API server notices the deletion
    app.callers.failures.clear()  # refusals are remembered briefly
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (401, "pod_not_found")


def test_recreated_pod_is_401(api_server: apiserver.APIServer, app: server.App) -> None:
    token = pod_token(api_server)
    api_server.verify_bindings = False
    api_server.add_pod("myns", "app-1", annotations={"tremolo.io/aws-role": ROLE})  # same name, new uid
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (401, "pod_mismatch")


@pytest.mark.parametrize("mode", ["refused", "error"])
def test_api_outage_is_503_with_retry_after(
    api_server: apiserver.APIServer, app: server.App, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = pod_token(api_server)
    assert harness.asgi_call(app, "GET", "/readyz").status == 200
    api_server.set_outage(mode)
    with caplog.at_level(logging.WARNING, logger="kube_sts.server"):
        answers = [exchange(app, token) for _ in range(3)]
    for answer in answers:
        assert answer.status == 503
        assert answer.json()["error"] == "apiserver_unavailable"
        assert int(answer.headers["retry-after"]) > 0
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
    api_server.set_outage(None)
    assert exchange(app, token).status == 200


def test_slow_api_server_is_503(api_server: apiserver.APIServer, app: server.App) -> None:
    token = pod_token(api_server)
    app.guard.timeout = 0.2
    api_server.delay = 0.6
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (503, "apiserver_unavailable")


def test_missing_keys_is_503(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI, tmp_path: pathlib.Path) -> None:
    app = harness.make_app(harness.runtime_config(harness.endpoint()), kube, tmp_path / "empty")
    answer = exchange(app, pod_token(api_server))
    assert (answer.status, answer.json()["error"]) == (503, "no_signing_key")
    assert "retry-after" in answer.headers
    ready = harness.asgi_call(app, "GET", "/readyz")
    assert ready.status == 503 and ready.json()["checks"]["keys"]["ready"] is False


def test_unknown_path_and_method(app: server.App) -> None:
    answer = harness.asgi_call(app, "GET", "/nope")
    assert (answer.status, answer.json()["error"]) == (404, "not_found")
    answer = harness.asgi_call(app, "GET", "/aws/token")
    assert (answer.status, answer.json()["error"]) == (405, "method_not_allowed")
    assert answer.headers["allow"] == "POST"


def test_oversized_body_and_headers_are_413(api_server: apiserver.APIServer, app: server.App) -> None:
    token = pod_token(api_server)
    big = b"x" * (server.MAX_BODY + 1)
    answer = harness.asgi_call(app, "POST", "/aws/token", {"authorization": f"Bearer {token}"}, big, chunks=7)
    assert (answer.status, answer.json()["error"]) == (413, "body_too_large")
    answer = harness.asgi_call(
        app, "POST", "/aws/token", {"authorization": f"Bearer {token}", "content-length": str(len(big))}, big
    )
    assert (answer.status, answer.json()["error"]) == (413, "body_too_large")
    answer = harness.asgi_call(app, "POST", "/aws/token", {"authorization": "Bearer " + "a" * 20000})
    assert (answer.status, answer.json()["error"]) == (413, "header_too_large")
    answer = harness.asgi_call(app, "POST", "/aws/token", {f"x-{i}": "v" * 1000 for i in range(40)})
    assert (answer.status, answer.json()["error"]) == (413, "header_too_large")
    answer = harness.asgi_call(app, "POST", "/aws/token", {"content-length": "abc"})
    assert (answer.status, answer.json()["error"]) == (400, "bad_request")


def test_internal_errors_hide_the_trace(app: server.App, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: server.Request) -> server.Response:
        raise RuntimeError("boom with details")

    app.add_route("GET", "/broken", broken)
    with caplog.at_level(logging.ERROR):
        answer = harness.asgi_call(app, "GET", "/broken")
    assert answer.status == 500 and answer.json() == {
        "error": "internal_error",
        "message": "internal error; see the server log",
    }
    assert "boom" in caplog.text


def test_issuer_documents(app: server.App) -> None:
    docs = harness.asgi_call(app, "GET", "/aws/issuer-docs").json()
    assert set(docs) == {"discovery", "keys"}
    discovery = docs["discovery"]
    assert discovery["issuer"] == "https://issuer.example"
    assert discovery["jwks_uri"] == "https://issuer.example/certs"
    assert discovery["id_token_signing_alg_values_supported"] == ["RS256"]
    assert {"sub", "aud", "iss", "exp", "cluster", "namespace", "saname"} <= set(discovery["claims_supported"])
    kid = app.keys.provider("aws").signing_key().kid
    assert [k["kid"] for k in docs["keys"]["keys"]] == [kid]
    certs = harness.asgi_call(app, "GET", "/aws/certs")
    assert certs.json() == docs["keys"]
    assert certs.headers["cache-control"] == "public, max-age=300"
    well_known = harness.asgi_call(app, "GET", "/aws/.well-known/openid-configuration")
    assert well_known.json() == discovery


def test_every_published_key_is_served(kube: kubeapi.KubeAPI, tmp_path: pathlib.Path) -> None:
    ks = harness.write_keyset(tmp_path, "aws", "ES256", count=3)
    app = harness.make_app(harness.runtime_config(harness.endpoint(algorithm="ES256")), kube, tmp_path)
    served = harness.asgi_call(app, "GET", "/aws/certs").json()["keys"]
    assert sorted(k["kid"] for k in served) == sorted(k.kid for k in ks.keys)
    assert all(k["alg"] == "ES256" and k["kty"] == "EC" and "d" not in k for k in served)


def test_health_readiness_and_metrics(api_server: apiserver.APIServer, app: server.App) -> None:
    assert harness.asgi_call(app, "GET", "/healthz").status == 200
    ready = harness.asgi_call(app, "GET", "/readyz")
    assert ready.status == 200, ready.body
    assert ready.json()["ready"] is True
    exchange(app, pod_token(api_server))
    text = harness.asgi_call(app, "GET", "/metrics")
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = text.body.decode().splitlines()
    assert 'kube_sts_token_decisions_total{endpoint="aws",decision="allow",reason="ok"} 1' in lines
    assert 'kube_sts_token_review_cache_total{result="miss"} 1' in lines
    assert 'kube_sts_apiserver_requests_total{call="tokenreview",outcome="ok"} 1' in lines
    api_server.set_outage("refused")
    app.guard.forget()
    ready = harness.asgi_call(app, "GET", "/readyz")
    assert ready.status == 503 and ready.json()["checks"]["apiserver"]["ready"] is False
    api_server.set_outage(None)


def test_readiness_checks_plug_in(app: server.App) -> None:
    app.readiness_checks.append(lambda: (False, "certificate expired"))
    ready = harness.asgi_call(app, "GET", "/readyz").json()
    assert ready["ready"] is False
    assert {"ready": False, "detail": "certificate expired"} in ready["checks"].values()


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_concurrent_callers_with_a_slow_api_server(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI, tmp_path: pathlib.Path, algorithm: str
) -> None:
    """24 callers at once on real uvicorn while every API server answer takes 50 ms: all are served,
    each with its own TokenReview (a chosen answer delay: the double's ``delay``)."""
    harness.write_keyset(tmp_path / "keys", "aws", algorithm)
    runtime = harness.runtime_config(harness.endpoint(algorithm=algorithm, session_tags=True))
    app = harness.make_app(runtime, kube, tmp_path / "keys")
    tls = harness.make_tls(tmp_path / "tls")
    context = tls.client_context()
    api_server.delay = 0.05
    callers = []
    for index in range(24):
        pod = api_server.add_pod("myns", f"app-{index}")
        callers.append(api_server.issue_token("myns", "app", pod=pod, audiences=[harness.STS_AUDIENCE]))

    with harness.RunningServer(app, tls) as running:

        def call(token: str) -> int:
            request = urllib.request.Request(
                running.url + "/aws/token", method="POST", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, context=context, timeout=20) as response:
                return int(response.status)

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(call, callers))
    assert statuses == [200] * 24
    assert len(api_server.requests_to("/apis/authentication.k8s.io/v1/tokenreviews")) == 24
