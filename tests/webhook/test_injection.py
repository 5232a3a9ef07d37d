"""The admission webhook's patch, applied with a real JSONPatch library and validated strictly."""

from __future__ import annotations

import base64
import copy
import importlib.metadata
import json
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from harness import runtime as harness
from harness.reviews import ROLE, review_body, seed_pod
from kube_sts.runtime import config, sidecar
from kube_sts.runtime.http import messages as web
from kube_sts.runtime.webhook import admission as webhook
from kube_sts.runtime.webhook import injection
from tests import openunison

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
VERSIONS = ("1.29", "1.31", "1.33")


def runtime(*endpoints: config.Endpoint, native: bool = True) -> config.RuntimeConfig:
    base = harness.runtime_config(*(endpoints or (harness.endpoint(),)))
    return base.model_copy(
        update={
            "native_sidecars": native,
            "sidecar_resources": {"requests": {"cpu": "10m", "memory": "24Mi"}, "limits": {"memory": "48Mi"}},
        }
    )


def apply(
    rt: config.RuntimeConfig, pod: dict[str, Any], endpoints: tuple[config.Endpoint, ...] | None = None
) -> dict[str, Any]:
    result = injection.patch(rt, endpoints or rt.endpoints, pod, CA)
    assert all(op["op"] == "add" for op in result.operations)
    for op in result.operations:  # a list is only ever added where the Pod has none
        parts = op["path"].split("/")[1:]
        if parts[-1] in ("containers", "initContainers", "volumes", "env", "volumeMounts"):
            target: Any = pod
            for part in parts:
                target = target.get(part) if isinstance(target, dict) else None
            assert target is None, op["path"]
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, result.operations)
    return patched


def validate(pod: dict[str, Any]) -> None:
    for version in VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v.get("value", "") for v in container.get("env", [])}


