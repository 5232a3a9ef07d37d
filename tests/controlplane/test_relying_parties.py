"""Minted tokens verified by independent libraries and by botocore against a verifying STS double.

The token service runs on real uvicorn with TLS on 127.0.0.1 and talks to the real API server as
the rendered ServiceAccount (``runtime_kube``): the tokens it exchanges are TokenRequests bound
to a real Pod in ``myns``, reviewed by the real TokenReview. Relying parties read its discovery
document and JWKS over HTTPS, as they would from the issuer's host.
"""

from __future__ import annotations

import pathlib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import botocore.exceptions
import botocore.session
import joserfc.errors
import joserfc.jwk
import joserfc.jwt
import jwt
import pytest

from harness import runtime as harness
from kube_sts.runtime import server
from kube_sts.runtime.kube import api as kubeapi
from tests import awssts
from tests.controlplane import cluster
from tests.controlplane.test_exchange import create_pod
from tests.controlplane.token_service import Service, serve, tamper

ALGORITHMS = ["RS256", "ES256"]
ISSUER = f"https://{harness.ISSUER_HOST}"
AUDIENCE = "sts.amazonaws.com"
ROLE = "arn:aws:iam::123456789012:role/app"


@pytest.fixture(scope="module")
def pod(control_plane: cluster.ControlPlane, myns: str) -> dict[str, Any]:
    """A Pod of ServiceAccount ``app`` in ``myns`` with the role annotation (unlabelled: no webhook)."""
    return create_pod(control_plane, myns, "relying-party", labelled=False, annotations={"tremolo.io/aws-role": ROLE})


@pytest.fixture(params=ALGORITHMS)
def service(
    request: pytest.FixtureRequest,
    control_plane: cluster.ControlPlane,
    runtime_kube: kubeapi.KubeAPI,
    pod: dict[str, Any],
    tls: harness.TLSFiles,
    tmp_path: pathlib.Path,
) -> Iterator[Service]:
    algorithm = request.param
    harness.write_keyset(tmp_path, "aws", algorithm, count=2)
    runtime = harness.runtime_config(harness.endpoint(algorithm=algorithm, session_tags=True))
    with serve(runtime, runtime_kube, tmp_path, tls, control_plane, pod) as service:
        yield service


def joserfc_verify(token: str, jwks: Any, algorithm: str, audience: str = AUDIENCE) -> dict[str, Any]:
    keys = joserfc.jwk.KeySet.import_key_set(jwks)
    decoded = joserfc.jwt.decode(token, keys, algorithms=[algorithm])
    registry = joserfc.jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        sub={"essential": True},
    )
    registry.validate(decoded.claims)
    assert decoded.header["kid"] in {k["kid"] for k in jwks["keys"]}
    return dict(decoded.claims)


def pyjwt_verify(service: Service, token: str, algorithm: str, audience: str = AUDIENCE) -> dict[str, Any]:
    discovery, _ = service.get("/aws/.well-known/openid-configuration")
    assert discovery["issuer"] == ISSUER
    jwks_url = discovery["jwks_uri"].replace(ISSUER, service.endpoint_base, 1)
    client = jwt.PyJWKClient(jwks_url, ssl_context=service.context, cache_jwk_set=False)
    key = client.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[algorithm],
        audience=audience,
        issuer=discovery["issuer"],
        options={"require": ["exp", "iat", "sub"]},
    )
    return claims


def test_minted_tokens_verify_with_two_libraries(service: Service) -> None:
    algorithm = service.app.runtime.endpoints[0].token.algorithm
    token = service.mint()
    jwks, headers = service.get("/aws/certs")
    assert len(jwks["keys"]) == 2
    assert "max-age=" in headers["Cache-Control"] and int(headers["Cache-Control"].split("max-age=")[1]) > 0
    by_joserfc = joserfc_verify(token, jwks, algorithm)
    by_pyjwt = pyjwt_verify(service, token, algorithm)
    assert by_joserfc == by_pyjwt
    assert by_pyjwt["sub"] == "test-cluster:myns:app"
    assert jwt.get_unverified_header(token)["alg"] == algorithm


def test_tampered_tokens_are_rejected(service: Service) -> None:
    algorithm = service.app.runtime.endpoints[0].token.algorithm
    forged = tamper(service.mint())
    jwks, _ = service.get("/aws/certs")
    with pytest.raises(joserfc.errors.BadSignatureError):
        joserfc_verify(forged, jwks, algorithm)
    with pytest.raises(jwt.InvalidSignatureError):
        pyjwt_verify(service, forged, algorithm)


