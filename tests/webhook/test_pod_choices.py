"""Injection that covers real clusters: reinvocation after another webhook added a container,
per-Pod choices by annotation, and the role bound by the Pod's ServiceAccount. Every patch is
applied with jsonpatch and the result validated strictly. The webhook's own read of the
ServiceAccount is proven live through the real API server in tests/controlplane/
test_injection_cases.py; here, on the double, only its outage and what the request log shows
(one metadata read, none for a Pod refused first)."""

from __future__ import annotations

import base64
import copy
import json
import pathlib
from typing import Any

import jsonpatch
import pytest

from harness import apiserver
from harness import runtime as harness
from harness.reviews import ROLE, review_body, seed_pod
from kube_sts.runtime import config
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.webhook import admission as webhook
from kube_sts.runtime.webhook import injection
from tests.webhook.test_injection import CA, apply, env_of, runtime, two_endpoints, validate

MESH = {"name": "istio-proxy", "image": "istio/proxyv2", "args": ["proxy", "sidecar"]}
MESH_INIT = {"name": "istio-init", "image": "istio/proxyv2", "args": ["istio-iptables"]}
SA_ROLE = "arn:aws:iam::123456789012:role/bound-to-the-service-account"
TOKEN_MOUNT = {"name": "kube-sts-aws-token", "mountPath": "/var/run/secrets/kube-sts/aws", "readOnly": True}


def operations(rt: config.RuntimeConfig, pod: dict[str, Any], account: dict[str, str] | None = None) -> list[Any]:
    return injection.patch(rt, rt.endpoints, pod, CA, account).operations


def refused(rt: config.RuntimeConfig, pod: dict[str, Any], account: dict[str, str] | None = None) -> tuple[int, str]:
    with pytest.raises(injection.RefusedError) as caught:
        injection.patch(rt, rt.endpoints, pod, CA, account)
    return caught.value.code, caught.value.message


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]}


# -- reinvocation ------------------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(("field", "added"), [("containers", MESH), ("initContainers", MESH_INIT)])
def test_a_container_added_after_injection_gets_what_it_lacks_on_reinvocation(
    native: bool, field: str, added: dict[str, Any]
) -> None:
    rt = runtime(native=native)
    first = apply(rt, seed_pod())
    meshed = copy.deepcopy(first)
    meshed["spec"].setdefault(field, []).append(copy.deepcopy(added))  # another webhook ran after ours
    ops = operations(rt, meshed)
    index = len(meshed["spec"][field]) - 1
    # only adds, all of them into the added container: no second sidecar, volume or marker
    assert {op["op"] for op in ops} == {"add"}
    assert {op["path"].split("/")[3] for op in ops} == {str(index)}
    assert all(op["path"].startswith(f"/spec/{field}/{index}/") for op in ops)
    completed = apply(rt, meshed)
    validate(completed)
    mesh = completed["spec"][field][index]
    assert mesh["volumeMounts"] == [TOKEN_MOUNT]
    assert env_of(mesh) == {
        "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/kube-sts/aws/token",
        "AWS_ROLE_ARN": ROLE,
        "AWS_STS_REGIONAL_ENDPOINTS": "regional",
    }
    assert completed["metadata"]["annotations"] == first["metadata"]["annotations"]
    assert operations(rt, completed) == []  # idempotent: a complete Pod gets no patch


def test_reinvocation_keeps_what_the_added_container_sets_and_the_exclusions() -> None:
    rt = runtime()
    pod = seed_pod()
    pod["metadata"]["annotations"][injection.EXCLUDE_ANNOTATION] = "istio-proxy"
    first = apply(rt, pod)
    meshed = copy.deepcopy(first)
    meshed["spec"]["containers"].append(copy.deepcopy(MESH))
    assert operations(rt, meshed) == []  # excluded by name, even though it came later
    del meshed["metadata"]["annotations"][injection.EXCLUDE_ANNOTATION]
    meshed["spec"]["containers"][1]["env"] = [{"name": "AWS_ROLE_ARN", "value": "its-own"}]
    completed = apply(rt, meshed)
    validate(completed)
    assert env_of(completed["spec"]["containers"][1])["AWS_ROLE_ARN"] == "its-own"


def test_a_hand_set_marker_without_the_token_volume_gets_nothing() -> None:
    rt = runtime()
    pod = seed_pod()
    pod["metadata"]["annotations"][injection.MARKER_ANNOTATION] = "aws"
    assert operations(rt, pod) == []


