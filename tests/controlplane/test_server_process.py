"""``kube-sts-server --config PATH`` as a process against the real API server: TLS from mounted
files, a kubeconfig with the cluster's CA and a client certificate, a managed key set created as a
Secret, a TokenRequest bound to a real Pod exchanged, SIGTERM."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.error
import urllib.request

from harness import runtime as harness
from tests.controlplane import cluster, deployment
from tests.controlplane.test_exchange import create_pod

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_server_process_serves_tokens_and_stops_on_sigterm(
    control_plane: cluster.ControlPlane, deployed: deployment.Deployment, myns: str, tmp_path: pathlib.Path
) -> None:
    managed = harness.endpoint(mode="managed")
    # issuer.example is not reachable, and a key the issuer does not serve never signs while
    # waitForPublication is on (tests/keys and tests/adversarial cover the wait); a key-set Secret
    # of its own in the kube-sts namespace, so that its creation is this process's
    keys = managed.issuer.keys.model_copy(update={"wait_for_publication": False})
    issuer = managed.issuer.model_copy(update={"keys": keys, "keypair": "entrypoint-keys"})
    managed = managed.model_copy(update={"issuer": issuer})
    assert control_plane.get("secret", "entrypoint-keys", deployed.namespace) is None
    base_config = harness.runtime_config(managed)
    # cert-manager mode: the certificate comes from the mounted files (``--tls-dir``)
    tls_config = base_config.tls.model_copy(update={"mode": "cert-manager", "dns_names": ("localhost",)})
    runtime = base_config.model_copy(update={"tls": tls_config})
    config_file = tmp_path / "config.json"
    config_file.write_text(runtime.model_dump_json(by_alias=True))
    tls = harness.make_tls(tmp_path / "tls")
    # the admin kubeconfig (TLS, client certificate): the rendered RBAC covers only the rendered Secrets
    kubeconfig = control_plane.kubeconfig
    port = harness.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update({"KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT)})
    command = harness.server_command(config_file, keys_dir=tmp_path / "keys", tls_dir=tls.cert.parent, port=port)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    context = tls.client_context()
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                with urllib.request.urlopen(base + "/readyz", context=context, timeout=5) as response:
                    ready = json.loads(response.read())
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.2)
        assert ready["ready"] is True
        # managed mode: the runtime created the key set Secret through the API server
        secret = control_plane.get("secret", "entrypoint-keys", deployed.namespace)
        assert secret is not None and "keyset.json" in secret["data"]
        pod = create_pod(control_plane, myns, "entrypoint", labelled=False)
        sa_token = control_plane.token(myns, "app", harness.STS_AUDIENCE, pod=pod)
        request = urllib.request.Request(
            base + "/aws/token", method="POST", headers={"Authorization": f"Bearer {sa_token}"}
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            minted = json.loads(response.read())
        assert minted["expires_in"] == 3600
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it
    assert process.returncode == -signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    [audit] = [json.loads(line) for line in stdout.splitlines()]
    assert audit["decision"] == "allow" and audit["namespace"] == "myns"
    assert sa_token not in stdout + stderr and minted["token"] not in stdout + stderr
