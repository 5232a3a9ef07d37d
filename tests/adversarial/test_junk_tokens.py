"""Junk bearer tokens cost no TokenReview: callers are checked against the cluster's own keys first.

The flood test prints its figures; reproduce them with
``pytest -s tests/adversarial/test_junk_tokens.py -k flood``.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import pathlib
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness import apiserver
from harness import runtime as harness
from kube_sts.runtime import server
from kube_sts.runtime.kube import api as kubeapi

ROLE = "arn:aws:iam::123456789012:role/app"
REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
JWKS = "/openid/v1/jwks"


@pytest.fixture
def keys_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    harness.write_keyset(tmp_path, "aws", "RS256")
    return tmp_path


@pytest.fixture
def app(kube: kubeapi.KubeAPI, keys_dir: pathlib.Path) -> Iterator[server.App]:
    application = harness.make_app(harness.runtime_config(harness.endpoint()), kube, keys_dir)
    yield application
    application.executor.shutdown(wait=True)


def exchange(app: server.App, token: str) -> harness.Answer:
    return harness.asgi_call(app, "POST", "/aws/token", {"authorization": f"Bearer {token}"})


def legit_token(api_server: apiserver.APIServer, name: str = "app-1", algorithm: str = "RS256") -> str:
    pod = api_server.add_pod("myns", name, annotations={"tremolo.io/aws-role": ROLE})
    return api_server.issue_token("myns", "app", pod=pod, audiences=[harness.STS_AUDIENCE], algorithm=algorithm)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "aud": [harness.STS_AUDIENCE],
        "exp": now + 600,
        "iat": now,
        "nbf": now,
        "iss": apiserver.ISSUER,
        "sub": "system:serviceaccount:myns:app",
    }
    return base | changes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def junk(api_server: apiserver.APIServer) -> dict[str, str]:
    """Tokens an attacker can make: right audience and expiry, but never signed by the cluster."""
    kid, key = api_server.signing_keys["RS256"]
    ec_kid, ec_key = api_server.signing_keys["ES256"]
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    genuine = api_server.issue_token("myns", "app", audiences=[harness.STS_AUDIENCE])
    head, body, signature = genuine.split(".")
    other_claims = _b64(json.dumps(claims(sub="system:serviceaccount:kube-system:admin")).encode())
    return {
        "hs256": jwt.encode(claims(), "k" * 32, algorithm="HS256", headers={"kid": kid}),
        "alg none": _b64(b'{"alg":"none","kid":"' + kid.encode() + b'"}')
        + "."
        + _b64(json.dumps(claims()).encode())
        + ".x",
        "stranger's key, cluster kid": jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": kid}),
        "stranger's key, no kid": jwt.encode(claims(), stranger, algorithm="RS256"),
        "unknown kid": jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "nope"}),
        "ES256 with the RSA kid": jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), "ES256", {"kid": kid}),
        "RS256 header on the EC kid": jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": ec_kid}),
        "payload swapped under a real signature": f"{head}.{other_claims}.{signature}",
        "truncated signature": f"{head}.{body}.{signature[:-8]}",
        "cluster key, other issuer": jwt.encode(claims(iss="https://evil.example"), key, "RS256", {"kid": kid}),
        "cluster key, nbf in an hour": jwt.encode(claims(nbf=int(time.time()) + 3600), key, "RS256", {"kid": kid}),
        "cluster EC key, iat in an hour": jwt.encode(
            claims(iat=int(time.time()) + 3600), ec_key, "ES256", {"kid": ec_kid}
        ),
    }


def test_junk_tokens_cost_no_token_review(api_server: apiserver.APIServer, app: server.App) -> None:
    for name, token in junk(api_server).items():
        answer = exchange(app, token)
        expected = "malformed_token" if name == "alg none" else "invalid_token"
        assert (answer.status, answer.json()["error"]) == (401, expected), name
    assert api_server.requests_to(REVIEWS) == []
    assert api_server.requests_to("/api/v1/namespaces") == []
    # ...while a token the cluster signed (RS256 or ES256) is reviewed and exchanged
    assert exchange(app, legit_token(api_server)).status == 200
    assert exchange(app, legit_token(api_server, "app-2", algorithm="ES256")).status == 200
    assert len(api_server.requests_to(REVIEWS)) == 2


def test_refusals_are_remembered(api_server: apiserver.APIServer, app: server.App) -> None:
    token = legit_token(api_server)
    api_server.delete_pod("myns", "app-1")  # signed by the cluster, refused by the TokenReview
    for _ in range(5):
        assert (exchange(app, token).json()["error"]) == "invalid_token"
    assert len(api_server.requests_to(REVIEWS)) == 1
    assert app.callers.m_cache.value("refused") == 4


def test_unknown_kids_refetch_the_jwks_at_most_once_per_retry_interval(
    api_server: apiserver.APIServer, app: server.App
) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for _ in range(30):
        token = jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": uuid.uuid4().hex})
        assert exchange(app, token).status == 401
    assert len(api_server.requests_to(JWKS)) == 1
    assert api_server.requests_to(REVIEWS) == []


def test_a_rotated_cluster_key_is_picked_up(api_server: apiserver.APIServer, app: server.App) -> None:
    assert exchange(app, legit_token(api_server)).status == 200
    api_server.signing_keys["RS256"] = ("rotated", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    app.callers.cluster_keys.retry = 0.0  # the retry interval has passed
    assert exchange(app, legit_token(api_server, "app-2")).status == 200
    assert len(api_server.requests_to(JWKS)) == 2


def test_a_token_also_valid_for_the_api_server_is_refused(api_server: apiserver.APIServer, app: server.App) -> None:
    pod = api_server.add_pod("myns", "app-1", annotations={"tremolo.io/aws-role": ROLE})
    token = api_server.issue_token("myns", "app", pod=pod, audiences=[harness.STS_AUDIENCE, *apiserver.API_AUDIENCES])
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (401, "wrong_audience")
    assert "Kubernetes API server" in answer.json()["message"]
    assert api_server.requests_to(REVIEWS) == []


def test_unreadable_jwks_falls_back_to_a_review_budget_and_says_so(
    api_server: apiserver.APIServer, app: server.App, caplog: pytest.LogCaptureFixture
) -> None:
    api_server.discovery_outage = 403  # the system:service-account-issuer-discovery binding was removed
    with caplog.at_level(logging.WARNING, logger="kube_sts.callers"):
        assert exchange(app, legit_token(api_server)).status == 200  # legitimate callers are still served
        ready = harness.asgi_call(app, "GET", "/readyz")
    assert ready.status == 200
    details = [check["detail"] for check in ready.json()["checks"].values()]
    assert any("degraded: cannot read the cluster's service-account keys" in str(d) for d in details)
    logged = [r.message for r in caplog.records if "cannot read the cluster's service-account keys" in r.message]
    assert len(logged) == 1 and "403" in logged[0] and "TokenReview alone" in logged[0]
    # junk now costs reviews, but only within the budget; beyond it the answer is 503 with Retry-After
    app.callers.budget.rate = 0.0  # no refill during the test: exactly the burst is spent
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    answers = [exchange(app, jwt.encode(claims(), stranger, "RS256", {"kid": str(i)})) for i in range(40)]
    refused = [a for a in answers if a.status == 503]
    assert len(refused) == 40 - 19 and len(api_server.requests_to(REVIEWS)) == 20  # a burst of 20, one used
    assert all(a.json()["error"] == "apiserver_unavailable" and a.headers["retry-after"] for a in refused)
    # once the keys are readable again, junk costs nothing and the detail says so
    api_server.discovery_outage = None
    app.callers.cluster_keys.retry = 0.0
    reviews = len(api_server.requests_to(REVIEWS))
    assert exchange(app, jwt.encode(claims(), stranger, "RS256", {"kid": "x"})).status == 401
    assert len(api_server.requests_to(REVIEWS)) == reviews
    assert "degraded" not in json.dumps(harness.asgi_call(app, "GET", "/readyz").json())


# -- the flood -------------------------------------------------------------------------------------

JUNK_CLIENTS = 100
LEGIT_CLIENTS = 10
LEGIT_EXCHANGES = 8


def _post(connection: http.client.HTTPSConnection, token: str) -> int:
    connection.request("POST", "/aws/token", headers={"Authorization": f"Bearer {token}", "Content-Length": "0"})
    response = connection.getresponse()
    response.read()
    return response.status


def test_flood_of_junk_leaves_legitimate_callers_served(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI, keys_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """100 clients send junk while 10 legitimate ones exchange fresh tokens; the API server takes 250 ms."""
    tls = harness.make_tls(tmp_path / "tls")
    app = harness.make_app(harness.runtime_config(harness.endpoint()), kube, keys_dir)
    api_server.delay = 0.25
    kid = api_server.signing_keys["RS256"][0]
    pods = [
        api_server.add_pod("myns", f"app-{c}", annotations={"tremolo.io/aws-role": ROLE}) for c in range(LEGIT_CLIENTS)
    ]
    legit_tokens = [  # a fresh token for every exchange: each costs a TokenReview (the worst case)
        [
            api_server.issue_token("myns", "app", pod=pod, audiences=[harness.STS_AUDIENCE])
            for _ in range(LEGIT_EXCHANGES)
        ]
        for pod in pods
    ]
    stop = threading.Event()
    junk_sent = [0] * JUNK_CLIENTS
    legit: list[int] = []
    ready: list[int] = []
    lock = threading.Lock()
    context = tls.client_context()
    header = _b64(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}).encode())

    def connect(port: int) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)

    def junk_client(index: int, port: int) -> None:
        connection = connect(port)
        while not stop.is_set():
            body = _b64(json.dumps(claims(jti=secrets.token_hex(8))).encode())
            try:
                _post(connection, f"{header}.{body}.{_b64(secrets.token_bytes(256))}")
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = connect(port)
            junk_sent[index] += 1
        connection.close()

    def legit_client(tokens: list[str], port: int) -> None:
        connection = connect(port)
        for token in tokens:
            status = _post(connection, token)
            with lock:
                legit.append(status)
        connection.close()

    def prober(port: int) -> None:
        connection = connect(port)
        while not stop.is_set():
            connection.request("GET", "/readyz")
            response = connection.getresponse()
            response.read()
            ready.append(response.status)
            stop.wait(0.5)
        connection.close()

    with harness.RunningServer(app, tls) as running:
        started = time.monotonic()
        flooders = [threading.Thread(target=junk_client, args=(i, running.port)) for i in range(JUNK_CLIENTS)]
        probe = threading.Thread(target=prober, args=(running.port,))
        for thread in [*flooders, probe]:
            thread.start()
        time.sleep(1.0)  # the flood is under way before the first legitimate caller arrives
        legits = [threading.Thread(target=legit_client, args=(t, running.port)) for t in legit_tokens]
        for thread in legits:
            thread.start()
        for thread in legits:
            thread.join()
        stop.set()
        for thread in [*flooders, probe]:
            thread.join()
        elapsed = time.monotonic() - started
    app.executor.shutdown(wait=True)
    reviews = len(api_server.requests_to(REVIEWS))
    succeeded = legit.count(200)
    print(
        f"\njunk flood: {JUNK_CLIENTS} junk clients sent {sum(junk_sent)} requests in {elapsed:.1f}s "
        f"({sum(junk_sent) / elapsed:.0f}/s), API server delay 250 ms; legitimate exchanges "
        f"{succeeded}/{len(legit)} succeeded ({100 * succeeded / len(legit):.1f} %), statuses "
        f"{sorted(set(legit))}; /readyz {ready.count(200)}/{len(ready)} answered 200; "
        f"TokenReviews sent {reviews} (legitimate tokens: {LEGIT_CLIENTS * LEGIT_EXCHANGES})"
    )
    assert sum(junk_sent) > JUNK_CLIENTS
    assert legit == [200] * (LEGIT_CLIENTS * LEGIT_EXCHANGES)
    assert ready and set(ready) == {200}
    assert reviews == LEGIT_CLIENTS * LEGIT_EXCHANGES  # junk cost none
