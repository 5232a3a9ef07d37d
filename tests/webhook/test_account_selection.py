"""ServiceAccount selection (``injector.serviceAccountNamespaces``), IRSA compatible: in a listed
namespace an unlabelled Pod is injected when its ServiceAccount binds a role, and admitted
unchanged (outcome ``unbound``) when it does not; the opt-out labels; the ServiceAccount-level
token lifetime; the admission outcomes as counted in ``kube_sts_webhook_admissions_total``. Every
patch is applied with jsonpatch and the result validated strictly. Through the real API server
(the compiled selectors): tests/controlplane/test_injection_by_account.py."""

from __future__ import annotations

import base64
import copy
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jsonpatch
import pydantic
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import runtime as harness
from harness.reviews import review_body, seed_pod
from kube_sts.runtime import config
from kube_sts.runtime.http import messages as web
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.webhook import admission as webhook
from kube_sts.runtime.webhook import injection
from tests.webhook.test_injection import CA, env_of, runtime, validate

SA_ROLE = "arn:aws:iam::123456789012:role/bound-to-the-service-account"
TEAM = "team-a"


def selecting(*namespaces: str, **options: Any) -> config.Endpoint:
    endpoint = harness.endpoint(**options)
    document = endpoint.model_dump(by_alias=True)
    document["injector"]["serviceAccountNamespaces"] = list(namespaces)
    return config.Endpoint.model_validate(document)


def vault_endpoint(**injector: Any) -> config.Endpoint:
    """A Vault endpoint (not AWS: the EKS keys do not count for it) with these injector settings."""
    return config.Endpoint.model_validate(
        {
            "name": "vault",
            "preset": "vault",
            "path": "/vault",
            "azRules": [{"scope": "filter", "constraint": "(namespace=team-a)"}],
            "vault": {"address": "https://vault.example.com:8200"},
            "issuer": {"host": "sts.example.com", "keypair": "vault-keys"},
            "injector": {"label": "vault-role", **injector},
        }
    )


def unlabelled(namespace: str = TEAM) -> dict[str, Any]:
    """The seed's Pod as an IRSA workload has it: no label, no annotation of ours."""
    pod = seed_pod()
    pod["metadata"]["namespace"] = namespace
    pod["metadata"]["labels"] = {"app": "aws-test-python-simple"}
    pod["metadata"]["annotations"] = {}
    pod["spec"]["serviceAccountName"] = "irsa"
    return pod


def patch_of(
    rt: config.RuntimeConfig, pod: dict[str, Any], account: Mapping[str, str] | None, namespace: str = TEAM
) -> injection.Injection:
    return injection.patch(rt, rt.endpoints, pod, CA, account, namespace=namespace)


def applied(rt: config.RuntimeConfig, pod: dict[str, Any], account: Mapping[str, str] | None) -> dict[str, Any]:
    result = patch_of(rt, pod, account)
    assert result.operations and {op["op"] for op in result.operations} == {"add"}
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, result.operations)
    validate(patched)
    return patched


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("key", [config.EKS_ROLE_ANNOTATION, "tremolo.io/aws-role"])
def test_an_unlabelled_pod_whose_service_account_binds_a_role_is_injected(native: bool, key: str) -> None:
    rt = runtime(selecting(TEAM), native=native)
    patched = applied(rt, unlabelled(), {key: SA_ROLE})
    env = env_of(patched["spec"]["containers"][0])
    assert env["AWS_ROLE_ARN"] == SA_ROLE
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/var/run/secrets/kube-sts/aws/token"
    names = {c["name"] for c in patched["spec"]["initContainers"] + patched["spec"]["containers"]}
    assert names == ({"kube-sts-aws", "aws-cli"} if native else {"kube-sts-aws-init", "kube-sts-aws", "aws-cli"})
    assert patched["metadata"]["annotations"][config.MARKER_ANNOTATION] == "aws"
    # idempotent under reinvocation, as in label mode
    assert patch_of(rt, patched, {key: SA_ROLE}).operations == []


