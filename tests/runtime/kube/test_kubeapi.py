"""The runtime's Kubernetes client against the API server double (real JSON wire format)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from kube_sts.runtime.kube import api as kubeapi
from tests import apiserver

STS_AUDIENCE = "kube-sts"


def test_token_review_of_a_bound_token(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    pod = api_server.add_pod("myns", "app-1")
    token = api_server.issue_token("myns", "app", pod=pod, audiences=[STS_AUDIENCE])
    review = kube.token_review(token, [STS_AUDIENCE])
    assert review.authenticated
    assert review.service_account == ("myns", "app")
    assert review.pod_name == "app-1"
    assert review.pod_uid == pod["metadata"]["uid"]
    assert review.audiences == (STS_AUDIENCE,)
    assert "system:serviceaccounts:myns" in review.groups
    sent = json.loads(api_server.requests_to("/apis/authentication.k8s.io/v1/tokenreviews")[0].body)
    assert sent["spec"] == {"token": token, "audiences": [STS_AUDIENCE]}
    assert api_server.requests[0].headers["authorization"] == "Bearer test-runtime-token"


def test_token_for_the_api_server_is_refused_for_our_audience(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI
) -> None:
    pod = api_server.add_pod("myns", "app-1")
    token = api_server.issue_token("myns", "app", pod=pod)  # default audience: the API server's
    review = kube.token_review(token, [STS_AUDIENCE])
    assert not review.authenticated
    assert "is invalid for the target audiences" in review.error
    assert review.audiences == ()


def test_audiences_are_the_intersection(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    token = api_server.issue_token("myns", "app", audiences=["a", STS_AUDIENCE])
    assert kube.token_review(token, [STS_AUDIENCE, "b"]).audiences == (STS_AUDIENCE,)


def test_unbound_token_has_no_pod(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    token = api_server.issue_token("myns", "app", audiences=[STS_AUDIENCE])
    review = kube.token_review(token, [STS_AUDIENCE])
    assert review.authenticated
    assert review.pod_name is None and review.pod_uid is None


def test_deleted_pod_invalidates_its_token(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    pod = api_server.add_pod("myns", "app-1")
    token = api_server.issue_token("myns", "app", pod=pod, audiences=[STS_AUDIENCE])
    api_server.delete_pod("myns", "app-1")
    review = kube.token_review(token, [STS_AUDIENCE])
    assert not review.authenticated
    assert "not found" in review.error


def test_recreated_pod_uid_mismatch(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    pod = api_server.add_pod("myns", "app-1")
    token = api_server.issue_token("myns", "app", pod=pod, audiences=[STS_AUDIENCE])
    api_server.add_pod("myns", "app-1")  # same name, new uid
    review = kube.token_review(token, [STS_AUDIENCE])
    assert not review.authenticated
    assert "does not match" in review.error
    api_server.verify_bindings = False  # the window in which the real server still accepts it
    review = kube.token_review(token, [STS_AUDIENCE])
    assert review.authenticated
    assert review.pod_uid != kube.pod_metadata("myns", "app-1").uid


def test_expired_and_unknown_tokens(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    token = api_server.issue_token("myns", "app", audiences=[STS_AUDIENCE], expires=int(time.time()) - 1)
    assert not kube.token_review(token, [STS_AUDIENCE]).authenticated
    assert not kube.token_review("not-a-token", [STS_AUDIENCE]).authenticated


def test_pod_metadata_is_a_partial_object_metadata_get(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    pod = api_server.add_pod("myns", "app-1", annotations={"tremolo.io/aws-role": "arn:aws:iam::1:role/r"})
    meta = kube.pod_metadata("myns", "app-1")
    assert meta.uid == pod["metadata"]["uid"]
    assert meta.annotations == {"tremolo.io/aws-role": "arn:aws:iam::1:role/r"}
    request = api_server.requests_to("/api/v1/namespaces/myns/pods/app-1")[0]
    assert request.headers["accept"] == kubeapi.PARTIAL_METADATA
    with pytest.raises(kubeapi.NotFoundError):
        kube.pod_metadata("myns", "gone")


def test_secret_create_get_replace_conflict(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    secret = kubeapi.Secret("keys", "sts", {"keyset.json": b"{}"}, "")
    created = kube.create_secret(secret)
    assert created.resource_version
    with pytest.raises(kubeapi.AlreadyExistsError):
        kube.create_secret(secret)
    stored = api_server.get("v1", "secrets", "sts", "keys")
    assert stored is not None and stored["data"] == {"keyset.json": base64.b64encode(b"{}").decode()}
    updated = kube.replace_secret(kubeapi.Secret("keys", "sts", {"keyset.json": b"[1]"}, ""), created.resource_version)
    assert int(updated.resource_version) > int(created.resource_version)
    assert kube.get_secret("sts", "keys").data == {"keyset.json": b"[1]"}
    with pytest.raises(kubeapi.ConflictError):
        kube.replace_secret(kubeapi.Secret("keys", "sts", {"keyset.json": b"[2]"}, ""), created.resource_version)
    with pytest.raises(kubeapi.NotFoundError):
        kube.get_secret("sts", "other")
    with pytest.raises(kubeapi.NotFoundError):
        kube.replace_secret(kubeapi.Secret("other", "sts", {}, ""), "1")


def test_webhook_configuration_patch(api_server: apiserver.APIServer, kube: kubeapi.KubeAPI) -> None:
    api_server.put(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "kube-sts"},
            "webhooks": [{"name": "aws.kube-sts.io", "clientConfig": {"caBundle": ""}}],
        }
    )
    before = kube.get_mutating_webhook("kube-sts")
    patched = kube.patch_mutating_webhook(
        "kube-sts", [{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="}]
    )
    assert patched["webhooks"][0]["clientConfig"]["caBundle"] == "Q0E="
    assert int(patched["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    strategic = kube.patch_mutating_webhook(
        "kube-sts", {"webhooks": [{"name": "aws.kube-sts.io", "clientConfig": {"caBundle": "Qg=="}}]}, "strategic"
    )
    assert strategic["webhooks"] == [{"name": "aws.kube-sts.io", "clientConfig": {"caBundle": "Qg=="}}]
    assert api_server.requests[-1].headers["content-type"] == "application/strategic-merge-patch+json"
    with pytest.raises(kubeapi.NotFoundError):
        kube.get_mutating_webhook("missing")


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
