"""Trust documents from ``sts-compile trust``, consumed by each relying party's rules.

A token service runs on real uvicorn with TLS and four endpoints of one values file, against the
real API server of the control-plane tier (callers are Pods created there, with TokenRequests
bound to them). Each test
writes the trust documents with the command (``trust.command.main``, as the CLI runs it), hands
them to the relying party's verifying double, and lets the real client library obtain
credentials with a token minted through ``POST /<endpoint>/token``: botocore's web-identity
provider against ``tests/awssts.py``, azure-identity's ``WorkloadIdentityCredential`` against
``tests/entra.py``, google-auth's ``identity_pool`` credentials (built from the generated
``external_account`` configuration) against ``tests/gcpsts.py``, and ``hvac`` against
``tests/vault.py``. Each relying party also refuses the mismatch users make most often.
"""

from __future__ import annotations

import io
import json
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import azure.core.exceptions
import botocore.exceptions
import botocore.session
import google.auth.exceptions
import google.auth.identity_pool
import google.auth.transport.requests
import hvac
import hvac.exceptions
import pytest
import requests

from harness import runtime as harness
from kube_sts.compiler import source
from kube_sts.compiler.trust import command
from kube_sts.runtime.kube import api as kubeapi
from tests import awssts, entra, gcpsts, vault
from tests.controlplane import cluster
from tests.controlplane.test_exchange import create_pod

ACCOUNT = "123456789012"
READER = f"arn:aws:iam::{ACCOUNT}:role/allowed-reader"
WRITER = f"arn:aws:iam::{ACCOUNT}:role/allowed-writer"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "8d3e9f0a-1b2c-4d5e-8f90-a1b2c3d4e5f6"
GCP_PROVIDER = "projects/123/locations/global/workloadIdentityPools/pool/providers/kube-sts"
VALUES = f"""\
sts:
  cluster: {harness.CLUSTER}
  endpoints:
  - name: aws
    audience: sts.amazonaws.com
    path: /aws
    azRules:
    - scope: filter
      constraint: "(&(namespace=myns)(|(role={READER})(role={WRITER})))"
    issuer: {{host: aws.issuer.example, keypair: aws-keys, keys: {{mode: provided}}}}
    injector:
      label: aws-role
      token_environment_variable_name: AWS_WEB_IDENTITY_TOKEN_FILE
      label_value_environment_variable_name: AWS_ROLE_ARN
  - name: azure
    audience: api://AzureADTokenExchange
    path: /azure
    azRules:
    - scope: filter
      constraint: "(&(namespace=myns)(saname=app))"
    issuer: {{host: azure.issuer.example, keypair: azure-keys, keys: {{mode: provided}}}}
    injector:
      label: azure-identity
      token_environment_variable_name: AZURE_FEDERATED_TOKEN_FILE
      label_value_environment_variable_name: AZURE_CLIENT_ID
  - name: gcp
    audience: https://iam.googleapis.com/{GCP_PROVIDER}
    path: /gcp
    azRules:
    - scope: filter
      constraint: "(&(namespace=myns)(saname=app))"
    issuer: {{host: gcp.issuer.example, keypair: gcp-keys, keys: {{mode: provided}}}}
  - name: vault
    audience: https://vault.example
    path: /vault
    azRules:
    - scope: filter
      constraint: "(&(namespace=myns)(saname=ap*))"
    issuer: {{host: vault.issuer.example, keypair: vault-keys, keys: {{mode: provided}}}}
"""


def trust(*args: str, values: str = VALUES, tmp: pathlib.Path) -> Any:
    path = tmp / "values.yaml"
    path.write_text(values)
    out, err = io.StringIO(), io.StringIO()
    assert command.main([str(path), *args], out, err) == 0, err.getvalue()
    return json.loads(out.getvalue())


class World:
    """The token service of ``VALUES`` in-process, on the real API server as ServiceAccount
    kube-sts; callers are Pods created through the API server with TokenRequests bound to them."""

    def __init__(self, running: harness.RunningServer, tls: harness.TLSFiles, plane: cluster.ControlPlane) -> None:
        self.running, self.tls, self.plane = running, tls, plane
        self.context = tls.client_context()

    def mint(self, endpoint: str, role: str = "", namespace: str = "myns", sa: str = "app") -> str:
        assert (namespace, sa) == ("myns", "app"), "the tier's myns has the ServiceAccount app"
        label = {"aws": "aws-role", "azure": "azure-identity"}.get(endpoint, "none")
        name = f"trust-{uuid.uuid4().hex[:10]}"
        pod = create_pod(self.plane, namespace, name, labelled=False, annotations={f"tremolo.io/{label}": role})
        sa_token = self.plane.token(namespace, sa, harness.STS_AUDIENCE, pod=pod)
        answer = harness.asgi_call(
            self.running.app, "POST", f"/{endpoint}/token", {"authorization": f"Bearer {sa_token}"}
        )
        assert answer.status == 200, answer.json()
        return str(answer.json()["token"])

    def base(self, endpoint: str) -> str:
        return f"{self.running.url}/{endpoint}"


