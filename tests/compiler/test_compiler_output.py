"""Rendered output of every example: valid Kubernetes objects, deterministic, apply-ordered, no secrets."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import ruamel.yaml

from kube_sts.compiler import manifest
from kube_sts.runtime import config

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent.name for p in (ROOT / "examples").glob("*/values.yaml"))
VERSIONS = ("1.29.0", "1.31.0", "1.33.0")


def compiled(example: str) -> manifest.Manifest:
    return manifest.compile_values((ROOT / "examples" / example / "values.yaml").read_text())


def objects(example: str) -> list[dict[str, Any]]:
    return list(ruamel.yaml.YAML(typ="safe", pure=True).load_all(compiled(example).text))


def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "kube_sts.compiler.cli", *args], capture_output=True, cwd=ROOT, env=env, check=False
    )


def test_examples_exist() -> None:
    assert EXAMPLES == ["aws", "aws-cert-manager", "aws-two-accounts", "azure", "gcp", "openunison", "vault"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("example", EXAMPLES)
def test_every_object_is_valid_kubernetes(example: str, version: str) -> None:
    checked = 0
    for obj in objects(example):
        if obj["apiVersion"] == "cert-manager.io/v1":
            # cert-manager's CRDs are not part of the Kubernetes schemas.
            assert obj["kind"] in {"Issuer", "Certificate"}
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 12


@pytest.mark.parametrize("example", EXAMPLES)
def test_apply_order(example: str) -> None:
    """Every object comes after what it refers to, so one `kubectl apply` pass succeeds."""
    objs = objects(example)
    seen: set[tuple[str, str]] = set()
    for obj in objs:
        kind, meta = obj["kind"], obj["metadata"]
        needs: list[tuple[str, str]] = []
        if "namespace" in meta:
            needs.append(("Namespace", meta["namespace"]))
        if kind.endswith("Binding"):
            needs.append((obj["roleRef"]["kind"], obj["roleRef"]["name"]))
            needs += [("ServiceAccount", s["name"]) for s in obj["subjects"]]
        if kind == "Deployment":
            pod = obj["spec"]["template"]["spec"]
            needs.append(("ServiceAccount", pod["serviceAccountName"]))
            needs += [("ConfigMap", v["configMap"]["name"]) for v in pod["volumes"] if "configMap" in v]
            needs.append(("PriorityClass", pod["priorityClassName"]))  # a Pod of a missing class is refused
        if kind in {"Certificate", "Issuer"} and "issuerRef" in obj.get("spec", {}):
            needs.append(("Issuer", obj["spec"]["issuerRef"]["name"]))
        if kind == "MutatingWebhookConfiguration":
            needs.append(("Service", obj["webhooks"][0]["clientConfig"]["service"]["name"]))
            needs.append(("Deployment", obj["webhooks"][0]["clientConfig"]["service"]["name"]))
        missing = [need for need in needs if need not in seen]
        assert not missing, f"{kind}/{meta['name']} comes before {missing}"
        seen.add((kind, meta["name"]))
    kinds = [obj["kind"] for obj in objs]
    assert kinds[0] == "Namespace"
    first_webhook = kinds.index("MutatingWebhookConfiguration")
    assert set(kinds[first_webhook:]) == {"MutatingWebhookConfiguration"}
    namespaced = [o for o in objs if "namespace" in o["metadata"]]
    assert {o["metadata"]["namespace"] for o in namespaced} == {objs[0]["metadata"]["name"]}


@pytest.mark.parametrize("example", EXAMPLES)
def test_no_private_key_material(example: str) -> None:
    text = compiled(example).text
    assert "PRIVATE KEY" not in text
    assert all(obj["kind"] != "Secret" for obj in objects(example))


def test_seed_example_renders_the_contracts() -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects("aws"):
        by_kind.setdefault(obj["kind"], []).append(obj)
    deployment = by_kind["Deployment"][0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert container["command"] == ["kube-sts-server", "--config", "/etc/kube-sts/config.json"]
    assert container["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts) == {"/etc/kube-sts/config.json", "/etc/kube-sts/tls", "/etc/kube-sts/keys/aws", "/tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/kube-sts/keys/aws"]]["secret"] == {
        "secretName": "unison-saml2-rp-sig",
        "optional": True,
        "items": [{"key": "keyset.json", "path": "keyset.json"}],
    }
    service = by_kind["Service"][0]
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    (webhook,) = by_kind["MutatingWebhookConfiguration"][0]["webhooks"]
    assert webhook["objectSelector"] == {"matchExpressions": [{"key": "tremolo.io/aws-role", "operator": "Exists"}]}
    assert webhook["namespaceSelector"]["matchExpressions"][0]["values"] == ["kube-system", "kube-sts"]
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["sideEffects"] == "None"
    assert webhook["reinvocationPolicy"] == "IfNeeded"
    assert webhook["clientConfig"]["service"]["path"] == "/mutate/aws"
    assert webhook["rules"][0]["operations"] == ["CREATE"]
    cluster_rules = [r for role in by_kind["ClusterRole"] for r in role["rules"]]
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]} in cluster_rules
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]} in cluster_rules
    assert {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingwebhookconfigurations"],
        "resourceNames": ["kube-sts-aws"],
        # list and watch: the caBundle watch (resourceNames bind them only with the name's fieldSelector)
        "verbs": ["get", "list", "watch", "patch", "update"],
    } in cluster_rules
    role_rules = by_kind["Role"][0]["rules"]
    assert role_rules[0]["resourceNames"] == ["unison-saml2-rp-sig", "kube-sts-tls"]
    # create cannot be limited by resourceNames in Kubernetes; it is its own rule, verb create only.
    assert role_rules[1] == {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}


def test_config_map_is_the_runtime_model() -> None:
    (config_map,) = [o for o in objects("aws-two-accounts") if o["kind"] == "ConfigMap"]
    runtime = config.RuntimeConfig.model_validate_json(config_map["data"]["config.json"])
    assert [e.name for e in runtime.endpoints] == ["aws-prod", "aws-analytics"]
    assert [e.issuer.keypair for e in runtime.endpoints] == ["kube-sts-aws-prod", "kube-sts-aws-analytics"]
    assert runtime.cluster == "prod-eu-1"
    assert runtime.native_sidecars is True
    assert runtime.webhook_configurations == ("kube-sts-aws-prod", "kube-sts-aws-analytics")
    assert runtime.endpoints[1].token.algorithm == "ES256"
    assert runtime.endpoints[1].token.lifetime == 7200


def test_cert_manager_mode() -> None:
    objs = objects("aws-cert-manager")
    kinds = [o["kind"] for o in objs]
    assert kinds.count("Certificate") == 2
    assert "ClusterRole" in kinds and not any(o["metadata"]["name"].endswith("-webhook-ca") for o in objs)
    webhook = objs[-1]
    assert webhook["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": "identity/sts-tls"}
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "ghcr.io/kube-sts/kube-sts@sha256:"
    )
    (config_map,) = [o for o in objs if o["kind"] == "ConfigMap"]
    assert '"nativeSidecars": false' in config_map["data"]["config.json"]


def test_byte_identical_across_runs_and_output_dir(tmp_path: pathlib.Path) -> None:
    first = run_cli("examples/aws-two-accounts/values.yaml")
    second = run_cli("examples/aws-two-accounts/values.yaml")
    assert first.returncode == 0 and first.stderr == b""
    assert first.stdout == second.stdout
    assert run_cli("examples/aws-two-accounts/values.yaml", "--output-dir", str(tmp_path)).returncode == 0
    kustomization = ruamel.yaml.YAML(typ="safe").load((tmp_path / "kustomization.yaml").read_text())
    files = kustomization["resources"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*files, "kustomization.yaml"])
    assert files == sorted(files)
    joined = "".join("---\n" + (tmp_path / name).read_text() for name in files)
    assert joined.encode() == first.stdout


def test_check_reports_a_stale_directory(tmp_path: pathlib.Path) -> None:
    values = "examples/aws/values.yaml"
    assert run_cli(values, "--output-dir", str(tmp_path)).returncode == 0
    fresh = run_cli(values, "--check", str(tmp_path))
    assert (fresh.returncode, fresh.stdout, fresh.stderr) == (0, b"", b"")
    deployment = next(tmp_path.glob("*-deployment-*.yaml"))
    deployment.write_text(deployment.read_text().replace("replicas: 2", "replicas: 1"))
    (tmp_path / "99-configmap-left-over.yaml").write_text("kind: ConfigMap\n")
    stale = run_cli(values, "--check", str(tmp_path))
    assert stale.returncode == 1 and stale.stdout == b""
    err = stale.stderr.decode()
    assert "-  replicas: 1\n+  replicas: 2\n" in err
    assert "99-configmap-left-over.yaml\n+++ /dev/null" in err
    assert run_cli(values, "--output-dir", str(tmp_path)).returncode == 0
    assert not (tmp_path / "99-configmap-left-over.yaml").exists()
    assert run_cli(values, "--check", str(tmp_path)).returncode == 0


def test_usage_errors_exit_2() -> None:
    assert run_cli().returncode == 2
    assert run_cli("--bogus").returncode == 2
    assert run_cli("--schema", "examples/aws/values.yaml").returncode == 2
    missing = run_cli("no/such/values.yaml")
    assert (missing.returncode, missing.stdout) == (2, b"")
    helped = run_cli("--help")
    assert helped.returncode == 0
    assert b"keys" in helped.stdout and b"issuer-docs" in helped.stdout


def test_stdin_and_encoding(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    values = (ROOT / "examples" / "aws" / "values.yaml").read_bytes()
    piped = subprocess.run(
        [sys.executable, "-m", "kube_sts.compiler.cli", "-"], input=values, capture_output=True, env=env, check=False
    )
    assert piped.returncode == 0
    assert piped.stdout == run_cli("examples/aws/values.yaml").stdout
    latin1 = tmp_path / "values.yaml"
    latin1.write_bytes(b"sts:\n  cluster: \xe9t\xe9\n")
    result = run_cli(str(latin1))
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode().startswith(f"{latin1}:1:1: error: the file is not UTF-8")


def test_keys_and_issuer_docs_are_routed_to_their_subcommands() -> None:
    for subcommand in ("keys", "issuer-docs"):
        result = run_cli(subcommand, "--help")
        assert result.returncode == 0, result.stderr
        assert subcommand.encode() in result.stdout
        assert b"--output-dir" not in result.stdout
