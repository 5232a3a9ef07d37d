"""The runtime's Kubernetes client against the real API server: TokenReview of TokenRequests bound
to real Pods (as ServiceAccount kube-sts, ``runtime_kube``), the Pod metadata read, Secrets with
real ``resourceVersion`` conflicts and the webhook configuration patches (as the cluster admin).
What needs an API server that fails or is slow, the bytes the client sends, expired tokens or the
window in which a deleted Pod's token is still accepted stays in tests/runtime/test_kubeapi.py."""

from __future__ import annotations

import base64
import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from kube_sts.runtime.kube import api as kubeapi
from tests.controlplane import cluster
from tests.controlplane.test_exchange import create_pod

STS_AUDIENCE = "kube-sts"
ROLE = "arn:aws:iam::1:role/r"
_names = itertools.count(1)


@pytest.fixture
def pod(control_plane: cluster.ControlPlane, myns: str) -> dict[str, Any]:
    """A new Pod of ServiceAccount ``app`` in ``myns`` with a role annotation (unlabelled: no webhook)."""
    name = f"kubeapi-{next(_names)}"
    return create_pod(control_plane, myns, name, labelled=False, annotations={"tremolo.io/aws-role": ROLE})


def test_token_review_of_a_bound_token(
    control_plane: cluster.ControlPlane, runtime_kube: kubeapi.KubeAPI, pod: dict[str, Any]
) -> None:
    token = control_plane.token("myns", "app", STS_AUDIENCE, pod=pod)
    review = runtime_kube.token_review(token, [STS_AUDIENCE])
    assert review.authenticated
    assert review.service_account == ("myns", "app")
    assert review.pod_name == pod["metadata"]["name"]
    assert review.pod_uid == pod["metadata"]["uid"]
    assert review.audiences == (STS_AUDIENCE,)
    assert "system:serviceaccounts:myns" in review.groups


def test_token_for_the_api_server_is_refused_for_our_audience(
    control_plane: cluster.ControlPlane, runtime_kube: kubeapi.KubeAPI, pod: dict[str, Any]
) -> None:
    token = control_plane.token("myns", "app", cluster.API_AUDIENCE, pod=pod)
    review = runtime_kube.token_review(token, [STS_AUDIENCE])
    assert not review.authenticated
    assert "is invalid for the target audiences" in review.error
    assert review.audiences == ()


def test_audiences_are_the_intersection(control_plane: cluster.ControlPlane, runtime_kube: kubeapi.KubeAPI) -> None:
    answer = control_plane.kubectl(
        "create", "token", "app", "--namespace=myns", "--audience=a", f"--audience={STS_AUDIENCE}", "--duration=600s"
    )
    assert runtime_kube.token_review(answer.stdout.strip(), [STS_AUDIENCE, "b"]).audiences == (STS_AUDIENCE,)


def test_unbound_token_has_no_pod(
    control_plane: cluster.ControlPlane, runtime_kube: kubeapi.KubeAPI, myns: str
) -> None:
    review = runtime_kube.token_review(control_plane.token(myns, "app", STS_AUDIENCE), [STS_AUDIENCE])
    assert review.authenticated
    assert review.pod_name is None and review.pod_uid is None


def test_deleted_pod_invalidates_its_token(
    control_plane: cluster.ControlPlane, runtime_kube: kubeapi.KubeAPI, pod: dict[str, Any]
) -> None:
    token = control_plane.token("myns", "app", STS_AUDIENCE, pod=pod)
    control_plane.kubectl("delete", "pod", pod["metadata"]["name"], "--namespace=myns", "--wait=true")
    review = runtime_kube.token_review(token, [STS_AUDIENCE])
    assert not review.authenticated
    # kube-apiserver 1.36 does not say which bound object is gone
    assert review.error == "[invalid bearer token, service account token has been invalidated]"


def test_recreated_pod_uid_mismatch(
    control_plane: cluster.ControlPlane, runtime_kube: kubeapi.KubeAPI, pod: dict[str, Any]
) -> None:
    name = pod["metadata"]["name"]
    token = control_plane.token("myns", "app", STS_AUDIENCE, pod=pod)
    control_plane.kubectl("delete", "pod", name, "--namespace=myns", "--wait=true")
    again = create_pod(control_plane, "myns", name, labelled=False)  # same name, new uid
    assert again["metadata"]["uid"] != pod["metadata"]["uid"]
    review = runtime_kube.token_review(token, [STS_AUDIENCE])
    assert not review.authenticated
    assert "does not match" in review.error


def test_unknown_tokens(runtime_kube: kubeapi.KubeAPI) -> None:
    assert not runtime_kube.token_review("not-a-token", [STS_AUDIENCE]).authenticated


def test_pod_metadata_is_a_partial_object_metadata_get(runtime_kube: kubeapi.KubeAPI, pod: dict[str, Any]) -> None:
    meta = runtime_kube.pod_metadata("myns", pod["metadata"]["name"])
    assert meta.uid == pod["metadata"]["uid"]
    assert meta.annotations == {"tremolo.io/aws-role": ROLE}
    with pytest.raises(kubeapi.NotFoundError):
        runtime_kube.pod_metadata("myns", "gone")


