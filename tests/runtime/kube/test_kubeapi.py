"""The runtime's Kubernetes client against the API server double, for what the real API server of
tests/controlplane/test_kube_client.py cannot show: the requests the client sends (the double
records them), tokens the real server will not issue (already expired), the window in which the
real server still accepts a deleted Pod's token, an API server that is down, failing or slow."""

from __future__ import annotations

import json
import time

import pytest

from harness import apiserver
from kube_sts.runtime.kube import api as kubeapi

STS_AUDIENCE = "kube-sts"


def test_requests_on_the_wire(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    """The TokenReview body and bearer token, the Pod read as PartialObjectMetadata, the strategic
    merge patch's media type."""
    pod = api_server.add_pod("myns", "app-1")
    token = api_server.issue_token("myns", "app", pod=pod, audiences=[STS_AUDIENCE])
    assert kube.token_review(token, [STS_AUDIENCE]).authenticated
    sent = json.loads(api_server.requests_to("/apis/authentication.k8s.io/v1/tokenreviews")[0].body)
    assert sent["spec"] == {"token": token, "audiences": [STS_AUDIENCE]}
    assert api_server.requests[0].headers["authorization"] == "Bearer test-runtime-token"
    kube.pod_metadata("myns", "app-1")
    request = api_server.requests_to("/api/v1/namespaces/myns/pods/app-1")[0]
    assert request.headers["accept"] == kubeapi.PARTIAL_METADATA
    api_server.put(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "kube-sts"},
            "webhooks": [{"name": "aws.kube-sts.io", "clientConfig": {"caBundle": ""}}],
        }
    )
    kube.patch_mutating_webhook(
        "kube-sts", {"webhooks": [{"name": "aws.kube-sts.io", "clientConfig": {"caBundle": "Qg=="}}]}, "strategic"
    )
    assert api_server.requests[-1].headers["content-type"] == "application/strategic-merge-patch+json"


def test_recreated_pod_in_the_window_the_real_server_still_accepts(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI
) -> None:
    pod = api_server.add_pod("myns", "app-1")
    token = api_server.issue_token("myns", "app", pod=pod, audiences=[STS_AUDIENCE])
    api_server.add_pod("myns", "app-1")  # same name, new uid
    api_server.verify_bindings = False  # the window in which the real server still accepts it
    review = kube.token_review(token, [STS_AUDIENCE])
    assert review.authenticated
    assert review.pod_uid != kube.pod_metadata("myns", "app-1").uid


def test_expired_tokens(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    token = api_server.issue_token("myns", "app", audiences=[STS_AUDIENCE], expires=int(time.time()) - 1)
    assert not kube.token_review(token, [STS_AUDIENCE]).authenticated


@pytest.mark.parametrize("mode", ["refused", "error", "reset"])
def test_outage_is_unavailable(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI, mode: str) -> None:
    api_server.set_outage(mode)
    with pytest.raises(kubeapi.UnavailableError):
        kube.token_review("t", [STS_AUDIENCE])
    api_server.set_outage(None)
    assert not kube.token_review("t", [STS_AUDIENCE]).authenticated


def test_slow_answer_times_out(api_server: apiserver.APIServer) -> None:
    client = kubeapi.KubeAPI.for_host(api_server.url, timeout=0.2)
    api_server.delay = 0.5
    with pytest.raises(kubeapi.UnavailableError):
        client.token_review("t", [STS_AUDIENCE])
    client.close()