@pytest.mark.parametrize("native", [True, False])
def test_seed_pod_is_injected_and_valid(native: bool) -> None:
    rt = runtime(native=native)
    pod = seed_pod()
    patched = apply(rt, pod)
    validate(patched)
    app = patched["spec"]["containers"][0]
    env = env_of(app)
    assert env["AWS_REGION"] == "us-east-1"
    assert env["AWS_ROLE_ARN"] == ROLE
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/var/run/secrets/kube-sts/aws/token"
    assert env["AWS_STS_REGIONAL_ENDPOINTS"] == "regional"
    assert {"name": "kube-sts-aws-token", "mountPath": "/var/run/secrets/kube-sts/aws", "readOnly": True} in app[
        "volumeMounts"
    ]
    inits = patched["spec"]["initContainers"]
    if native:
        assert [c["name"] for c in inits] == ["kube-sts-aws"]
        assert inits[0]["restartPolicy"] == "Always"
        assert "--check" in inits[0]["startupProbe"]["exec"]["command"]
        assert len(patched["spec"]["containers"]) == 1
    else:
        assert [c["name"] for c in inits] == ["kube-sts-aws-init"]
        assert "--once" in inits[0]["args"] and "restartPolicy" not in inits[0]
        assert [c["name"] for c in patched["spec"]["containers"]] == ["aws-cli", "kube-sts-aws"]
    side = next(c for c in inits + patched["spec"]["containers"] if c["name"] == "kube-sts-aws")
    assert env_of(side) == {"KUBE_STS_CA": CA}
    security = side["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["capabilities"] == {"drop": ["ALL"]} and security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert side["resources"]["requests"]["memory"] == "24Mi"
    # the ServiceAccount token volume is mounted only into the sidecar(s)
    projected = [v for v in patched["spec"]["volumes"] if "projected" in v]
    assert projected[0]["projected"]["sources"][0]["serviceAccountToken"]["audience"] == harness.STS_AUDIENCE
    mounting = [
        c["name"]
        for c in inits + patched["spec"]["containers"]
        if any(m["name"] == projected[0]["name"] for m in c.get("volumeMounts", []))
    ]
    assert all(name.startswith("kube-sts-aws") for name in mounting) and mounting
    assert patched["spec"]["volumes"][0]["emptyDir"]["medium"] == "Memory"
    assert patched["metadata"]["annotations"][injection.MARKER_ANNOTATION] == "aws"
    # idempotent
    assert injection.patch(rt, rt.endpoints, patched, CA).operations == []


def test_label_key_is_escaped_and_marker_added_to_absent_annotations() -> None:
    ep = harness.endpoint()
    rt = runtime(ep)
    pod = seed_pod()
    result = injection.patch(rt, rt.endpoints, pod, CA)
    assert {
        "op": "add",
        "path": "/metadata/annotations/kube-sts.tremolo.io~1injected",
        "value": "aws",
    } in result.operations
    assert injection.escape("a~b/c") == "a~0b~1c"


def test_no_annotation_means_no_patch_and_a_warning() -> None:
    rt = runtime()
    for given in ({}, {"tremolo.io/aws-role": "  "}):
        pod = seed_pod()
        pod["metadata"]["annotations"] = given
        result = injection.patch(rt, rt.endpoints, pod, CA)
        assert result.operations == []
        assert "tremolo.io/aws-role" in result.warnings[0]


def test_unlabelled_pod_is_untouched() -> None:
    rt = runtime()
    pod = seed_pod()
    del pod["metadata"]["labels"]["tremolo.io/aws-role"]
    assert injection.patch(rt, rt.endpoints, pod, CA) == injection.Injection([], [])


def test_existing_variables_are_kept_and_containers_without_env_get_one() -> None:
    rt = runtime()
    pod = seed_pod()
    pod["spec"]["containers"][0]["env"].append({"name": "AWS_ROLE_ARN", "value": "mine"})
    pod["spec"]["containers"].append({"name": "second", "image": "busybox"})
    pod["spec"]["initContainers"] = [{"name": "setup", "image": "busybox"}]
    patched = apply(rt, pod)
    validate(patched)
    assert env_of(patched["spec"]["containers"][0])["AWS_ROLE_ARN"] == "mine"
    assert env_of(patched["spec"]["containers"][1])["AWS_ROLE_ARN"] == ROLE
    inits = patched["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["kube-sts-aws", "setup"]
    assert env_of(inits[1])["AWS_WEB_IDENTITY_TOKEN_FILE"].endswith("/aws/token")


def test_opt_out_annotation() -> None:
    rt = runtime()
    pod = seed_pod()
    pod["spec"]["containers"].append({"name": "proxy", "image": "envoy"})
    pod["metadata"]["annotations"][injection.EXCLUDE_ANNOTATION] = "proxy"
    patched = apply(rt, pod)
    validate(patched)
    proxy = patched["spec"]["containers"][1]
    assert "env" not in proxy and "volumeMounts" not in proxy
    assert "AWS_ROLE_ARN" in env_of(patched["spec"]["containers"][0])


def two_endpoints() -> tuple[config.Endpoint, config.Endpoint]:
    aws = harness.endpoint("aws")
    other = harness.endpoint("vault", label="vault-role").model_copy()
    injector = other.injector
    assert injector is not None
    other = other.model_copy(
        update={
            "injector": injector.model_copy(
                update={
                    "token_environment_variable_name": "VAULT_JWT_FILE",
                    "label_value_environment_variable_name": "VAULT_ROLE",
                    "extra_env": {"VAULT_ADDR": "https://vault.example"},
                }
            )
        }
    )
    return aws, other


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("sequential", [True, False])
def test_several_endpoints_on_one_pod(native: bool, sequential: bool) -> None:
    aws, vault = two_endpoints()
    rt = runtime(aws, vault, native=native)
    pod = seed_pod()
    pod["metadata"]["labels"]["tremolo.io/vault-role"] = "true"
    pod["metadata"]["annotations"]["tremolo.io/vault-role"] = "reader"
    pod["spec"]["initContainers"] = [{"name": "setup", "image": "busybox"}]
    # sequential: one webhook per endpoint, as the API server calls them
    patched = apply(rt, apply(rt, pod, (aws,)), (vault,)) if sequential else apply(rt, pod)
    validate(patched)
    names = [v["name"] for v in patched["spec"]["volumes"]]
    assert len(names) == len(set(names)) == 4
    for container in (patched["spec"]["containers"][0], patched["spec"]["initContainers"][-1]):
        env = env_of(container)
        assert env["VAULT_ROLE"] == "reader" and env["VAULT_ADDR"] == "https://vault.example"
        assert env["AWS_ROLE_ARN"] == ROLE and "AWS_STS_REGIONAL_ENDPOINTS" in env
        assert "VAULT_STS_REGIONAL_ENDPOINTS" not in env
        assert len(container["volumeMounts"]) == 2
    assert patched["spec"]["initContainers"][-1]["name"] == "setup"
    assert patched["metadata"]["annotations"][injection.MARKER_ANNOTATION] == "aws,vault"
    assert injection.patch(rt, rt.endpoints, patched, CA).operations == []


def test_sidecar_user_follows_a_non_root_pod_user() -> None:
    rt = runtime()
    pod = seed_pod()
    pod["spec"]["securityContext"] = {"runAsUser": 1234, "fsGroup": 2000}
    patched = apply(rt, pod)
    validate(patched)
    assert patched["spec"]["initContainers"][0]["securityContext"]["runAsUser"] == 1234


def test_review_answer() -> None:
    rt = runtime()
    answer = webhook.review(rt, rt.endpoints[0], review_body(seed_pod()), CA)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002" and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(seed_pod(), json.loads(base64.b64decode(response["patch"])))
    validate(patched)
    pod = seed_pod()
    pod["metadata"]["annotations"] = {}
    response = webhook.review(rt, rt.endpoints[0], review_body(pod), CA)["response"]
    assert "patch" not in response and response["warnings"] and response["allowed"] is True


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}).encode(),
        review_body(seed_pod(), uid=""),
        review_body(seed_pod(), kind={"group": "apps", "version": "v1", "kind": "Deployment"}),
        review_body(None),
        json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
    ],
)
def test_malformed_reviews_are_400(body: bytes) -> None:
    rt = runtime()
    with pytest.raises(web.HTTPError) as caught:
        webhook.review(rt, rt.endpoints[0], body, CA)
    assert caught.value.status == 400 and caught.value.message