@pytest.fixture
def world(
    control_plane: cluster.ControlPlane, myns: str, runtime_kube: kubeapi.KubeAPI, tmp_path: pathlib.Path
) -> Iterator[World]:
    tls = harness.make_tls(tmp_path / "tls")
    model = source.parse(VALUES)
    for endpoint in model.sts.endpoints:
        harness.write_keyset(tmp_path / "keys", endpoint.name, "RS256")
    app = harness.make_app(harness.runtime_config(*model.sts.endpoints), runtime_kube, tmp_path / "keys")
    with harness.RunningServer(app, tls) as running:
        yield World(running, tls, control_plane)
    app.executor.shutdown(wait=True)


# -- AWS ----------------------------------------------------------------------------------------


def aws_double(world: World, tmp_path: pathlib.Path) -> awssts.AWSSTS:
    document = trust("--endpoint", "aws", tmp=tmp_path)["aws"]
    sts = awssts.AWSSTS(ACCOUNT)
    provider = document["openIdConnectProvider"]
    assert "ThumbprintList" not in provider
    sts.add_provider(
        awssts.Provider(provider["Url"], tuple(provider["ClientIDList"]), world.base("aws"), world.context)
    )
    assert [role["arn"] for role in document["roles"]] == [READER, WRITER]  # the roles the rules name
    for role in document["roles"]:
        sts.policies[role["arn"]] = role["trustPolicy"]
    return sts


def assume(sts: awssts.AWSSTS, role: str, token: str) -> str:
    form = {"Action": "AssumeRoleWithWebIdentity", "RoleArn": role, "RoleSessionName": "s", "WebIdentityToken": token}
    try:
        sts.assume_role(form)
    except awssts.STSError as error:
        return error.code
    return "ok"


