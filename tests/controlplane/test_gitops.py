"""GitOps tools on the compiled output, through a real ``kubectl kustomize`` and the real API
server: a kustomize ``images:`` override of the runtime's image reaches the sidecars the webhook
injects (the runtime reads its own Pod's spec); a replace that wipes the caBundle is undone at once."""

from __future__ import annotations

import itertools
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from harness.reviews import seed_pod
from kube_sts.runtime.tls import manager as tlsmanager
from tests.controlplane import cluster, conftest, deployment
from tests.controlplane.test_admission import SIDECAR, create, named

MIRROR = "registry.corp.example/mirror/kube-sts"
DIGEST = "sha256:" + "ab" * 32


def kustomize(plane: cluster.ControlPlane, manifests: pathlib.Path, images: list[dict[str, str]]) -> str:
    """``kubectl kustomize`` of an overlay on the compiled files (the base: a kustomization listing
    them) with an ``images:`` override, as a GitOps repository holds them."""
    kind = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    files = sorted(path.name for path in manifests.glob("*.yaml") if path.name != "kustomization.yaml")
    (manifests / "kustomization.yaml").write_text(yaml.safe_dump({**kind, "resources": files}))
    overlay = manifests.parent / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({**kind, "resources": [f"../{manifests.name}"], "images": images})
    )
    answer: str = plane.kubectl("kustomize", str(overlay)).stdout
    return answer


@pytest.fixture
def overridden(tmp_path: pathlib.Path) -> Iterator[deployment.Deployment]:
    deployment.compile_example(deployment.EXAMPLES / "aws", tmp_path / "manifests")
    plane = cluster.ControlPlane(tmp_path / "plane").start()
    try:
        image = {"name": "ghcr.io/kube-sts/kube-sts", "newName": MIRROR, "digest": DIGEST}
        stream = kustomize(plane, tmp_path / "manifests", [image])
        plane.kubectl("apply", "-f", "-", input=stream)
        yield deployment.Deployment(plane, stream, [d for d in yaml.safe_load_all(stream) if d])
    finally:
        plane.stop()


def test_kustomize_image_override_reaches_the_injected_sidecar(
    overridden: deployment.Deployment, tmp_path: pathlib.Path
) -> None:
    [container] = overridden.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{MIRROR}@{DIGEST}"
    # nothing frozen in the ConfigMap that kustomize cannot see
    assert json.loads(overridden.one("ConfigMap")["data"]["config.json"])["sidecarImage"] is None
    plane = overridden.plane
    plane.create_namespace("apps")
    runtime = overridden.runtime(tmp_path / "runtime", at_cluster_ip=True)
    runtime.start()
    try:
        stored: dict[str, Any] = create(plane, "apps", named(seed_pod(), "apps", "seed"))
    finally:
        runtime.stop()
    [sidecar] = [c for c in stored["spec"]["initContainers"] if c["name"] == SIDECAR]
    assert sidecar["image"] == f"{MIRROR}@{DIGEST}"


def test_a_replace_that_wipes_the_ca_bundle_is_undone_within_seconds(runtime: deployment.Runtime) -> None:
    """``kubectl replace`` of the compiled configuration (what a GitOps sync without
    ``ignoreDifferences`` does) empties the caBundle; the watch of the session's long-running
    runtime, renewed every ``tls.watchSeconds`` and renewed at least twice here, restores it."""
    plane = runtime.deployment.plane
    [compiled] = [d for d in runtime.deployment.documents if d["kind"] == "MutatingWebhookConfiguration"]
    name = compiled["metadata"]["name"]
    key = (("configuration", name),)
    rounds = runtime.gauge("kube_sts_webhook_watch_rounds")[key]
    deadline = time.monotonic() + 10 * conftest.WATCH_SECONDS
    while runtime.gauge("kube_sts_webhook_watch_rounds")[key] < rounds + 2:  # two renewals more
        assert time.monotonic() < deadline, runtime.log.read_text()[-3000:]
        time.sleep(0.5)
    assert runtime.gauge("kube_sts_webhook_watch_failures")[key] == 0
    plane.create_namespace("t-busy-cluster")
    [served] = set(runtime.ca_bundles())
    assert all("caBundle" not in hook["clientConfig"] for hook in compiled["webhooks"])
    plane.kubectl("replace", "-f", "-", input=json.dumps(compiled))
    wiped = time.monotonic()
    waited = 0.0
    for write in itertools.count():
        if set(runtime.ca_bundles()) == {served}:
            break
        # a cluster where other objects change meanwhile (etcd's revision moves on), as every
        # cluster's does: a watch the runtime opens without the version it read would wait for the
        # watch cache, which only a change of the configuration itself brings up to date
        plane.kubectl("create", "configmap", f"write-{write}", "-n", "t-busy-cluster")
        waited = time.monotonic() - wiped
        # the periodic resync would take up to RESYNC_INTERVAL (300 s); the watch takes moments
        assert waited < tlsmanager.RESYNC_INTERVAL / 10, runtime.log.read_text()[-3000:]
        time.sleep(0.2)
    print(f"caBundle restored {time.monotonic() - wiped:.2f} s after the replace")