@pytest.mark.parametrize("native", [True, False])
def test_one_endpoints_sidecar_never_gets_another_endpoints_token_or_variables(native: bool) -> None:
    aws, vault = two_endpoints()
    rt = runtime(aws, vault, native=native)
    pod = seed_pod()
    pod["metadata"]["labels"]["tremolo.io/vault-role"] = "true"
    pod["metadata"]["annotations"]["tremolo.io/vault-role"] = "reader"
    patched = apply(rt, apply(rt, pod, (aws,)), (vault,))  # one webhook per endpoint, in turn
    validate(patched)
    for name, container in containers(patched).items():
        if name.startswith("kube-sts-"):
            assert env_of(container) == {"KUBE_STS_CA": CA}, name
            assert all(m["mountPath"].startswith("/var/run/secrets/kube-sts") or "serviceaccount" in m["mountPath"]
                       for m in container["volumeMounts"])  # fmt: skip
            assert len(container["volumeMounts"]) == 3, name


# -- per-Pod choices -----------------------------------------------------------------------------


def two_container_pod() -> dict[str, Any]:
    pod = seed_pod()
    pod["spec"]["containers"].append({"name": "worker", "image": "busybox"})
    pod["spec"]["initContainers"] = [{"name": "setup", "image": "busybox"}]
    return pod


def test_include_annotation_injects_only_the_containers_it_lists() -> None:
    rt = runtime()
    pod = two_container_pod()
    pod["metadata"]["annotations"][injection.INCLUDE_ANNOTATION] = " worker , later"
    patched = apply(rt, pod)
    validate(patched)
    found = containers(patched)
    assert TOKEN_MOUNT in found["worker"]["volumeMounts"] and env_of(found["worker"])["AWS_ROLE_ARN"] == ROLE
    assert "volumeMounts" not in found["aws-cli"] and "AWS_ROLE_ARN" not in env_of(found["aws-cli"])
    assert "env" not in found["setup"]
    # a container the include list names, added later by another webhook, is completed on reinvocation
    patched["spec"]["containers"].append({"name": "later", "image": "busybox"})
    completed = apply(rt, patched)
    validate(completed)
    assert env_of(containers(completed)["later"])["AWS_ROLE_ARN"] == ROLE
    assert operations(rt, completed) == []


def test_include_and_exclude_together_are_refused() -> None:
    pod = two_container_pod()
    pod["metadata"]["annotations"][injection.INCLUDE_ANNOTATION] = "worker"
    pod["metadata"]["annotations"][injection.EXCLUDE_ANNOTATION] = "aws-cli"
    assert refused(runtime(), pod) == (
        422,
        "kube-sts: the Pod sets both kube-sts.tremolo.io/include-containers and "
        "kube-sts.tremolo.io/exclude-containers; set one of them (include: only the containers listed; "
        "exclude: all but those listed)",
    )


def test_annotation_keys_share_the_projects_domain_and_are_documented() -> None:
    keys = (
        config.MARKER_ANNOTATION,
        config.EXCLUDE_ANNOTATION,
        config.INCLUDE_ANNOTATION,
        config.LIFETIME_ANNOTATION,
    )
    assert all(key.startswith("kube-sts.tremolo.io/") for key in keys)
    assert config.LABEL_PREFIX == "tremolo.io/"
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("#### Per-Pod choices") :]
    for key in keys:
        assert f"| `{key}" in table, key
    assert config.EKS_ROLE_ANNOTATION in readme[readme.index("#### Bind the role to the ServiceAccount") :]


@pytest.mark.parametrize("value", ["600", "900", "15m", "1h", " 3600 "])
def test_token_lifetime_within_the_endpoints_bounds_is_admitted(value: str) -> None:
    rt = runtime()
    pod = seed_pod()
    pod["metadata"]["annotations"][config.LIFETIME_ANNOTATION] = value
    patched = apply(rt, pod)
    validate(patched)
    assert patched["metadata"]["annotations"][config.LIFETIME_ANNOTATION] == value


