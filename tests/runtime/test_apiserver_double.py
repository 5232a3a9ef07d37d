"""The API server double itself: wire-format details other tests rely on."""

from __future__ import annotations

import pytest

from harness import apiserver
from kube_sts.runtime.kube import api as kubeapi

WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def webhook_configuration(api_server: apiserver.APIServer) -> None:
    api_server.put(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "kube-sts", "labels": {"a": "1"}},
            "webhooks": [{"name": "a.kube-sts.io", "timeoutSeconds": 5}, {"name": "b.kube-sts.io"}],
        }
    )


def test_strategic_patches(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    webhook_configuration(api_server)
    strategic = kube.patch_mutating_webhook(
        "kube-sts",
        {"webhooks": [{"name": "b.kube-sts.io", "$patch": "delete"}, {"name": "a.kube-sts.io", "timeoutSeconds": 10}]},
        "strategic",
    )
    assert strategic["webhooks"] == [{"name": "a.kube-sts.io", "timeoutSeconds": 10}]


def test_json_patch_failures_and_stale_versions(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    webhook_configuration(api_server)
    with pytest.raises(kubeapi.APIError) as invalid:
        kube.patch_mutating_webhook("kube-sts", [{"op": "test", "path": "/webhooks/0/name", "value": "x"}])
    assert invalid.value.status == 422
    stale = [{"op": "replace", "path": "/metadata/resourceVersion", "value": "1"}]
    with pytest.raises(kubeapi.ConflictError):
        kube.patch_mutating_webhook("kube-sts", stale)


def test_create_validation_and_unknown_resources(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    first = api_server.add_pod("ns", "a")
    second = api_server.add_pod("ns", "b")
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    with pytest.raises(kubeapi.APIError) as invalid:
        kube.request("POST", "/api/v1/namespaces/ns/configmaps", {"metadata": {}})
    assert invalid.value.status == 422 and invalid.value.reason == "Invalid"
    with pytest.raises(kubeapi.NotFoundError):
        kube.request("GET", "/apis/apps/v1/namespaces/ns/deployments/x")
    with pytest.raises(kubeapi.APIError) as refused:
        kube.request("GET", "/api/v1/namespaces/ns/pods/a", accept="application/json;as=Table;g=meta.k8s.io;v=v1")
    assert refused.value.status == 406
    secret = kube.create_secret(kubeapi.Secret("s", "ns", {"k": b"\x00\xff"}, ""))
    assert kube.get_secret("ns", "s").data == {"k": b"\x00\xff"} and secret.type == "Opaque"


def test_requests_are_recorded(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    kube.version()
    [request] = api_server.requests
    assert (request.method, request.path, request.headers["accept"]) == ("GET", "/version", "application/json")