def test_wrong_audience_is_rejected(service: Service) -> None:
    algorithm = service.app.runtime.endpoints[0].token.algorithm
    token = service.mint()
    jwks, _ = service.get("/aws/certs")
    with pytest.raises(joserfc.errors.InvalidClaimError):
        joserfc_verify(token, jwks, algorithm, audience="api://AzureADTokenExchange")
    with pytest.raises(jwt.InvalidAudienceError):
        pyjwt_verify(service, token, algorithm, audience="api://AzureADTokenExchange")


def test_expired_tokens_are_rejected(service: Service) -> None:
    algorithm = service.app.runtime.endpoints[0].token.algorithm
    for state in service.app.endpoints.values():
        state.minter.clock = lambda: time.time() - 7200  # minted two hours ago, lifetime one hour
    token = service.mint()
    jwks, _ = service.get("/aws/certs")
    with pytest.raises(joserfc.errors.ExpiredTokenError):
        joserfc_verify(token, jwks, algorithm)
    with pytest.raises(jwt.ExpiredSignatureError):
        pyjwt_verify(service, token, algorithm)


@pytest.fixture
def sts(service: Service) -> Iterator[awssts.AWSSTS]:
    with awssts.AWSSTS() as double:
        double.add_provider(awssts.Provider(ISSUER, (AUDIENCE,), service.endpoint_base, service.context))
        double.trust[ROLE] = "test-cluster:myns:app"
        yield double


def botocore_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, sts_url: str, token: str) -> Any:
    awssts.web_identity_environment(monkeypatch, tmp_path, sts_url, token, ROLE)
    session = botocore.session.Session()
    credentials = session.get_credentials()
    assert credentials is not None and credentials.method == "assume-role-with-web-identity"
    return credentials.get_frozen_credentials()


def test_botocore_web_identity_with_a_minted_token(
    service: Service, sts: awssts.AWSSTS, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    frozen = botocore_credentials(monkeypatch, tmp_path, sts.url, service.mint())
    assert sts.errors == []
    [call] = sts.calls
    assert frozen.access_key == call.access_key_id and frozen.token
    assert call.role_arn == ROLE and call.session_name == "kube-sts-test"
    assert call.claims["https://aws.amazon.com/tags"]["principal_tags"]["namespace"] == ["myns"]
    assert int(call.jwks_cache_control.split("max-age=")[1]) > 0


def test_botocore_is_refused_a_tampered_token(
    service: Service, sts: awssts.AWSSTS, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidIdentityToken"):
        botocore_credentials(monkeypatch, tmp_path, sts.url, tamper(service.mint()))
    assert sts.calls == [] and sts.errors[0][0] == "InvalidIdentityToken"


def test_sts_double_checks_issuer_audience_and_expiry(service: Service, sts: awssts.AWSSTS) -> None:
    token = service.mint()
    claims, _ = sts.verify(token, ROLE)
    assert claims["iss"] == ISSUER
    sts.providers[ISSUER].client_ids = ("api://AzureADTokenExchange",)
    with pytest.raises(awssts.STSError, match="audience"):
        sts.verify(token, ROLE)
    sts.providers[ISSUER].client_ids = (AUDIENCE,)
    sts.providers = {ISSUER + "/": sts.providers[ISSUER]}
    with pytest.raises(awssts.STSError, match="No OpenIDConnect provider"):
        sts.verify(token, ROLE)
    sts.providers = {ISSUER: awssts.Provider(ISSUER, (AUDIENCE,), service.endpoint_base, service.context)}
    sts.leeway = -7200  # the double's clock two hours ahead
    with pytest.raises(awssts.STSError) as expired:
        sts.verify(token, ROLE)
    assert expired.value.code == "ExpiredTokenException"
    sts.leeway = 0
    sts.trust[ROLE] = "test-cluster:other:app"
    with pytest.raises(awssts.STSError) as denied:
        sts.verify(token, ROLE)
    assert denied.value.code == "AccessDenied"


def test_server_speaks_tls_only_with_our_ca(service: Service) -> None:
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(service.running.url + "/healthz", context=ssl.create_default_context(), timeout=10)
    assert service.get("/healthz")[0] == {"status": "ok"}
    assert isinstance(service.app, server.App)
