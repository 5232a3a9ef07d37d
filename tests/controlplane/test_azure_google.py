"""Minted tokens exchanged by the real Azure and Google client libraries at verifying local doubles.

The token service runs on real uvicorn with TLS on 127.0.0.1 with two endpoints: ``azure``
(audience ``api://AzureADTokenExchange``, issuer ``https://azure-issuer.example``) and ``gcp``
(audience: the provider's default, ``https://iam.googleapis.com/projects/123/locations/global/
workloadIdentityPools/p/providers/kube-sts``; issuer ``https://gcp-issuer.example``). Tokens are
minted through the real ``POST /<endpoint>/token`` and written to a token file, as the sidecar does.
The token service talks to the real API server as the rendered ServiceAccount (``runtime_kube``):
what it exchanges are TokenRequests bound to a real Pod in ``myns``, reviewed by the real TokenReview.

* Azure: azure-identity's ``WorkloadIdentityCredential`` (and MSAL's confidential client, which
  other Azure SDKs use for the same flow) against ``tests/entra.py``, which matches the federated
  identity credential by ``iss``/``sub``/``aud`` and verifies the signature from our discovery
  document and JWKS. The credential trusts the double's certificate through azure-core's
  ``connection_verify`` transport option (no verification is disabled).
* Google: google-auth's ``identity_pool.Credentials`` against ``tests/gcpsts.py``, which verifies
  like a workload identity pool OIDC provider. google-auth 2.63 does not check ``token_url``
  against Google host patterns (the ``_validate_token_url`` check of google-auth 2.x before 2.25
  is gone; ``external_account.Credentials`` documents that configurations are not validated), so
  the double is served over HTTPS on ``https://127.0.0.1:<port>/v1/token``, trusted through the
  ``requests.Session``'s ``verify=<test CA>``; no ``universe_domain`` or plain-HTTP workaround.
"""

from __future__ import annotations

import datetime
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import azure.core.exceptions
import google.auth.exceptions
import google.auth.identity_pool
import google.auth.transport.requests
import msal  # type: ignore[import-untyped]
import pytest
import requests

from harness import runtime as harness
from kube_sts.runtime.kube import api as kubeapi
from tests import entra, gcpsts
from tests.controlplane import cluster
from tests.controlplane.test_exchange import create_pod
from tests.controlplane.token_service import Service, serve, tamper

ALGORITHMS = ["RS256", "ES256"]
SUBJECT = f"{harness.CLUSTER}:myns:app"
AZURE_ISSUER = "https://azure-issuer.example"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "8d3e9f0a-1b2c-4d5e-8f90-a1b2c3d4e5f6"
ARM_SCOPE = "https://management.azure.com/.default"
GCP_ISSUER = "https://gcp-issuer.example"
GCP_PROVIDER = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/kube-sts"
GCP_OTHER_PROVIDER = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/other"
GCP_AUDIENCE = "https:" + GCP_PROVIDER
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


@pytest.fixture(scope="module")
def pod(control_plane: cluster.ControlPlane, myns: str) -> dict[str, Any]:
    """A Pod of ServiceAccount ``app`` in ``myns`` with the Azure identity annotation (unlabelled: no webhook)."""
    annotations = {"tremolo.io/azure-identity": CLIENT_ID}
    return create_pod(control_plane, myns, "azure-google", labelled=False, annotations=annotations)


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
    keys_dir = tmp_path / "keys"
    harness.write_keyset(keys_dir, "azure", algorithm)
    harness.write_keyset(keys_dir, "gcp", algorithm)
    runtime = harness.runtime_config(
        harness.endpoint(
            "azure",
            algorithm=algorithm,
            audience=entra.FEDERATION_AUDIENCE,
            host="azure-issuer.example",
            label="azure-identity",
        ),
        harness.endpoint("gcp", algorithm=algorithm, audience=GCP_AUDIENCE, host="gcp-issuer.example", label=None),
    )
    with serve(runtime, runtime_kube, keys_dir, tls, control_plane, pod) as service:
        yield service


# -- Azure ------------------------------------------------------------------------------------


