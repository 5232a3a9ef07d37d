"""Pods created through the real API server reach our webhook through the compiled
MutatingWebhookConfiguration (Service ClusterIP on loopback), and the stored Pods show the result."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from harness.reviews import ROLE, seed_pod
from kube_sts.runtime import config, server
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.webhook import injection
from tests.controlplane import cluster, deployment
from tests.webhook.test_injection import CA

SIDECAR = "kube-sts-aws"
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def create(plane: cluster.ControlPlane, namespace: str, pod: dict[str, Any], *, check: bool = True) -> Any:
    """``kubectl create`` of ``pod`` in ``namespace``: the stored Pod, or the failed command."""
    answer = plane.kubectl(
        "create", f"--namespace={namespace}", "-o", "json", "-f", "-", input=json.dumps(pod), check=check
    )
    return json.loads(answer.stdout) if answer.returncode == 0 else answer


def injected(stored: dict[str, Any]) -> bool:
    names = [c["name"] for c in stored["spec"].get("initContainers", []) + stored["spec"]["containers"]]
    return SIDECAR in names


def named(pod: dict[str, Any], namespace: str, name: str) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["metadata"].pop("generateName", None)
    pod["metadata"].update({"name": name, "namespace": namespace})
    return pod


def restricted(pod: dict[str, Any]) -> dict[str, Any]:
    """``pod`` with the security settings Pod Security "restricted" requires of it."""
    pod["spec"]["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    pod["spec"]["containers"][0]["securityContext"] = RESTRICTED_CONTAINER
    return pod


def test_seed_pod_is_injected_through_the_compiled_webhook(runtime: deployment.Runtime, namespace: str) -> None:
    stored = create(runtime.deployment.plane, namespace, named(seed_pod(), namespace, "seed"))
    [side] = [c for c in stored["spec"]["initContainers"] if c["name"] == SIDECAR]
    assert side["restartPolicy"] == "Always" and side["startupProbe"]["exec"]["command"]
    [app] = stored["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["AWS_ROLE_ARN"] == ROLE and env["AWS_REGION"] == "us-east-1"
    token_file = env["AWS_WEB_IDENTITY_TOKEN_FILE"]
    mounts = {m["mountPath"]: m for m in app["volumeMounts"]}
    assert any(token_file.startswith(path + "/") and mount.get("readOnly") for path, mount in mounts.items())
    volumes = {v["name"]: v for v in stored["spec"]["volumes"]}
    projected = [v for v in volumes.values() if "projected" in v]
    audiences = {
        source["serviceAccountToken"]["audience"]
        for volume in projected
        for source in volume["projected"]["sources"]
        if "serviceAccountToken" in source and "audience" in source["serviceAccountToken"]
    }
    assert runtime.config["stsAudience"] in audiences
    # the API server's own ServiceAccount admission ran too: the application keeps its API token,
    # the sidecar holds none (its own STS-audience token is mounted at that path)
    [api_volume] = [name for name in volumes if name.startswith("kube-api-access-")]
    assert api_volume in {m["name"] for m in app["volumeMounts"]}
    sidecar_mounts = {m["mountPath"]: m["name"] for m in side["volumeMounts"]}
    assert api_volume not in sidecar_mounts.values()
    assert sidecar_mounts["/var/run/secrets/kubernetes.io/serviceaccount"] == "kube-sts-aws-sa"


def test_restricted_pod_stays_restricted_after_injection(runtime: deployment.Runtime, namespace: str) -> None:
    plane = runtime.deployment.plane
    enforcing = f"{namespace}-r"
    plane.create_namespace(
        enforcing,
        {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"},
    )
    pod = restricted(named(seed_pod(), enforcing, "restricted"))
    stored = create(plane, enforcing, pod)
    assert injected(stored)
    # the same Pod without its restricted settings is refused by Pod Security admission: the
    # namespace really enforces "restricted"
    pod["metadata"]["name"] = "not-restricted"
    del pod["spec"]["containers"][0]["securityContext"]
    refused = create(plane, enforcing, pod, check=False)
    assert "violates PodSecurity" in refused.stderr


def test_pod_created_like_a_replicaset_creates_it(runtime: deployment.Runtime, namespace: str) -> None:
    pod = seed_pod()
    del pod["metadata"]["namespace"]  # generateName only; the namespace is in the request alone
    stored = create(runtime.deployment.plane, namespace, pod)
    assert stored["metadata"]["name"].startswith("aws-test-python-simple-")
    assert stored["metadata"]["namespace"] == namespace
    assert injected(stored)


def test_unlabelled_pod_never_reaches_the_webhook(runtime: deployment.Runtime, namespace: str) -> None:
    pod = named(seed_pod(), namespace, "unlabelled")
    del pod["metadata"]["labels"]["tremolo.io/aws-role"]
    before = runtime.admission_reviews()
    stored = create(runtime.deployment.plane, namespace, pod)
    assert not injected(stored)
    assert runtime.admission_reviews() == before
    # the labelled Pod is reviewed once: the API server re-runs its own ServiceAccount admission
    # after our patch, which finds the sidecar's mount at the API token path taken and so changes
    # nothing, and no reinvocation follows
    labelled = create(runtime.deployment.plane, namespace, named(seed_pod(), namespace, "labelled"))
    assert [c["name"] for c in labelled["spec"]["initContainers"]].count(SIDECAR) == 1
    assert runtime.admission_reviews() == before + 1


@pytest.mark.parametrize("where", ["kube-system", "kube-sts"])
def test_pods_of_excluded_namespaces_are_not_injected(runtime: deployment.Runtime, where: str) -> None:
    plane = runtime.deployment.plane
    plane.kubectl("create", "serviceaccount", "default", f"--namespace={where}", check=False)
    before = runtime.admission_reviews()
    stored = create(plane, where, restricted(named(seed_pod(), where, f"excluded-{where}")))
    assert not injected(stored)
    assert runtime.admission_reviews() == before


def test_webhook_down_refuses_labelled_pods_and_admits_others(runtime: deployment.Runtime, namespace: str) -> None:
    plane = runtime.deployment.plane
    runtime.stop()
    try:
        refused = create(plane, namespace, named(seed_pod(), namespace, "while-down"), check=False)
        assert refused.returncode != 0
        assert 'failed calling webhook "aws.kube-sts.sts.tremolo.io"' in refused.stderr
        pod = named(seed_pod(), namespace, "unlabelled-while-down")
        del pod["metadata"]["labels"]["tremolo.io/aws-role"]
        assert not injected(create(plane, namespace, pod))
    finally:
        runtime.start()
    assert injected(create(plane, namespace, named(seed_pod(), namespace, "after-restart")))


def test_a_pod_injected_with_a_token_path_is_valid_to_the_api_server(
    runtime: deployment.Runtime, namespace: str, runtime_kube: kubeapi.KubeAPI
) -> None:
    """The patch for an endpoint with OpenUnison's token path (``/tokens/token.jwt``), applied with
    jsonpatch, is a Pod the real API server stores as it is (the compiled webhook, seeing the
    marker, adds nothing more)."""
    # the sidecar image as the runtime resolves it: from its own Pod, as its ServiceAccount
    environ = {config.POD_NAME_ENV: runtime.pod, config.POD_NAMESPACE_ENV: runtime.deployment.namespace}
    stored_config = server.resolve_sidecar_image(
        config.RuntimeConfig.model_validate(runtime.config), runtime_kube, environ
    )
    [endpoint] = stored_config.endpoints
    document = endpoint.model_dump(by_alias=True)
    document["injector"]["tokenPath"] = "/tokens/token.jwt"
    moved = stored_config.model_copy(update={"endpoints": (config.Endpoint.model_validate(document),)})
    pod = named(seed_pod(), namespace, "openunison-path")
    patched = jsonpatch.apply_patch(pod, injection.patch(moved, moved.endpoints, pod, CA).operations)
    stored = create(runtime.deployment.plane, namespace, patched)
    [side] = [c for c in stored["spec"]["initContainers"] if c["name"] == SIDECAR]
    assert side["args"][side["args"].index("--token-file") + 1] == "/tokens/token.jwt"
    assert {"name": "kube-sts-aws-token", "mountPath": "/tokens"} in side["volumeMounts"]
    [app] = stored["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in app["env"]}["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/tokens/token.jwt"
    assert {"name": "kube-sts-aws-token", "mountPath": "/tokens", "readOnly": True} in app["volumeMounts"]
    assert [c["name"] for c in stored["spec"]["initContainers"]] == [SIDECAR]
