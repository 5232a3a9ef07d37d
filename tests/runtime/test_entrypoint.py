"""``kube-sts-server --config PATH`` as a process: TLS from mounted files, kubeconfig, a managed key set, SIGTERM."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request

from tests import apiserver
from tests.runtime import harness

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_console_script_is_registered() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kube-sts-server"] == "kube_sts.runtime.server:main"


def test_missing_config_exits_1(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kube_sts.runtime.server", "--config", str(tmp_path / "none.json")],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot load" in result.stderr and "Traceback" not in result.stderr


def test_server_process_serves_tokens_and_stops_on_sigterm(
    api_server: apiserver.APIServer, tmp_path: pathlib.Path
) -> None:
    managed = harness.endpoint(mode="managed")
    # issuer.example is not reachable, and a key the issuer does not serve never signs while
    # waitForPublication is on (tests/keys and tests/adversarial cover the wait)
    keys = managed.issuer.keys.model_copy(update={"wait_for_publication": False})
    managed = managed.model_copy(update={"issuer": managed.issuer.model_copy(update={"keys": keys})})
    base_config = harness.runtime_config(managed)
    # cert-manager mode: the certificate comes from the mounted files (``--tls-dir``)
    tls_config = base_config.tls.model_copy(update={"mode": "cert-manager", "dns_names": ("localhost",)})
    runtime = base_config.model_copy(update={"tls": tls_config})
    config_file = tmp_path / "config.json"
    config_file.write_text(runtime.model_dump_json(by_alias=True))
    tls = harness.make_tls(tmp_path / "tls")
    kubeconfig = harness.write_kubeconfig(tmp_path / "kubeconfig", api_server.url)
    port = harness.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update({"KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT)})
    command = [sys.executable, "-m", "kube_sts.runtime.server", "--config", str(config_file)]
    command += ["--keys-dir", str(tmp_path / "keys"), "--tls-dir", str(tls.cert.parent)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
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
        secret = api_server.get("v1", "secrets", "kube-sts", "aws-keys")
        assert secret is not None and "keyset.json" in secret["data"]
        pod = api_server.add_pod("myns", "app-1")
        sa_token = api_server.issue_token("myns", "app", pod=pod, audiences=[harness.STS_AUDIENCE])
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