def test_secret_create_get_replace_conflict(control_plane: cluster.ControlPlane, admin_kube: kubeapi.KubeAPI) -> None:
    control_plane.create_namespace("sts")
    secret = kubeapi.Secret("keys", "sts", {"keyset.json": b"{}"}, "")
    created = admin_kube.create_secret(secret)
    assert created.resource_version
    with pytest.raises(kubeapi.AlreadyExistsError):
        admin_kube.create_secret(secret)
    stored = control_plane.get("secret", "keys", "sts")
    assert stored is not None and stored["data"] == {"keyset.json": base64.b64encode(b"{}").decode()}
    updated = admin_kube.replace_secret(
        kubeapi.Secret("keys", "sts", {"keyset.json": b"[1]"}, ""), created.resource_version
    )
    assert int(updated.resource_version) > int(created.resource_version)
    assert admin_kube.get_secret("sts", "keys").data == {"keyset.json": b"[1]"}
    with pytest.raises(kubeapi.ConflictError):
        admin_kube.replace_secret(kubeapi.Secret("keys", "sts", {"keyset.json": b"[2]"}, ""), created.resource_version)
    with pytest.raises(kubeapi.NotFoundError):
        admin_kube.get_secret("sts", "other")
    with pytest.raises(kubeapi.NotFoundError):
        admin_kube.replace_secret(kubeapi.Secret("other", "sts", {}, ""), "1")


# A webhook that no request reaches: it matches only objects labelled "never" and may fail.
_HOOK: dict[str, Any] = {
    "name": "aws.kube-sts.io",
    "clientConfig": {"url": "https://127.0.0.1:9/mutate"},
    "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}],
    "objectSelector": {"matchLabels": {"kube-sts.io/test": "never"}},
    "failurePolicy": "Ignore",
    "sideEffects": "None",
    "admissionReviewVersions": ["v1"],
}


@contextlib.contextmanager
def _configuration(control_plane: cluster.ControlPlane, name: str) -> Iterator[None]:
    """The MutatingWebhookConfiguration ``name`` with ``_HOOK``, for the block's duration."""
    control_plane.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [_HOOK],
        }
    )
    try:
        yield
    finally:
        control_plane.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")


def test_webhook_configuration_patch(control_plane: cluster.ControlPlane, admin_kube: kubeapi.KubeAPI) -> None:
    name = "kube-sts-client-test"
    with _configuration(control_plane, name):
        before = admin_kube.get_mutating_webhook(name)
        assert "caBundle" not in before["webhooks"][0]["clientConfig"]
        patched = admin_kube.patch_mutating_webhook(
            name, [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="}]
        )
        assert patched["webhooks"][0]["clientConfig"]["caBundle"] == "Q0E="
        assert int(patched["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
        strategic = admin_kube.patch_mutating_webhook(
            name, {"webhooks": [{"name": "aws.kube-sts.io", "clientConfig": {"caBundle": "Qg=="}}]}, "strategic"
        )
        # merged by name: the webhook keeps its other fields (a merge patch would replace the list
        # with one webhook lacking them, which the API server refuses as invalid)
        [hook] = strategic["webhooks"]
        assert hook["clientConfig"] == {"url": _HOOK["clientConfig"]["url"], "caBundle": "Qg=="}
        for key in ("name", "objectSelector", "failurePolicy", "sideEffects", "admissionReviewVersions"):
            assert hook[key] == _HOOK[key], key
        [rule] = hook["rules"]
        assert rule["resources"] == ["configmaps"] and rule["operations"] == ["CREATE"]
        stored = control_plane.get("mutatingwebhookconfiguration", name)
        assert stored is not None and stored["webhooks"] == strategic["webhooks"]
        with pytest.raises(kubeapi.NotFoundError):
            admin_kube.get_mutating_webhook("missing")


def test_webhook_configuration_watch_needs_the_version_read(
    control_plane: cluster.ControlPlane, admin_kube: kubeapi.KubeAPI, namespace: str
) -> None:
    """What the caBundle watch is built on. Without a ``resourceVersion`` the API server answers a
    watch only once its watch cache is as recent as etcd; when something else was written since
    the configuration last changed (here a ConfigMap; in any cluster the API server's own Lease
    every 10 s) the watch ends after 3 s with an ERROR "Too large resource version" (504) and
    shows nothing. From the ``resourceVersion`` of a read it streams the next change."""
    name = "kube-sts-watch-test"
    with _configuration(control_plane, name):
        control_plane.kubectl("create", "configmap", "moves-etcd-on", "-n", namespace)
        events = list(admin_kube.watch_mutating_webhook(name, 5))
        [error] = events
        assert error["type"] == "ERROR"
        assert error["object"]["code"] == 504 and "Too large resource version" in error["object"]["message"]
        version = admin_kube.get_mutating_webhook(name)["metadata"]["resourceVersion"]
        watch = admin_kube.watch_mutating_webhook(name, 10, version)
        admin_kube.patch_mutating_webhook(
            name, [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="}]
        )
        event = next(watch)
        assert event["type"] == "MODIFIED"
        assert event["object"]["webhooks"][0]["clientConfig"]["caBundle"] == "Q0E="
        watch.close()