def test_aws_botocore_obtains_credentials_with_the_generated_trust(
    world: World, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with aws_double(world, tmp_path).start() as sts:
        awssts.web_identity_environment(monkeypatch, tmp_path, sts.url, world.mint("aws", READER), READER)
        credentials = botocore.session.Session().get_credentials()
        assert credentials is not None and credentials.method == "assume-role-with-web-identity"
        frozen = credentials.get_frozen_credentials()
        [call] = sts.calls
        assert frozen.access_key == call.access_key_id and call.role_arn == READER
        monkeypatch.setenv("AWS_ROLE_ARN", WRITER)  # the same token, presented for the other role
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            botocore.session.Session().get_credentials().get_frozen_credentials()


def test_aws_a_token_for_one_role_is_refused_by_every_other_roles_policy(world: World, tmp_path: pathlib.Path) -> None:
    sts = aws_double(world, tmp_path)
    reader, writer = world.mint("aws", READER), world.mint("aws", WRITER)
    assert (assume(sts, READER, reader), assume(sts, WRITER, reader)) == ("ok", "AccessDenied")
    assert (assume(sts, WRITER, writer), assume(sts, READER, writer)) == ("ok", "AccessDenied")
    # a role value that ends with another role's ARN: the rules refuse it, and so would the policy
    smuggled = trust("--endpoint", "aws", "--role", WRITER, tmp=tmp_path)["aws"]["roles"][0]["trustPolicy"]
    provider = awssts.AWSSTS(ACCOUNT).provider_arn(sts.providers["https://aws.issuer.example"])
    claims = {"aud": "sts.amazonaws.com", "sub": f"{harness.CLUSTER}:myns:app:{READER}:{WRITER}"}
    assert not awssts.trust_allows(smuggled, provider, "https://aws.issuer.example", claims)


def test_aws_wrong_audience_is_refused(world: World, tmp_path: pathlib.Path) -> None:
    sts = aws_double(world, tmp_path)
    sts.providers["https://aws.issuer.example"].client_ids = ("sts.amazonaws.com", "sts.aws.com")
    wrong = trust(
        "--endpoint", "aws", values=VALUES.replace("audience: sts.amazonaws.com", "audience: sts.aws.com"), tmp=tmp_path
    )["aws"]
    sts.policies[READER] = wrong["roles"][0]["trustPolicy"]  # the policy pins another audience
    assert assume(sts, READER, world.mint("aws", READER)) == "AccessDenied"


def test_aws_wildcard_subject_refuses_a_colon_in_a_free_field(tmp_path: pathlib.Path) -> None:
    values = VALUES.replace(f"(&(namespace=myns)(|(role={READER})(role={WRITER})))", f"(role={READER})")
    [role] = trust("--endpoint", "aws", values=values, tmp=tmp_path)["aws"]["roles"]
    host = "aws.issuer.example"
    condition = role["trustPolicy"]["Statement"][0]["Condition"]
    assert condition["StringLike"] == {f"{host}:sub": f"{harness.CLUSTER}:*:*:{READER}"}
    provider = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{host}"
    url = f"https://{host}"

    def allows(sub: str) -> bool:
        return awssts.trust_allows(role["trustPolicy"], provider, url, {"aud": "sts.amazonaws.com", "sub": sub})

    assert allows(f"{harness.CLUSTER}:team-a:app:{READER}")
    assert not allows(f"{harness.CLUSTER}:team-a:app:x:{READER}")


def test_aws_bucket_policy_and_shell(tmp_path: pathlib.Path) -> None:
    document = trust("--endpoint", "aws", "--bucket", "docs", "--distribution-id", "E123", tmp=tmp_path)["aws"]
    [statement] = document["bucketPolicy"]["Statement"]
    assert statement["Principal"] == {"Service": "cloudfront.amazonaws.com"} and statement["Action"] == "s3:GetObject"
    assert statement["Resource"] == "arn:aws:s3:::docs/*"
    assert statement["Condition"] == {
        "StringEquals": {"AWS:SourceArn": f"arn:aws:cloudfront::{ACCOUNT}:distribution/E123"}
    }


# -- Azure --------------------------------------------------------------------------------------


@pytest.fixture
def aad(world: World, tmp_path: pathlib.Path) -> Iterator[entra.Entra]:
    [fic] = trust("--endpoint", "azure", tmp=tmp_path)["azure"]["federatedIdentityCredentials"]
    with entra.Entra(world.tls.server_context(), TENANT) as double:
        credential = entra.FederatedCredential(fic["name"], fic["issuer"], fic["subject"], tuple(fic["audiences"]))
        double.add_application(entra.Application(CLIENT_ID, [credential]))
        double.issuer_hosts[fic["issuer"]] = entra.IssuerHost(world.base("azure"), world.context)
        yield double


def test_azure_workload_identity_with_the_generated_credential(
    world: World, aad: entra.Entra, tmp_path: pathlib.Path
) -> None:
    credential = entra.workload_identity(aad, world.tls.ca, tmp_path, world.mint("azure", CLIENT_ID), CLIENT_ID)
    token = credential.get_token("https://management.azure.com/.default")
    [call] = aad.calls
    assert token.token == call.access_token and call.claims["sub"] == f"{harness.CLUSTER}:myns:app"
    credential.close()


def test_azure_refuses_another_service_account(world: World, aad: entra.Entra, tmp_path: pathlib.Path) -> None:
    # the subject mismatch: the credential names myns/app, the token is another ServiceAccount's
    aad.applications[CLIENT_ID].credentials[0].subject = f"{harness.CLUSTER}:myns:other"
    credential = entra.workload_identity(aad, world.tls.ca, tmp_path, world.mint("azure", CLIENT_ID), CLIENT_ID)
    with pytest.raises(azure.core.exceptions.ClientAuthenticationError, match="AADSTS700213"):
        credential.get_token("https://management.azure.com/.default")
    credential.close()


def test_azure_needs_exact_subjects(tmp_path: pathlib.Path) -> None:
    values = VALUES.replace('"(&(namespace=myns)(saname=app))"', '"(namespace=myns)"', 1)
    path = tmp_path / "values.yaml"
    path.write_text(values)
    err = io.StringIO()
    assert command.main([str(path), "--endpoint", "azure"], io.StringIO(), err) == 1
    assert "Entra matches the subject exactly, but this rule leaves saname open" in err.getvalue()
    [fic] = trust("--endpoint", "azure", "--service-account", "myns/app", values=values, tmp=tmp_path)["azure"][
        "federatedIdentityCredentials"
    ]
    assert fic["subject"] == f"{harness.CLUSTER}:myns:app" and fic["audiences"] == ["api://AzureADTokenExchange"]
    err = io.StringIO()
    assert command.main([str(path), "--endpoint", "azure", "--service-account", "other/app"], io.StringIO(), err) == 1
    assert "no rule authorizes namespace=other, saname=app" in err.getvalue()


# -- Google -------------------------------------------------------------------------------------


def google_credentials(world: World, gsts: gcpsts.GoogleSTS, tmp_path: pathlib.Path, token: str) -> Any:
    document = trust("--endpoint", "gcp", tmp=tmp_path)["gcp"]
    info = document["credentialConfiguration"]
    assert info["credential_source"]["file"] == "/var/run/secrets/kube-sts/gcp/token"
    token_file = tmp_path / "gcp-token"
    token_file.write_text(token)
    # the Pod's paths and Google's URL, pointed at this test's file and double
    info = {
        **info,
        "token_url": gsts.token_url,
        "credential_source": {**info["credential_source"], "file": str(token_file)},
    }
    return google.auth.identity_pool.Credentials.from_info(  # type: ignore[no-untyped-call]
        info, scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )


@pytest.fixture
def gsts(world: World, tmp_path: pathlib.Path) -> Iterator[gcpsts.GoogleSTS]:
    provider = trust("--endpoint", "gcp", tmp=tmp_path)["gcp"]["provider"]
    assert provider["attributeMapping"]["google.subject"] == "assertion.sub"
    with gcpsts.GoogleSTS(world.tls.server_context()) as double:
        double.add_provider(
            gcpsts.Provider(
                "//iam.googleapis.com/" + provider["name"],
                provider["oidc"]["issuerUri"],
                world.base("gcp"),
                world.context,
                allowed_audiences=tuple(provider["oidc"]["allowedAudiences"]),
            )
        )
        yield double


def google_request(world: World) -> google.auth.transport.requests.Request:
    session = requests.Session()
    session.verify = str(world.tls.ca)
    session.trust_env = False
    return google.auth.transport.requests.Request(session)


def test_google_identity_pool_with_the_generated_configuration(
    world: World, gsts: gcpsts.GoogleSTS, tmp_path: pathlib.Path
) -> None:
    credentials = google_credentials(world, gsts, tmp_path, world.mint("gcp"))
    credentials.refresh(google_request(world))
    [call] = gsts.calls
    assert credentials.token == call.access_token and call.claims["sub"] == f"{harness.CLUSTER}:myns:app"


def test_google_refuses_another_audience(world: World, gsts: gcpsts.GoogleSTS, tmp_path: pathlib.Path) -> None:
    # the audience mismatch: the provider was created with another allowed audience
    [provider] = gsts.providers.values()
    provider.allowed_audiences = (
        "https://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/other",
    )
    credentials = google_credentials(world, gsts, tmp_path, world.mint("gcp"))
    with pytest.raises(google.auth.exceptions.OAuthError, match="audience"):
        credentials.refresh(google_request(world))


def test_google_refuses_a_subject_that_can_exceed_127_bytes(tmp_path: pathlib.Path) -> None:
    values = VALUES.replace(
        '"(&(namespace=myns)(saname=app))"\n    issuer: {host: gcp', '"(namespace=myns)"\n    issuer: {host: gcp'
    )
    path = tmp_path / "values.yaml"
    path.write_text(values)
    err = io.StringIO()
    assert command.main([str(path), "--endpoint", "gcp"], io.StringIO(), err) == 1
    line = err.getvalue().splitlines()[0]
    assert line.startswith(
        f"{path}:30:7: error: sts.endpoints[2].azRules[0]: the sub 'test-cluster:myns:*' can be 271 bytes"
    )
    assert line.endswith("[subject-too-long]")


# -- Vault --------------------------------------------------------------------------------------


@pytest.fixture
def vault_login(world: World, tmp_path: pathlib.Path) -> Iterator[tuple[vault.Vault, hvac.Client, str]]:
    document = trust("--endpoint", "vault", "--for", "vault", "--vault-policy", "reader", tmp=tmp_path)["vault"]
    with vault.Vault(world.context) as double:
        double.fetch_bases["https://vault.issuer.example"] = world.base("vault")
        client = hvac.Client(url=double.url, token="root")
        mount = document["mount"]
        client.sys.enable_auth_method("jwt", path=mount)
        client.write_data(f"auth/{mount}/config", data=document["config"])
        for name, body in document["roles"].items():
            client.write_data(f"auth/{mount}/role/{name}", data=body)
        yield double, client, mount


def test_vault_hvac_logs_in_with_the_generated_role(
    world: World, vault_login: tuple[vault.Vault, hvac.Client, str]
) -> None:
    double, client, mount = vault_login
    answer = client.auth.jwt.jwt_login("vault", world.mint("vault"), path=mount)
    [login] = double.logins
    assert answer["auth"]["client_token"] == login.client_token == client.token
    assert answer["auth"]["policies"] == ["default", "reader"] and answer["auth"]["lease_duration"] == 3600
    assert answer["auth"]["metadata"] == {
        "cluster": harness.CLUSTER,
        "namespace": "myns",
        "saname": "app",
        "role": "vault",
    }


def test_vault_refuses_what_the_role_does_not_bind(
    world: World, vault_login: tuple[vault.Vault, hvac.Client, str]
) -> None:
    double, client, mount = vault_login
    # the glob on saname (ap*) binds; another namespace's ServiceAccount would not match ...
    role = double.roles[(mount, "vault")]
    assert role["bound_claims_type"] == "glob" and role["bound_claims"]["saname"] == "ap*"
    role["bound_claims"] = {**role["bound_claims"], "namespace": "prod"}
    with pytest.raises(hvac.exceptions.InvalidRequest, match='claim "namespace" does not match'):
        client.auth.jwt.jwt_login("vault", world.mint("vault"), path=mount)
    # ... and the commonest mistake: the role bound to another audience
    role["bound_claims"]["namespace"] = "myns"
    role["bound_audiences"] = ["vault"]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="aud claim does not match any bound audience"):
        client.auth.jwt.jwt_login("vault", world.mint("vault"), path=mount)
    assert double.logins == []


