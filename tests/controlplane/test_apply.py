"""Every example's compiled stream through the real API server: strict server-side dry run, one-pass
client-side and server-side apply, and a second apply that changes nothing.

The examples share cluster-scoped names: each test starts from one control plane holding none of
the compiled objects (every earlier example's objects and Namespaces deleted)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import pytest
import yaml

from tests.controlplane import cluster, deployment

EXAMPLES = sorted(p.parent.name for p in deployment.EXAMPLES.glob("*/values.yaml"))
# Kinds the cert-manager example renders whose CRDs only cert-manager installs.
CERT_MANAGER_KINDS = {"Certificate", "Issuer", "ClusterIssuer"}


OURS = "app.kubernetes.io/managed-by=sts-compile"
"""The label every compiled object carries."""


@pytest.fixture(scope="module")
def apply_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[cluster.ControlPlane, str]]:
    """One control plane for the module, and the kinds that can be listed and deleted."""
    plane = cluster.ControlPlane(tmp_path_factory.mktemp("apply") / "plane").start()
    try:
        names = plane.kubectl("api-resources", "--verbs=list,delete", "--namespaced=true", "-o", "name").stdout
        kinds = ",".join(name for name in names.split() if name not in {"events", "events.events.k8s.io"})
        yield plane, kinds
    finally:
        plane.stop()


def _remove_ours(plane: cluster.ControlPlane, kinds: str) -> None:
    """Delete every compiled object, Namespaces included (with no namespace controller running,
    their ``kubernetes`` finalizer is removed by hand once they are empty)."""
    plane.kubectl("delete", kinds, "--all-namespaces", "-l", OURS, "--wait=false")
    plane.kubectl(
        "delete", "clusterroles,clusterrolebindings,mutatingwebhookconfigurations", "-l", OURS, "--wait=false"
    )
    listed = json.loads(plane.kubectl("get", "namespaces", "-l", OURS, "-o", "json").stdout)["items"]
    if listed:
        plane.kubectl("delete", "namespaces", "-l", OURS, "--wait=false")
    for namespace in listed:
        name = namespace["metadata"]["name"]
        stored = plane.get("namespace", name)
        if stored is not None:
            stored["spec"]["finalizers"] = []
            plane.kubectl(
                "replace", "--raw", f"/api/v1/namespaces/{name}/finalize", "-f", "-", input=json.dumps(stored)
            )
    left = plane.kubectl("get", f"{kinds},namespaces,clusterroles,clusterrolebindings", "-A", "-l", OURS, "-o", "name")
    assert left.stdout.strip() == "", left.stdout


@pytest.fixture
def fresh_plane(apply_plane: tuple[cluster.ControlPlane, str]) -> Iterator[cluster.ControlPlane]:
    """The module's plane holding none of our objects (the examples share cluster-scoped names)."""
    plane, kinds = apply_plane
    _remove_ours(plane, kinds)
    yield plane
    _remove_ours(plane, kinds)


def _split(stream: str) -> tuple[str, list[str]]:
    """The stream without the objects of CRDs this cluster lacks, and those objects' kinds."""
    kept, left = [], []
    for document in yaml.safe_load_all(stream):
        if not document:
            continue
        if document["kind"] in CERT_MANAGER_KINDS:
            left.append(document["kind"])
        else:
            kept.append(document)
    return yaml.safe_dump_all(kept, sort_keys=False), left


def _versions(plane: cluster.ControlPlane, stream: str) -> dict[str, str]:
    """``kind/namespace/name`` -> resourceVersion of every object of ``stream`` as stored."""
    listed = json.loads(plane.kubectl("get", "-f", "-", "-o", "json", input=stream).stdout)
    return {
        f"{item['kind']}/{item['metadata'].get('namespace', '')}/{item['metadata']['name']}": item["metadata"][
            "resourceVersion"
        ]
        for item in listed["items"]
    }


def _reported_changes(output: str) -> list[str]:
    """The lines of a client-side ``kubectl apply`` that report a change.

    A PodDisruptionBudget is always reported "configured": policy/v1 declares its ``selector``
    with ``patchStrategy: replace``, so kubectl's three-way strategic merge always sends the
    selector again. That patch is a no-op the API server does not store (resourceVersion stays),
    and server-side apply and ``kubectl diff`` see no change; the test checks all three.
    """
    return [
        line
        for line in output.splitlines()
        if not line.endswith(" unchanged") and not line.startswith("poddisruptionbudget.policy/")
    ]


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_applies_in_one_pass_and_reapplies_unchanged(
    example: str, fresh_plane: cluster.ControlPlane, tmp_path: pathlib.Path
) -> None:
    stream, left = _split(deployment.compile_example(deployment.EXAMPLES / example, tmp_path / "out"))
    assert not left or example == "aws-cert-manager", left

    # a server-side dry run cannot create objects in a Namespace it only pretends to create
    namespaces = [d for d in yaml.safe_load_all(stream) if d["kind"] == "Namespace"]
    fresh_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(namespaces))
    dry = fresh_plane.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=stream)
    assert all(line.endswith(" (server dry run)") for line in dry.stdout.splitlines()), dry.stdout

    first = fresh_plane.kubectl("apply", "--validate=strict", "-f", "-", input=stream)
    assert all(line.endswith((" created", " unchanged")) for line in first.stdout.splitlines()), first.stdout
    before = _versions(fresh_plane, stream)
    again = fresh_plane.kubectl("apply", "--validate=strict", "-f", "-", input=stream)
    assert _reported_changes(again.stdout) == [], again.stdout
    assert _versions(fresh_plane, stream) == before
    # kubectl diff exits 0 when the live objects equal what the stream would make them
    assert fresh_plane.kubectl("diff", "-f", "-", input=stream, check=False).returncode == 0


@pytest.mark.parametrize("example", ["aws", "aws-cert-manager"])
def test_example_applies_server_side(example: str, fresh_plane: cluster.ControlPlane, tmp_path: pathlib.Path) -> None:
    stream, _ = _split(deployment.compile_example(deployment.EXAMPLES / example, tmp_path / "out"))
    arguments = ("apply", "--server-side", "--field-manager=sts-compile", "--validate=strict", "-f", "-")
    first = fresh_plane.kubectl(*arguments, input=stream)
    assert all(line.endswith(" serverside-applied") for line in first.stdout.splitlines()), first.stdout
    before = _versions(fresh_plane, stream)
    fresh_plane.kubectl(*arguments, input=stream)
    assert _versions(fresh_plane, stream) == before
    assert fresh_plane.kubectl("diff", "--server-side", "-f", "-", input=stream, check=False).returncode == 0


def test_cert_manager_objects_are_what_cert_manager_expects(tmp_path: pathlib.Path) -> None:
    """Without cert-manager's CRDs the API server cannot check these; their shape is checked here."""
    stream = deployment.compile_example(deployment.EXAMPLES / "aws-cert-manager", tmp_path / "out")
    documents = [d for d in yaml.safe_load_all(stream) if d]
    crs = [d for d in documents if d["kind"] in CERT_MANAGER_KINDS]
    assert crs, "the cert-manager example renders cert-manager objects"
    for document in crs:
        assert document["apiVersion"] == "cert-manager.io/v1"
    [webhook] = [d for d in documents if d["kind"] == "MutatingWebhookConfiguration"]
    assert "cert-manager.io/inject-ca-from" in webhook["metadata"]["annotations"]