def test_an_unlabelled_pod_whose_service_account_binds_nothing_is_left_unchanged() -> None:
    rt = runtime(selecting(TEAM))
    for account in ({}, {config.EKS_ROLE_ANNOTATION: "  "}, {"other.example/role": SA_ROLE}):
        result = patch_of(rt, unlabelled(), account)
        assert (result.operations, result.warnings, result.unbound) == ([], [], ("aws",))
    # the Pod's own annotation does not select it: only the ServiceAccount does
    pod = unlabelled()
    pod["metadata"]["annotations"]["tremolo.io/aws-role"] = SA_ROLE
    assert patch_of(rt, pod, {}).unbound == ("aws",)


def test_only_listed_namespaces_select_by_service_account() -> None:
    rt = runtime(selecting(TEAM))
    result = patch_of(rt, unlabelled("team-b"), {config.EKS_ROLE_ANNOTATION: SA_ROLE}, namespace="team-b")
    assert (result.operations, result.unbound) == ([], ())
    # without the list (the default) nothing changes for unlabelled Pods
    default = runtime(harness.endpoint())
    assert patch_of(default, unlabelled(), {config.EKS_ROLE_ANNOTATION: SA_ROLE}).operations == []


def test_the_namespace_is_the_reviews_else_the_pods() -> None:
    rt = runtime(selecting(TEAM))
    pod = unlabelled("elsewhere")
    assert patch_of(rt, pod, {config.EKS_ROLE_ANNOTATION: SA_ROLE}, namespace=TEAM).operations
    del pod["metadata"]["namespace"]
    assert not patch_of(rt, pod, {config.EKS_ROLE_ANNOTATION: SA_ROLE}, namespace="elsewhere").operations
    pod["metadata"]["namespace"] = TEAM
    assert patch_of(rt, pod, {config.EKS_ROLE_ANNOTATION: SA_ROLE}, namespace="").operations


@pytest.mark.parametrize("label", [config.SKIP_LABEL, config.EKS_SKIP_LABEL])
def test_the_opt_out_labels_keep_a_pod_out(label: str) -> None:
    rt = runtime(selecting(TEAM))
    pod = unlabelled()
    pod["metadata"]["labels"][label] = "true"
    result = patch_of(rt, pod, {config.EKS_ROLE_ANNOTATION: SA_ROLE})
    assert (result.operations, result.unbound) == ([], ())


def test_the_eks_opt_out_label_counts_for_aws_endpoints_only() -> None:
    vault = vault_endpoint(serviceAccountNamespaces=[TEAM])
    assert vault.skip_labels == (config.SKIP_LABEL,)
    assert vault.account_role_keys == ("tremolo.io/vault-role",)
    rt = runtime(vault)
    pod = unlabelled()
    pod["metadata"]["labels"][config.EKS_SKIP_LABEL] = "true"
    patched = applied(rt, pod, {"tremolo.io/vault-role": "reader", config.EKS_ROLE_ANNOTATION: SA_ROLE})
    assert env_of(patched["spec"]["containers"][0])["VAULT_AUTH_ROLE"] == "reader"
    # the EKS role key binds nothing for a non-AWS endpoint
    assert patch_of(rt, unlabelled(), {config.EKS_ROLE_ANNOTATION: SA_ROLE}).unbound == ("vault",)


def test_a_labelled_pod_in_a_listed_namespace_keeps_label_mode() -> None:
    rt = runtime(selecting(TEAM))
    pod = seed_pod()
    pod["metadata"]["namespace"] = TEAM
    pod["metadata"]["labels"][config.SKIP_LABEL] = "true"  # opts out of ServiceAccount selection only
    patched = jsonpatch.apply_patch(pod, patch_of(rt, pod, {}).operations)
    validate(patched)
    assert (
        env_of(patched["spec"]["containers"][0])["AWS_ROLE_ARN"]
        == seed_pod()["metadata"]["annotations"]["tremolo.io/aws-role"]
    )


def test_a_pod_naming_another_role_than_its_service_account_is_refused() -> None:
    rt = runtime(selecting(TEAM))
    pod = unlabelled()
    pod["metadata"]["annotations"]["tremolo.io/aws-role"] = "arn:aws:iam::123456789012:role/other"
    with pytest.raises(injection.RefusedError) as caught:
        patch_of(rt, pod, {config.EKS_ROLE_ANNOTATION: SA_ROLE})
    assert caught.value.code == 422 and "names another role than its ServiceAccount's" in caught.value.message