def test_vault_with_pem_keys_and_expiry_leeway(world: World, tmp_path: pathlib.Path) -> None:
    keys = tmp_path / "keys" / "vault" / "keyset.json"
    document = trust("--endpoint", "vault", "--for", "vault", "--keyset", str(keys), tmp=tmp_path)["vault"]
    assert "jwks_url" not in document["config"] and len(document["config"]["jwt_validation_pubkeys"]) == 1
    with vault.Vault() as double:
        client = hvac.Client(url=double.url, token="root")
        client.sys.enable_auth_method("jwt", path="v")
        client.write_data("auth/v/config", data=document["config"])
        client.write_data("auth/v/role/vault", data=document["roles"]["vault"])
        token = world.mint("vault")
        exp = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[1] + "==="))["exp"]
        double.clock = lambda: exp + 150 + 60 - 1  # within Vault's expiration and clock-skew leeway
        assert client.auth.jwt.jwt_login("vault", token, path="v")["auth"]["client_token"]
        double.clock = lambda: exp + 150 + 60 + 1
        with pytest.raises(hvac.exceptions.InvalidRequest, match="token is expired"):
            client.auth.jwt.jwt_login("vault", token, path="v")
        double.clock = lambda: exp - 3600
        client.write_data("auth/v/config", data={**document["config"], "bound_issuer": "https://other.example"})
        with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid issuer"):
            client.auth.jwt.jwt_login("vault", token, path="v")