@pytest.mark.parametrize("value", ["599", "3601", "2h", "0", "-900", "soon", "", "1" * 40, "٩٠٠"])
def test_token_lifetime_outside_the_endpoints_bounds_is_refused(value: str) -> None:
    rt = runtime()
    assert rt.endpoints[0].token.lifetime == 3600
    pod = seed_pod()
    pod["metadata"]["annotations"][config.LIFETIME_ANNOTATION] = value
    shown = value if len(value) <= 32 else value[:32] + "..."
    assert refused(rt, pod) == (
        422,
        f"kube-sts: the annotation kube-sts.tremolo.io/token-lifetime is {shown!r}; write seconds or a duration "
        "such as '15m', from 600 to 3600 seconds (endpoint 'aws')",
    )


# -- the role bound by the ServiceAccount ---------------------------------------------------------


def sa_pod(annotation: str | None = None) -> dict[str, Any]:
    """The seed's Pod under ServiceAccount ``irsa``, labelled, with its own role annotation or none."""
    pod = seed_pod()
    pod["spec"]["serviceAccountName"] = "irsa"
    del pod["metadata"]["annotations"]["tremolo.io/aws-role"]
    if annotation is not None:
        pod["metadata"]["annotations"]["tremolo.io/aws-role"] = annotation
    return pod


@pytest.mark.parametrize("key", [config.EKS_ROLE_ANNOTATION, "tremolo.io/aws-role"])
def test_the_service_accounts_role_is_injected(key: str) -> None:
    rt = runtime()
    patched = apply_with(rt, sa_pod(), {key: SA_ROLE})
    validate(patched)
    assert env_of(patched["spec"]["containers"][0])["AWS_ROLE_ARN"] == SA_ROLE
    # without the ServiceAccount's binding the same Pod has no role: nothing is injected
    result = injection.patch(rt, rt.endpoints, sa_pod(), CA, {})
    assert result.operations == [] and "nor its ServiceAccount" in result.warnings[0]


def apply_with(rt: config.RuntimeConfig, pod: dict[str, Any], account: dict[str, str]) -> dict[str, Any]:
    ops = injection.patch(rt, rt.endpoints, pod, CA, account).operations
    assert {op["op"] for op in ops} == {"add"}
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, ops)
    assert injection.patch(rt, rt.endpoints, patched, CA, account).operations == []
    return patched


def test_our_key_on_the_service_account_wins_over_the_eks_key() -> None:
    account = {"tremolo.io/aws-role": SA_ROLE, config.EKS_ROLE_ANNOTATION: "arn:aws:iam::1:role/eks"}
    patched = apply_with(runtime(), sa_pod(), account)
    assert env_of(patched["spec"]["containers"][0])["AWS_ROLE_ARN"] == SA_ROLE


def test_a_pod_annotation_equal_to_the_service_accounts_role_is_admitted() -> None:
    patched = apply_with(runtime(), sa_pod(SA_ROLE), {config.EKS_ROLE_ANNOTATION: SA_ROLE})
    validate(patched)
    assert env_of(patched["spec"]["containers"][0])["AWS_ROLE_ARN"] == SA_ROLE


def test_a_pod_cannot_claim_a_role_its_service_account_is_not_bound_to() -> None:
    assert refused(runtime(), sa_pod(ROLE), {config.EKS_ROLE_ANNOTATION: SA_ROLE}) == (
        422,
        "kube-sts: the Pod's annotation tremolo.io/aws-role names another role than its ServiceAccount's "
        f"eks.amazonaws.com/role-arn ({SA_ROLE!r}); remove the Pod's annotation or make it equal",
    )


def test_the_eks_key_binds_aws_endpoints_only() -> None:
    aws, vault = two_endpoints()
    rt = runtime(aws, vault)
    pod = sa_pod()
    pod["metadata"]["labels"]["tremolo.io/vault-role"] = "true"
    result = injection.patch(rt, (vault,), pod, CA, {config.EKS_ROLE_ANNOTATION: SA_ROLE})
    assert result.operations == [] and "tremolo.io/vault-role" in result.warnings[0]
    patched = apply_with(rt, pod, {config.EKS_ROLE_ANNOTATION: SA_ROLE, "tremolo.io/vault-role": "reader"})
    validate(patched)
    env = env_of(patched["spec"]["containers"][0])
    assert (env["AWS_ROLE_ARN"], env["VAULT_ROLE"]) == (SA_ROLE, "reader")


# -- the webhook's ServiceAccount read, on the double: its outage and the request log ---------------