@pytest.fixture
def aad(service: Service) -> Iterator[entra.Entra]:
    with entra.Entra(service.tls.server_context(), TENANT) as double:
        double.add_application(
            entra.Application(CLIENT_ID, [entra.FederatedCredential("kube-sts", AZURE_ISSUER, SUBJECT)])
        )
        double.issuer_hosts[AZURE_ISSUER] = entra.IssuerHost(f"{service.running.url}/azure", service.context)
        double.issuer_hosts[GCP_ISSUER] = entra.IssuerHost(f"{service.running.url}/gcp", service.context)
        if service.algorithm != "RS256":
            # Entra documents RS256 only ("other algorithms may work, but haven't been tested").
            double.algorithms = ("RS256", service.algorithm)
        yield double


def workload_identity(aad: entra.Entra, tls: harness.TLSFiles, tmp_path: pathlib.Path, token: str) -> Any:
    return entra.workload_identity(aad, tls.ca, tmp_path, token, CLIENT_ID)


def test_workload_identity_credential_with_a_minted_token(
    service: Service, aad: entra.Entra, tmp_path: pathlib.Path
) -> None:
    credential = workload_identity(aad, service.tls, tmp_path, service.mint("azure"))
    before = int(time.time())
    token = credential.get_token(ARM_SCOPE)
    assert aad.errors == []
    [call] = aad.calls
    assert token.token == call.access_token
    assert before + 3599 <= token.expires_on <= int(time.time()) + 3599
    assert call.client_id == CLIENT_ID and call.credential == "kube-sts" and call.scope == ARM_SCOPE
    assert call.claims["iss"] == AZURE_ISSUER and call.claims["sub"] == SUBJECT
    assert call.claims["aud"] == entra.FEDERATION_AUDIENCE
    # azure-identity posts straight to <authority>/<tenant>/oauth2/v2.0/token: no tenant or
    # instance discovery for client assertions; a second call is answered from its cache.
    assert aad.requests == [("POST", f"/{TENANT}/oauth2/v2.0/token")]
    assert credential.get_token(ARM_SCOPE).token == token.token
    assert len(aad.requests) == 1
    credential.close()