def test_trust_is_deterministic_and_has_shell_commands(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(VALUES)
    text = ""
    for endpoint, extra in (("aws", []), ("azure", []), ("gcp", []), ("vault", ["--for", "vault"])):
        outputs = []
        for _ in range(2):
            out = io.StringIO()
            assert (
                command.main([str(path), "--endpoint", endpoint, *extra, "--format", "shell"], out, io.StringIO()) == 0
            )
            outputs.append(out.getvalue())
        assert outputs[0] == outputs[1]
        text += outputs[0]
    assert (
        "aws iam create-open-id-connect-provider --url https://aws.issuer.example --client-id-list sts.amazonaws.com"
        in text
    )
    assert "az identity federated-credential create --name" in text and "--audiences api://AzureADTokenExchange" in text
    assert "gcloud iam workload-identity-pools providers create-oidc kube-sts --project=123" in text
    assert (
        "vault auth enable -path=kube-sts-vault jwt" in text
        and "vault write auth/kube-sts-vault/role/vault - <<'EOF'" in text
    )
    err = io.StringIO()
    assert command.main([str(path)], io.StringIO(), err) == 1  # every endpoint: vault's audience names no party
    assert (
        "cannot tell the relying party from the audience 'https://vault.example'; say it with --for" in err.getvalue()
    )