def run_review(
    api_server: apiserver.APIServer, keys: pathlib.Path, pod: dict[str, Any], namespace: str = "team"
) -> dict[str, Any]:
    """The webhook's answer for ``pod``, its ServiceAccount read from the double by the app's own reader."""
    rt = runtime()
    kube = kubeapi.KubeAPI.for_host(api_server.url, timeout=1.0)
    app = harness.make_app(rt, kube, keys)
    try:
        webhook.add_routes(app, rt, CA.encode, app.account_annotations)
        answer = harness.asgi_call(
            app, "POST", "/mutate/aws", {"content-type": "application/json"}, review_body(pod, namespace=namespace)
        )
        assert answer.status == 200, answer.body
        response: dict[str, Any] = answer.json()["response"]
        return response
    finally:
        app.executor.shutdown(wait=True)
        kube.close()


@pytest.fixture
def keys(tmp_path: pathlib.Path) -> pathlib.Path:
    harness.write_keyset(tmp_path, "aws", "RS256")
    return tmp_path


def patched_by(response: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    assert response["allowed"] is True, response
    result: dict[str, Any] = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    return result


def test_the_webhook_reads_the_service_account_once_as_metadata(
    api_server: apiserver.APIServer, keys: pathlib.Path
) -> None:
    """The request log's view; the live read and a binding that changes are proven through the real
    API server's admission in tests/controlplane/test_injection_cases.py."""
    api_server.add_service_account("team", "irsa", {config.EKS_ROLE_ANNOTATION: SA_ROLE})
    pod = sa_pod()
    patched = patched_by(run_review(api_server, keys, pod), pod)
    assert env_of(patched["spec"]["containers"][0])["AWS_ROLE_ARN"] == SA_ROLE
    [read] = api_server.requests_to("/api/v1/namespaces/team/serviceaccounts/irsa")
    assert read.method == "GET" and "PartialObjectMetadata" in read.headers["accept"]


def test_the_webhook_refuses_when_the_service_account_cannot_be_read(
    api_server: apiserver.APIServer, keys: pathlib.Path
) -> None:
    api_server.set_outage("error")
    response = run_review(api_server, keys, seed_pod())
    assert response["allowed"] is False and response["status"]["code"] == 503, response
    assert response["status"]["message"].startswith("kube-sts: cannot read the Pod's ServiceAccount 'default' (")


def test_a_pod_refused_for_its_shape_costs_no_api_call(api_server: apiserver.APIServer, keys: pathlib.Path) -> None:
    pod = seed_pod()
    pod["spec"]["containers"] = [{"name": f"c{i}", "image": "busybox"} for i in range(injection.MAX_CONTAINERS + 1)]
    response = run_review(api_server, keys, pod)
    assert response["allowed"] is False and response["status"]["code"] == 400
    assert api_server.requests_to("/api/v1/namespaces/team/serviceaccounts") == []


def test_a_missing_service_account_costs_one_read(api_server: apiserver.APIServer, keys: pathlib.Path) -> None:
    """The request log's view; that it binds nothing is proven with the real API server's 404 in
    tests/controlplane/test_injection_cases.py."""
    patched = patched_by(run_review(api_server, keys, seed_pod()), seed_pod())
    assert env_of(patched["spec"]["containers"][0])["AWS_ROLE_ARN"] == ROLE
    assert len(api_server.requests_to("/api/v1/namespaces/team/serviceaccounts/default")) == 1


def test_a_service_account_role_over_the_cap_is_refused() -> None:
    long_role = "arn:aws:iam::123456789012:role/" + "r" * injection.MAX_VALUE
    assert refused(runtime(), sa_pod(), {config.EKS_ROLE_ANNOTATION: long_role}) == (
        400,
        f"kube-sts: the ServiceAccount's annotation eks.amazonaws.com/role-arn is {len(long_role)} characters long; "
        f"at most {injection.MAX_VALUE} are accepted",
    )


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("serviceAccountName", 7, "a string"),
        ("serviceAccount", ["irsa"], "a string"),
        ("serviceAccountName", "a" * 254, "a name of at most 253 characters"),
    ],
)
def test_a_malformed_service_account_name_is_refused_before_any_read(
    api_server: apiserver.APIServer, keys: pathlib.Path, field: str, value: Any, expected: str
) -> None:
    pod = seed_pod()
    pod["spec"][field] = value
    response = run_review(api_server, keys, pod)
    message = f"kube-sts: the Pod is malformed: spec.{field} must be {expected}"
    assert response["status"] == {"code": 400, "message": message}
    assert api_server.requests_to("/api/v1/namespaces/team/serviceaccounts") == []
