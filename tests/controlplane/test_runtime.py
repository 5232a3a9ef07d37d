"""The runtime as its rendered ServiceAccount against the real API server: the permissions the
rendered RBAC grants are exactly what it needs, and a first start (one replica or two at once)
creates one key set, one CA and the webhooks' caBundle."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import pytest

from tests.controlplane import cluster, deployment

ACCOUNT = "system:serviceaccount:kube-sts:kube-sts"


def _can(plane: cluster.ControlPlane, *args: str) -> bool:
    answer = plane.kubectl("auth", "can-i", f"--as={ACCOUNT}", *args, check=False)
    return answer.stdout.strip() == "yes"


def test_rendered_rbac_grants_what_the_runtime_needs_and_nothing_more(deployed: deployment.Deployment) -> None:
    plane = deployed.plane
    keypair = deployed.runtime_config()["endpoints"][0]["issuer"]["keypair"]
    tls_secret = deployed.runtime_config()["tls"]["secretName"]
    needed = [
        ("create", "tokenreviews.authentication.k8s.io"),
        ("get", "pods", "--namespace=myns"),
        ("get", "serviceaccounts", "--namespace=myns"),  # a Pod's role binding, at admission and exchange
        ("create", "secrets", "--namespace=kube-sts"),
        ("get", f"secrets/{keypair}", "--namespace=kube-sts"),
        ("update", f"secrets/{keypair}", "--namespace=kube-sts"),
        ("get", f"secrets/{tls_secret}", "--namespace=kube-sts"),
        ("update", f"secrets/{tls_secret}", "--namespace=kube-sts"),
        ("get", "mutatingwebhookconfigurations.admissionregistration.k8s.io/kube-sts-aws"),
        ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/kube-sts-aws"),
        # its own configurations' changes (a wiped caBundle), watched by name (fieldSelector)
        ("watch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/kube-sts-aws"),
        ("list", "mutatingwebhookconfigurations.admissionregistration.k8s.io/kube-sts-aws"),
    ]
    for check in needed:
        assert _can(plane, *check), check
    excessive = [
        ("get", "secrets", "--namespace=kube-sts"),  # any Secret, not only ours
        ("list", "secrets", "--namespace=kube-sts"),
        ("get", "secrets/other", "--namespace=kube-sts"),
        ("get", "secrets/aws-sts-keys", "--namespace=myns"),
        ("list", "pods", "--all-namespaces"),
        ("update", "pods", "--namespace=myns"),
        ("create", "pods", "--namespace=myns"),
        ("create", "serviceaccounts/token", "--namespace=myns"),
        ("list", "serviceaccounts", "--all-namespaces"),
        ("watch", "serviceaccounts", "--all-namespaces"),
        ("update", "serviceaccounts", "--namespace=myns"),
        ("patch", "serviceaccounts", "--namespace=myns"),
        ("delete", "serviceaccounts", "--namespace=myns"),
        ("create", "serviceaccounts", "--namespace=myns"),
        ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/someone-elses"),
        ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
        ("list", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),  # all of them
        ("watch", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
        ("watch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/someone-elses"),
        ("list", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
        ("delete", f"secrets/{keypair}", "--namespace=kube-sts"),
        ("get", "configmaps", "--namespace=kube-system"),
    ]
    for check in excessive:
        assert not _can(plane, *check), check


def test_first_start_creates_key_set_ca_and_ca_bundle(runtime: deployment.Runtime) -> None:
    config = runtime.config
    keys = runtime.secret(config["endpoints"][0]["issuer"]["keypair"])
    tls = runtime.secret(config["tls"]["secretName"])
    assert keys is not None and tls is not None
    assert set(tls) >= {"ca.crt", "tls.crt", "tls.key"}
    assert set(runtime.ca_bundles()) == {tls["ca.crt"]}
    # it reads the cluster's service-account keys through the default issuer-discovery binding
    # (no fallback to TokenReview alone)
    status, readiness = runtime.get("/readyz")
    assert status == 200 and "degraded" not in json.dumps(readiness), readiness
    # the client trusts only the caBundle read back from the API server
    status, documents = runtime.get("/aws/issuer-docs")
    assert status == 200
    published = {key["kid"] for key in documents["keys"]["keys"]}
    stored = {key["kid"] for key in json.loads(keys["keyset.json"])["keys"]}
    assert published and published <= stored


@pytest.fixture
def race_plane(tmp_path: pathlib.Path) -> Iterator[deployment.Deployment]:
    plane = cluster.ControlPlane(tmp_path / "plane").start()
    try:
        yield deployment.Deployment.apply(plane, deployment.EXAMPLES / "aws", tmp_path / "aws")
    finally:
        plane.stop()


def test_two_replicas_started_together_end_with_one_ca_and_one_key_set(
    race_plane: deployment.Deployment, tmp_path: pathlib.Path
) -> None:
    replicas = [race_plane.runtime(tmp_path / f"replica-{index}") for index in (1, 2)]
    for replica in replicas:
        replica.start(wait=False)
    try:
        for replica in replicas:
            replica.wait_ready()
        config = replicas[0].config
        tls = replicas[0].secret(config["tls"]["secretName"])
        assert tls is not None
        assert set(replicas[0].ca_bundles()) == {tls["ca.crt"]}
        documents = [replica.get("/aws/issuer-docs")[1]["keys"] for replica in replicas]
        assert documents[0] == documents[1]
        keys = replicas[0].secret(config["endpoints"][0]["issuer"]["keypair"])
        assert keys is not None
        assert len(json.loads(keys["keyset.json"])["keys"]) == len(documents[0]["keys"])
    finally:
        for replica in replicas:
            replica.stop()