def test_injected_commands_exist_in_the_package() -> None:
    """Every command and option the patch references is a console script and an option it parses."""
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["kube-sts-sidecar"] == "kube_sts.runtime.sidecar:main"
    options = {s for action in sidecar._parser()._actions for s in action.option_strings}
    for native in (True, False):
        rt = runtime(native=native)
        patched = apply(rt, seed_pod())
        for container in patched["spec"]["initContainers"] + patched["spec"]["containers"][1:]:
            commands = [container["command"] + container["args"]]
            for probe in ("startupProbe", "readinessProbe"):
                if probe in container:
                    commands.append(container[probe]["exec"]["command"])
            for command in commands:
                assert command[0] in scripts
                used = {arg for arg in command[1:] if arg.startswith("--")}
                assert used <= options, used - options
                sidecar._parser().parse_args(command[1:])  # SystemExit on an unknown option


def test_patch_does_not_mutate_its_input() -> None:
    rt = runtime()
    pod = seed_pod()
    before = copy.deepcopy(pod)
    injection.patch(rt, rt.endpoints, pod, CA)
    assert pod == before


@pytest.mark.parametrize("restart_policy", ["Never", "OnFailure"])
def test_pods_that_run_to_completion_get_no_sidecar_container_without_native_sidecars(restart_policy: str) -> None:
    rt = runtime(native=False)
    pod = seed_pod()
    pod["spec"]["restartPolicy"] = restart_policy
    result = injection.patch(rt, rt.endpoints, pod, CA)
    patched = apply(rt, pod)
    validate(patched)
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["kube-sts-aws-init"]
    assert [c["name"] for c in patched["spec"]["containers"]] == ["aws-cli"]
    assert (
        env_of(patched["spec"]["containers"][0])["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/var/run/secrets/kube-sts/aws/token"
    )
    [warning] = result.warnings
    assert "runs to completion" in warning and "not refreshed" in warning
    assert injection.patch(rt, rt.endpoints, patched, CA).operations == []


def test_native_sidecars_serve_pods_that_run_to_completion() -> None:
    rt = runtime(native=True)
    pod = seed_pod()
    pod["spec"]["restartPolicy"] = "Never"
    result = injection.patch(rt, rt.endpoints, pod, CA)
    patched = apply(rt, pod)
    validate(patched)
    [side] = patched["spec"]["initContainers"]
    assert side["restartPolicy"] == "Always" and result.warnings == []


def openunison_endpoint(token_path: str = "/tokens/token.jwt") -> config.Endpoint:
    document = harness.endpoint().model_dump(by_alias=True)
    document["injector"]["tokenPath"] = token_path
    return config.Endpoint.model_validate(document)


@pytest.mark.parametrize("native", [True, False])
def test_token_path_is_set_per_endpoint(native: bool) -> None:
    """OpenUnison's Pods read /tokens/token.jwt: the variable, the mounts, the sidecar's file and
    its probes all follow the endpoint's tokenPath."""
    rt = runtime(openunison_endpoint(), native=native)
    patched = apply(rt, seed_pod())
    validate(patched)
    [app] = [c for c in patched["spec"]["containers"] if c["name"] == "aws-cli"]
    assert env_of(app)["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/tokens/token.jwt"
    assert {"name": "kube-sts-aws-token", "mountPath": "/tokens", "readOnly": True} in app["volumeMounts"]
    sidecars = [c for c in patched["spec"]["initContainers"] + patched["spec"]["containers"] if c["name"] != "aws-cli"]
    assert sidecars and len(sidecars) == (1 if native else 2)
    for side in sidecars:
        assert side["args"][side["args"].index("--token-file") + 1] == "/tokens/token.jwt"
        assert {"name": "kube-sts-aws-token", "mountPath": "/tokens"} in side["volumeMounts"]
        for probe in ("startupProbe", "readinessProbe"):
            if probe in side:
                assert side[probe]["exec"]["command"][-2:] == ["--token-file", "/tokens/token.jwt"]
        assert sidecar.parse_arguments(side["args"]).token_file == "/tokens/token.jwt"
    assert not any(
        m["mountPath"].startswith(injection.TOKEN_ROOT + "/")
        for c in patched["spec"]["initContainers"] + patched["spec"]["containers"]
        for m in c.get("volumeMounts", [])
    )
    assert injection.patch(rt, rt.endpoints, patched, CA).operations == []


@pytest.mark.parametrize(
    "token_path",
    [
        "tokens/token.jwt",
        "/token.jwt",
        "/tokens/",
        "/tokens/../etc/token",
        "/tokens/./token",
        "/tokens//token",
        "/etc/token",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/var/run/secrets/kube-sts-sa/aws/token",
        "/tmp/token",
        "/tokens/a b",
    ],
)
def test_token_path_must_be_a_safe_file_in_a_folder_of_its_own(token_path: str) -> None:
    with pytest.raises(ValueError, match=r"tokenPath|token_path"):
        openunison_endpoint(token_path)


@pytest.mark.parametrize("token_path", ["/tokens/token.jwt", None])
def test_a_pod_openunison_injected_first_keeps_its_mount_and_variables(token_path: str | None) -> None:
    """The hand-over (README, "Migrating from OpenUnison", step 4): OpenUnison's webhook sorts
    first and has injected the Pod; kube-sts adds no second mount at ``/tokens`` (the API server
    would refuse the Pod) and no variable the containers already set, so they keep reading
    OpenUnison's token. The control-plane tier runs both webhooks (test_openunison_handover.py)."""
    endpoint = openunison_endpoint(token_path) if token_path else harness.endpoint()
    rt = runtime(endpoint)
    patches = openunison.inject(seed_pod())
    assert patches is not None
    pod = jsonpatch.apply_patch(seed_pod(), patches)
    validate(pod)
    patched = apply(rt, pod)
    validate(patched)
    spec = patched["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["kube-sts-aws", openunison.SIDECAR]
    for container in spec["initContainers"] + spec["containers"]:
        paths = [m["mountPath"] for m in container["volumeMounts"]]
        assert len(paths) == len(set(paths)), container["name"]
        names = [v["name"] for v in container.get("env", [])]
        assert len(names) == len(set(names)), container["name"]
    [app] = spec["containers"]
    assert {"name": openunison.VOLUME, "mountPath": "/tokens", "readOnly": True} in app["volumeMounts"]
    assert env_of(app)["AWS_WEB_IDENTITY_TOKEN_FILE"] == openunison.TOKEN_FILE
    assert ("kube-sts-aws-token" in {m["name"] for m in app["volumeMounts"]}) is (token_path is None)
    assert injection.patch(rt, rt.endpoints, patched, CA).operations == []