def test_msal_client_assertion_with_a_minted_token(service: Service, aad: entra.Entra, tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "azure-token"
    token_file.write_text(service.mint("azure"))
    application = msal.ConfidentialClientApplication(
        CLIENT_ID,
        # a callable, read on demand as the sidecar rewrites the file (MSAL deprecates a static string)
        client_credential={"client_assertion": token_file.read_text},
        authority=f"{aad.authority}/{TENANT}",
        instance_discovery=False,
        http_client=ca_session(service.tls),  # MSAL's verify= sets Session.verify: see ca_session
    )
    result = application.acquire_token_for_client(scopes=[ARM_SCOPE])
    assert "error" not in result, result
    [call] = aad.calls
    assert result["access_token"] == call.access_token and result["token_type"] == "Bearer"
    assert aad.requests == [
        ("GET", f"/{TENANT}/v2.0/.well-known/openid-configuration"),
        ("POST", f"/{TENANT}/oauth2/v2.0/token"),
    ]


def refused(credential: Any) -> str:
    with pytest.raises(azure.core.exceptions.ClientAuthenticationError) as error:
        credential.get_token(ARM_SCOPE)
    credential.close()
    return str(error.value.message)


def test_workload_identity_is_refused_a_tampered_token(
    service: Service, aad: entra.Entra, tmp_path: pathlib.Path
) -> None:
    message = refused(workload_identity(aad, service.tls, tmp_path, tamper(service.mint("azure"))))
    assert "(invalid_client) AADSTS700027: Client assertion failed signature validation." in message
    assert aad.calls == [] and aad.errors == [(700027, "invalid_client")]


def test_workload_identity_is_refused_a_token_for_another_audience(
    service: Service, aad: entra.Entra, tmp_path: pathlib.Path
) -> None:
    # A federated credential that trusts the gcp endpoint's issuer and subject, presented that
    # endpoint's token: its aud is Google's provider, not api://AzureADTokenExchange.
    aad.applications[CLIENT_ID].credentials.append(entra.FederatedCredential("gcp", GCP_ISSUER, SUBJECT))
    message = refused(workload_identity(aad, service.tls, tmp_path, service.mint("gcp")))
    assert (
        f"AADSTS700212: No matching federated identity record found for presented assertion audience '{GCP_AUDIENCE}'"
        in message
    )
    assert aad.calls == [] and aad.errors == [(700212, "invalid_client")]


def test_workload_identity_is_refused_a_token_for_another_subject(
    service: Service, aad: entra.Entra, tmp_path: pathlib.Path
) -> None:
    aad.applications[CLIENT_ID].credentials = [
        entra.FederatedCredential("other", AZURE_ISSUER, f"{harness.CLUSTER}:myns:other")
    ]
    message = refused(workload_identity(aad, service.tls, tmp_path, service.mint("azure")))
    assert (
        f"AADSTS700213: No matching federated identity record found for presented assertion subject '{SUBJECT}'"
        in message
    )
    assert aad.calls == [] and aad.errors == [(700213, "invalid_client")]


def test_workload_identity_is_refused_an_expired_token(
    service: Service, aad: entra.Entra, tmp_path: pathlib.Path
) -> None:
    service.age_tokens(7200)
    message = refused(workload_identity(aad, service.tls, tmp_path, service.mint("azure")))
    assert "AADSTS700024: Client assertion is not within its valid time range." in message
    assert aad.calls == [] and aad.errors == [(700024, "invalid_client")]


def test_entra_double_matches_issuer_exactly_and_needs_our_documents(service: Service, aad: entra.Entra) -> None:
    token = service.mint("azure")
    credential, claims = aad.verify(CLIENT_ID, token)
    assert credential.name == "kube-sts" and claims["jti"]
    aad.applications[CLIENT_ID].credentials = [entra.FederatedCredential("slash", AZURE_ISSUER + "/", SUBJECT)]
    with pytest.raises(entra.EntraError, match="AADSTS700211"):
        aad.verify(CLIENT_ID, token)
    aad.applications[CLIENT_ID].credentials = [entra.FederatedCredential("kube-sts", AZURE_ISSUER, SUBJECT)]
    aad.issuer_hosts[AZURE_ISSUER] = entra.IssuerHost(f"{service.running.url}/gcp", service.context)
    with pytest.raises(entra.EntraError, match="AADSTS90061"):  # the gcp endpoint's discovery names its own issuer
        aad.verify(CLIENT_ID, token)
    with pytest.raises(entra.EntraError, match="AADSTS700016"):
        aad.verify("00000000-0000-0000-0000-000000000000", token)
    aad.issuer_hosts[AZURE_ISSUER] = entra.IssuerHost(f"{service.running.url}/azure", service.context)
    aad.algorithms = ("RS256",)  # Entra's documented support: ES256 tokens are not accepted then
    if service.algorithm == "RS256":
        assert aad.verify(CLIENT_ID, token)[1]["sub"] == SUBJECT
    else:
        with pytest.raises(entra.EntraError, match="AADSTS700027"):
            aad.verify(CLIENT_ID, token)


# -- Google -----------------------------------------------------------------------------------


@pytest.fixture
def gsts(service: Service) -> Iterator[gcpsts.GoogleSTS]:
    with gcpsts.GoogleSTS(service.tls.server_context()) as double:
        for name in (GCP_PROVIDER, GCP_OTHER_PROVIDER):
            double.add_provider(gcpsts.Provider(name, GCP_ISSUER, f"{service.running.url}/gcp", service.context))
        yield double


def identity_pool(gsts: gcpsts.GoogleSTS, tmp_path: pathlib.Path, token: str, provider: str = GCP_PROVIDER) -> Any:
    """External-account credentials as ``gcloud iam workload-identity-pools create-cred-config`` writes them."""
    token_file = tmp_path / "gcp-token"
    token_file.write_text(token)
    info = {
        "type": "external_account",
        "audience": provider,
        "subject_token_type": gcpsts.JWT,
        "token_url": gsts.token_url,
        "credential_source": {"file": str(token_file), "format": {"type": "text"}},
    }
    return google.auth.identity_pool.Credentials.from_info(info, scopes=[CLOUD_PLATFORM])  # type: ignore[no-untyped-call]


def ca_session(tls: harness.TLSFiles) -> requests.Session:
    """A ``requests.Session`` that trusts the test CA, whatever the environment says.

    requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override ``Session.verify`` (the
    environment wins over the session, only a per-request ``verify=`` beats it), so with those set,
    as in many CI images, ``session.verify = <ca>`` alone is silently ignored.
    """
    session = requests.Session()
    session.verify = str(tls.ca)
    session.trust_env = False
    return session


def google_request(tls: harness.TLSFiles) -> google.auth.transport.requests.Request:
    return google.auth.transport.requests.Request(ca_session(tls))


def test_identity_pool_credentials_with_a_minted_token(
    service: Service, gsts: gcpsts.GoogleSTS, tmp_path: pathlib.Path
) -> None:
    credentials = identity_pool(gsts, tmp_path, service.mint("gcp"))
    credentials.refresh(google_request(service.tls))
    assert gsts.errors == []
    [call] = gsts.calls
    assert credentials.token == call.access_token and credentials.valid
    assert call.provider == GCP_PROVIDER and call.scope == CLOUD_PLATFORM
    assert call.claims["iss"] == GCP_ISSUER and call.claims["sub"] == SUBJECT and call.claims["aud"] == GCP_AUDIENCE
    remaining = credentials.expiry - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # naive UTC
    assert 3500 < remaining.total_seconds() <= 3599


def oauth_refused(credentials: Any, tls: harness.TLSFiles) -> str:
    # google-auth 2.63 raises OAuthError (not a RefreshError subclass) for an STS error answer.
    with pytest.raises(google.auth.exceptions.OAuthError) as error:
        credentials.refresh(google_request(tls))
    assert not isinstance(error.value, google.auth.exceptions.RefreshError)
    assert not credentials.valid
    return str(error.value)


def test_identity_pool_is_refused_a_tampered_token(
    service: Service, gsts: gcpsts.GoogleSTS, tmp_path: pathlib.Path
) -> None:
    message = oauth_refused(identity_pool(gsts, tmp_path, tamper(service.mint("gcp"))), service.tls)
    assert "Error code invalid_grant: Invalid ID Token signature." in message
    assert gsts.calls == [] and [e for e, _ in gsts.errors] == ["invalid_grant"]


def test_identity_pool_is_refused_an_expired_token(
    service: Service, gsts: gcpsts.GoogleSTS, tmp_path: pathlib.Path
) -> None:
    service.age_tokens(7200)
    message = oauth_refused(identity_pool(gsts, tmp_path, service.mint("gcp")), service.tls)
    assert "Error code invalid_grant: ID Token expired at" in message
    assert gsts.calls == []


def test_identity_pool_is_refused_a_token_for_another_provider(
    service: Service, gsts: gcpsts.GoogleSTS, tmp_path: pathlib.Path
) -> None:
    # Same pool and issuer, but provider "other" accepts only its own default audience.
    credentials = identity_pool(gsts, tmp_path, service.mint("gcp"), provider=GCP_OTHER_PROVIDER)
    message = oauth_refused(credentials, service.tls)
    assert f"Error code invalid_grant: The audience in ID Token ['{GCP_AUDIENCE}'] does not match" in message
    assert gsts.calls == []


def test_identity_pool_without_a_token_file_is_a_refresh_error(
    gsts: gcpsts.GoogleSTS, tls: harness.TLSFiles, tmp_path: pathlib.Path
) -> None:
    credentials = identity_pool(gsts, tmp_path, "unused")
    (tmp_path / "gcp-token").unlink()
    with pytest.raises(google.auth.exceptions.RefreshError, match=r"File '.*gcp-token' was not found"):
        credentials.refresh(google_request(tls))
    assert gsts.errors == []


def test_google_double_checks_issuer_provider_and_subject(service: Service, gsts: gcpsts.GoogleSTS) -> None:
    token = service.mint("gcp")
    provider = gsts.providers[GCP_PROVIDER]
    assert gsts.verify(provider, token)["sub"] == SUBJECT
    provider.issuer_uri = GCP_ISSUER + "/"
    with pytest.raises(gcpsts.STSError, match="does not match the expected issuer"):
        gsts.verify(provider, token)
    provider.issuer_uri = GCP_ISSUER
    provider.attribute_condition = lambda claims: claims.get("namespace") == "prod"
    with pytest.raises(gcpsts.STSError, match="attribute condition"):
        gsts.verify(provider, token)
    provider.attribute_condition = lambda claims: claims.get("namespace") == "myns"
    assert gsts.verify(provider, token)["namespace"] == "myns"
    with pytest.raises(gcpsts.STSError, match="audience"):
        gsts.exchange(
            {
                "grant_type": gcpsts.TOKEN_EXCHANGE,
                "audience": GCP_PROVIDER.replace("kube-sts", "missing"),
                "subject_token_type": gcpsts.JWT,
                "subject_token": token,
            }
        )