# -- the ServiceAccount's token lifetime ----------------------------------------------------------


@pytest.mark.parametrize(
    ("account", "pod_value", "seconds"),
    [
        ({config.LIFETIME_ANNOTATION: "15m"}, None, 900),
        ({config.EKS_LIFETIME_ANNOTATION: "1200"}, None, 1200),
        ({config.LIFETIME_ANNOTATION: "900", config.EKS_LIFETIME_ANNOTATION: "1200"}, None, 900),
        ({config.EKS_LIFETIME_ANNOTATION: "86400"}, "20m", 1200),  # the Pod's own wins
        ({}, None, 3600),
    ],
)
def test_the_service_accounts_token_lifetime(account: dict[str, str], pod_value: str | None, seconds: int) -> None:
    endpoint = selecting(TEAM)
    assert endpoint.lifetime_for(pod_value, account) == seconds


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (config.EKS_LIFETIME_ANNOTATION, "86400"),  # the EKS default, above this endpoint's 3600
        (config.EKS_LIFETIME_ANNOTATION, "599"),
        (config.LIFETIME_ANNOTATION, "soon"),
    ],
)
def test_a_service_account_lifetime_out_of_bounds_is_refused_at_admission(key: str, value: str) -> None:
    rt = runtime(selecting(TEAM))
    # selected by its ServiceAccount, and selected by its label (the Pod's annotation the role)
    for pod, account in ((unlabelled(), {config.EKS_ROLE_ANNOTATION: SA_ROLE, key: value}), (seed_pod(), {key: value})):
        with pytest.raises(injection.RefusedError) as caught:
            patch_of(rt, pod, account, namespace=pod["metadata"]["namespace"])
        assert caught.value.code == 422
        assert caught.value.message == (
            f"kube-sts: the ServiceAccount's annotation {key} is {value!r}; write seconds or a duration such as "
            "'15m', from 600 to 3600 seconds (endpoint 'aws')"
        )
    # a valid Pod annotation overrides the ServiceAccount's, so the Pod is admitted
    pod = unlabelled()
    pod["metadata"]["annotations"][config.LIFETIME_ANNOTATION] = "10m"
    assert patch_of(rt, pod, {config.EKS_ROLE_ANNOTATION: SA_ROLE, key: value}).operations


def test_the_eks_lifetime_key_counts_for_aws_endpoints_only() -> None:
    vault = vault_endpoint()
    assert vault.lifetime_for(None, {config.EKS_LIFETIME_ANNOTATION: "86400"}) == 3600
    assert vault.lifetime_for(None, {config.LIFETIME_ANNOTATION: "700"}) == 700


