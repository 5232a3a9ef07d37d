"""`sts-compile issuer-docs` against the running token service, and offline from the key set file."""

from __future__ import annotations

import io
import pathlib

from harness import runtime as harness
from kube_sts.compiler import keys as keys_cli
from kube_sts.runtime import server
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi


def run(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    out = io.StringIO()
    code = keys_cli.main(list(argv), out, err)
    assert out.getvalue() == ""
    return code, err.getvalue()


def tree(directory: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_online_and_offline_documents_are_identical_and_follow_reloads(
    kube: kubeapi.KubeAPI, tmp_path: pathlib.Path
) -> None:
    keys_dir = tmp_path / "keys"
    (keys_dir / "aws").mkdir(parents=True)
    key_file = keys_dir / "aws" / keymanager.DATA_KEY
    assert run("keys", "create", "--endpoint", "aws", "--algorithm", "RS256", "-o", str(key_file))[0] == 0

    runtime = harness.runtime_config(harness.endpoint("aws"))
    manager = keymanager.KeyManager.from_config(runtime, keys_dir=keys_dir, fetcher=None)
    manager.refresh()
    app = server.App(runtime, kube=kube, keys=manager)
    tls = harness.make_tls(tmp_path / "tls")

    def both(name: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
        online, offline = tmp_path / f"{name}-online", tmp_path / f"{name}-offline"
        url = f"{running.url}/aws/issuer-docs"
        code, err = run("issuer-docs", "--url", url, "--cacert", str(tls.ca), "-o", str(online))
        assert code == 0, err
        code, err = run("issuer-docs", "--keyset", str(key_file), "--host", harness.ISSUER_HOST, "-o", str(offline))
        assert code == 0, err
        return tree(online), tree(offline)

    with harness.RunningServer(app, tls) as running:
        online, offline = both("first")
        assert online == offline
        assert sorted(online) == [".well-known/openid-configuration", "certs"]
        assert online[".well-known/openid-configuration"].count(b'"issuer": "https://issuer.example"') == 1

        # A new key in the mounted file is served after the next refresh, without a restart.
        assert run("keys", "add", str(key_file), "--lead", "1h")[0] == 0
        manager.refresh()
        online, offline = both("second")
        assert online == offline
        assert online["certs"].count(b'"kid"') == 2


def test_readyz_reports_why_no_key_can_sign(kube: kubeapi.KubeAPI, tmp_path: pathlib.Path) -> None:
    keys_dir = tmp_path / "keys"
    key_file = keys_dir / "aws" / keymanager.DATA_KEY
    key_file.parent.mkdir(parents=True)
    runtime = harness.runtime_config(harness.endpoint("aws"))
    manager = keymanager.KeyManager.from_config(runtime, keys_dir=keys_dir, fetcher=None)
    app = server.App(runtime, kube=kube, keys=manager)

    cases = [
        (b'{"version": 1, "keys": [{"kid": "x"', "corrupt or truncated JSON"),
        (b'{"version": 1, "keys": []}', "the key set has no keys"),
    ]
    for data, reason in cases:
        key_file.write_bytes(data)
        manager.refresh()
        answer = harness.asgi_call(app, "GET", "/readyz")
        assert answer.status == 503
        assert reason in answer.body.decode()
        assert harness.asgi_call(app, "GET", "/aws/certs").json() == {"keys": []}

    run("keys", "create", "--endpoint", "other", "-o", str(key_file), "--force", "--algorithm", "ES256")
    manager.refresh()
    answer = harness.asgi_call(app, "GET", "/readyz")
    assert answer.status == 503
    assert "the key set belongs to endpoint 'other', not 'aws'" in answer.body.decode()

    run("keys", "create", "--endpoint", "aws", "-o", str(key_file), "--force", "--algorithm", "ES256")
    manager.refresh()
    assert harness.asgi_call(app, "GET", "/readyz").json()["checks"]["keys"]["ready"] is True
