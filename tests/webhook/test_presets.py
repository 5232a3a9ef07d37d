"""Presets: each relying party's defaults under the values file, explicit keys winning, as the
webhook injects them (patch applied with jsonpatch) and as the JSON Schema describes them."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jsonschema
import pydantic
import pytest
import ruamel.yaml

from harness import runtime as harness
from harness.reviews import seed_pod
from kube_sts.runtime import config
from kube_sts.runtime.webhook import injection
from tests.webhook.test_injection import apply, env_of, runtime, validate

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROVIDER = "projects/123/locations/global/workloadIdentityPools/pool1/providers/kube-sts"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def endpoint(preset: str | None, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": "ep",
        "path": "/ep",
        "azRules": [{"scope": "filter", "constraint": "(namespace=default)"}],
        "issuer": {"host": "issuer.example", "keypair": "ep-keys"},
        "injector": {"label": "ep"},
        **extra,
    }
    if preset is not None:
        document["preset"] = preset
    return document


def injected(document: dict[str, Any], value: str = "the-annotation") -> dict[str, str]:
    """The application container's variables after the webhook's patch for ``document``."""
    pod = seed_pod()
    pod["metadata"]["labels"] = {"tremolo.io/ep": "true"}
    pod["metadata"]["annotations"] = {"tremolo.io/ep": value}
    pod["spec"]["containers"][0]["env"] = []
    patched = apply(runtime(config.Endpoint.model_validate(document)), pod)
    validate(patched)
    return env_of(patched["spec"]["containers"][0])


TOKEN = "/var/run/secrets/kube-sts/ep/token"


def test_aws_preset_is_what_the_eks_webhook_injects() -> None:
    document = endpoint("aws", aws={"region": "eu-west-1"})
    parsed = config.Endpoint.model_validate(document)
    assert parsed.audience == "sts.amazonaws.com" and parsed.token.algorithm == "RS256"
    assert injected(document, "arn:aws:iam::123456789012:role/r") == {
        "AWS_WEB_IDENTITY_TOKEN_FILE": TOKEN,
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/r",
        "AWS_STS_REGIONAL_ENDPOINTS": "regional",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }


def test_azure_preset_is_what_the_azure_workload_identity_webhook_injects() -> None:
    document = endpoint("azure", azure={"tenantId": TENANT})
    assert config.Endpoint.model_validate(document).audience == "api://AzureADTokenExchange"
    assert injected(document, "8d3e9f0a-1b2c-4d5e-8f90-a1b2c3d4e5f6") == {
        "AZURE_FEDERATED_TOKEN_FILE": TOKEN,
        "AZURE_CLIENT_ID": "8d3e9f0a-1b2c-4d5e-8f90-a1b2c3d4e5f6",
        "AZURE_TENANT_ID": TENANT,
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
    }


def test_vault_preset_variables() -> None:
    document = endpoint("vault", vault={"address": "https://vault.example.com:8200", "namespace": "team-a"})
    assert config.Endpoint.model_validate(document).audience == "https://vault.example.com:8200"
    assert injected(document, "payments-reader") == {
        "VAULT_JWT_FILE": TOKEN,
        "VAULT_AUTH_ROLE": "payments-reader",
        "VAULT_ADDR": "https://vault.example.com:8200",
        "VAULT_AUTH_PATH": "jwt",
        "VAULT_NAMESPACE": "team-a",
    }


def test_gcp_preset_variables_and_the_sidecar_configuration() -> None:
    document = endpoint("gcp", gcp={"provider": PROVIDER})
    parsed = config.Endpoint.model_validate(document)
    assert parsed.audience == "https://iam.googleapis.com/" + PROVIDER
    assert injected(document, "true") == {
        "KUBE_STS_TOKEN_FILE": TOKEN,
        "KUBE_STS_IDENTITY": "true",
        "GOOGLE_APPLICATION_CREDENTIALS": "/var/run/secrets/kube-sts/ep/credential-configuration.json",
    }
    pod = seed_pod()
    pod["metadata"]["labels"] = {"tremolo.io/ep": "true"}
    pod["metadata"]["annotations"] = {"tremolo.io/ep": "true"}
    [side] = apply(runtime(parsed), pod)["spec"]["initContainers"]
    sidecar_env = env_of(side)
    assert json.loads(sidecar_env[injection.CREDENTIAL_CONFIG_ENV]) == {
        "type": "external_account",
        "audience": "//iam.googleapis.com/" + PROVIDER,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": "https://sts.googleapis.com/v1/token",
        "credential_source": {"file": TOKEN, "format": {"type": "text"}},
    }
    args = side["args"]
    assert args[args.index("--credential-config") + 1] == "/var/run/secrets/kube-sts/ep/credential-configuration.json"
    assert args[args.index("--credential-config-env") + 1] == injection.CREDENTIAL_CONFIG_ENV
    # no configuration for other presets
    [aws_side] = apply(runtime(harness.endpoint("ep", label="ep")), pod)["spec"]["initContainers"]
    assert "--credential-config" not in aws_side["args"] and set(env_of(aws_side)) == {injection.CA_ENV}


def test_explicit_keys_win_over_the_preset() -> None:
    document = endpoint(
        "azure",
        audience="api://AzureADTokenExchangeUSGov",
        token={"algorithm": "ES256"},
        injector={
            "label": "ep",
            "token_environment_variable_name": "MY_TOKEN_FILE",
            "extraEnv": {"AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us/", "EXTRA": "1"},
        },
        azure={"tenantId": TENANT, "authorityHost": "https://login.chinacloudapi.cn/"},
    )
    parsed = config.Endpoint.model_validate(document)
    assert parsed.audience == "api://AzureADTokenExchangeUSGov" and parsed.token.algorithm == "ES256"
    assert injected(document, "client") == {
        "MY_TOKEN_FILE": TOKEN,
        "AZURE_CLIENT_ID": "client",  # not given: the preset's
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us/",  # extraEnv beats azure.authorityHost
        "AZURE_TENANT_ID": TENANT,
        "EXTRA": "1",
    }
    aws = endpoint("aws", injector={"label": "ep", "extra_env": {"AWS_STS_REGIONAL_ENDPOINTS": "legacy"}})
    assert injected(aws)["AWS_STS_REGIONAL_ENDPOINTS"] == "legacy"


def test_the_seeds_layout_is_the_aws_preset_without_choosing_its_audience() -> None:
    seed = harness.endpoint("ep", label="ep", audience="sts.aws.com")
    assert seed.preset == "aws" and seed.audience == "sts.aws.com"
    assert seed.injector is not None and seed.injector.extra_env == {"AWS_STS_REGIONAL_ENDPOINTS": "regional"}
    document = seed.model_dump(by_alias=True)
    del document["audience"], document["preset"]
    with pytest.raises(pydantic.ValidationError, match="audience"):
        config.Endpoint.model_validate(document)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (endpoint("gcp"), "preset gcp needs gcp.provider"),
        (endpoint("aws", azure={"tenantId": TENANT}), "azure: settings apply only with preset: azure"),
        (endpoint("gcp", gcp={"provider": "pools/p"}), "is not a provider resource name"),
        (endpoint("vault"), "audience"),  # no address: nothing to default the audience to
        (endpoint("generic"), "audience"),
    ],
)
def test_preset_refusals(document: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        config.Endpoint.model_validate(document)


@pytest.mark.parametrize("preset", ["aws", "azure", "gcp", "vault", "generic"])
def test_a_preset_endpoint_reads_back_the_same_from_the_runtime_config(preset: str) -> None:
    extras: dict[str, dict[str, Any]] = {
        "gcp": {"gcp": {"provider": PROVIDER}},
        "vault": {"vault": {"address": "https://vault.example.com"}},
        "generic": {
            "audience": "x",
            "injector": {
                "label": "ep",
                "token_environment_variable_name": "T",
                "label_value_environment_variable_name": "V",
            },
        },
    }
    parsed = config.Endpoint.model_validate(endpoint(preset, **extras.get(preset, {})))
    assert config.Endpoint.model_validate_json(parsed.model_dump_json(by_alias=True)) == parsed


# -- the JSON Schema --------------------------------------------------------------------------


def schema_errors(sts: dict[str, Any]) -> list[str]:
    schema = json.loads((ROOT / "kube_sts" / "schemas" / "values.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(error.message for error in validator.iter_errors({"sts": sts}))


@pytest.mark.parametrize("example", sorted(p.parent.name for p in (ROOT / "examples").glob("*/values.yaml")))
def test_every_example_is_valid_by_the_schema(example: str) -> None:
    values = ruamel.yaml.YAML(typ="safe").load((ROOT / "examples" / example / "values.yaml").read_text())
    assert schema_errors(values["sts"]) == []


def test_the_schema_requires_what_no_preset_sets() -> None:
    assert schema_errors({"endpoints": [endpoint("aws")]}) == []
    assert schema_errors({"endpoints": [endpoint("vault", vault={"address": "https://v.example"})]}) == []
    assert schema_errors({"endpoints": [endpoint("vault")]}) == ["'audience' is a required property"]
    assert schema_errors({"endpoints": [endpoint("gcp")]}) == ["'gcp' is a required property"]
    assert schema_errors({"endpoints": [endpoint(None, audience="a")]}) == [
        "'label_value_environment_variable_name' is a required property",
        "'token_environment_variable_name' is a required property",
    ]