# -- the configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespaces", "message"),
    [
        (["kube-system"], "'kube-system': the webhook never selects Pods of kube-system"),
        ([TEAM, TEAM], "'team-a' listed more than once; list each namespace once"),
        (["Team_A"], "is not a DNS label"),
    ],
)
def test_unselectable_namespaces_are_refused(namespaces: list[str], message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        selecting(*namespaces)
    assert message in str(caught.value)


def test_the_runtimes_own_namespace_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        harness.runtime_config(selecting("kube-sts"))
    assert "'kube-sts' is the runtime's own namespace" in str(caught.value)


def test_label_mode_config_json_is_unchanged() -> None:
    """Without the list, the rendered config.json carries no new key (existing manifests stay byte-identical)."""
    assert "serviceAccountNamespaces" not in harness.endpoint().model_dump(by_alias=True)["injector"]
    assert selecting(TEAM).model_dump(by_alias=True)["injector"]["serviceAccountNamespaces"] == (TEAM,)
    assert config.Endpoint.model_validate(selecting(TEAM).model_dump(by_alias=True)) == selecting(TEAM)


# -- the webhook route: the ServiceAccount read, and the outcomes counted ------------------------------


class Accounts:
    """ServiceAccount annotations by (namespace, name), as ``server.App.account_annotations`` answers."""

    def __init__(self, held: dict[tuple[str, str], dict[str, str]]) -> None:
        self.held = held
        self.reads: list[tuple[str, str]] = []

    async def __call__(self, namespace: str, name: str) -> Mapping[str, str]:
        self.reads.append((namespace, name))
        return self.held.get((namespace, name), {})


def outcomes(app: Any) -> dict[str, float]:
    answer = harness.asgi_call(app, "GET", "/metrics", {}, b"")
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            if sample.name == "kube_sts_webhook_admissions_total":
                found[sample.labels["outcome"]] = sample.value
    return found


def test_each_outcome_is_counted(tmp_path: pathlib.Path) -> None:
    harness.write_keyset(tmp_path, "aws", "RS256")
    rt = runtime(selecting(TEAM))
    accounts = Accounts({(TEAM, "irsa"): {config.EKS_ROLE_ANNOTATION: SA_ROLE}, (TEAM, "plain"): {}})
    kube = kubeapi.KubeAPI.for_host("https://127.0.0.1:9", timeout=0.2)  # never called: accounts answers
    app = harness.make_app(rt, kube, tmp_path)
    try:
        webhook.add_routes(app, rt, CA.encode, accounts)

        def post(pod: dict[str, Any], namespace: str = TEAM) -> dict[str, Any]:
            answer = harness.asgi_call(
                app, "POST", "/mutate/aws", {"content-type": "application/json"}, review_body(pod, namespace=namespace)
            )
            assert answer.status == 200, answer.body
            response: dict[str, Any] = answer.json()["response"]
            return response

        injected = post(unlabelled())
        patched = jsonpatch.apply_patch(unlabelled(), json.loads(base64.b64decode(injected["patch"])))
        validate(patched)
        plain = unlabelled()
        plain["spec"]["serviceAccountName"] = "plain"
        unbound = post(plain)
        assert unbound == {"uid": unbound["uid"], "allowed": True}  # no patch, no warning
        unchanged = copy.deepcopy(plain)
        unchanged["metadata"]["namespace"] = "default"
        assert "patch" not in post(unchanged, namespace="default")
        conflicting = unlabelled()
        conflicting["metadata"]["annotations"]["tremolo.io/aws-role"] = "arn:aws:iam::123456789012:role/other"
        refused = post(conflicting)
        assert refused["allowed"] is False and refused["status"]["code"] == 422
        oversized = unlabelled()
        oversized["spec"]["containers"] *= injection.MAX_CONTAINERS + 1
        assert post(oversized)["status"]["code"] == 400  # refused before any read
        assert outcomes(app) == {"injected": 1.0, "unbound": 1.0, "unchanged": 1.0, "refused": 2.0}
        # read for the Pods selected by their namespace only: not in "default", not for the oversized Pod
        assert accounts.reads == [(TEAM, "irsa"), (TEAM, "plain"), (TEAM, "irsa")]
    finally:
        app.executor.shutdown(wait=True)
        kube.close()


def test_a_pod_selected_by_its_namespace_is_refused_when_its_service_account_cannot_be_read(
    tmp_path: pathlib.Path,
) -> None:
    """Fail closed: admitting it could start a Pod whose ServiceAccount binds a role without its identity."""
    harness.write_keyset(tmp_path, "aws", "RS256")
    rt = runtime(selecting(TEAM))

    async def down(namespace: str, name: str) -> Mapping[str, str]:
        raise web.HTTPError(503, "apiserver_unavailable", "the API server did not answer")

    kube = kubeapi.KubeAPI.for_host("https://127.0.0.1:9", timeout=0.2)
    app = harness.make_app(rt, kube, tmp_path)
    try:
        webhook.add_routes(app, rt, CA.encode, down)
        answer = harness.asgi_call(
            app, "POST", "/mutate/aws", {"content-type": "application/json"}, review_body(unlabelled(), namespace=TEAM)
        )
        response = answer.json()["response"]
        assert (response["allowed"], response["status"]["code"]) == (False, 503)
        assert response["status"]["message"].startswith("kube-sts: cannot read the Pod's ServiceAccount 'irsa' (")
        assert outcomes(app) == {"refused": 1.0}
    finally:
        app.executor.shutdown(wait=True)
        kube.close()
