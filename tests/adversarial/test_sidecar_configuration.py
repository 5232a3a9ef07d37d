"""The sidecar with a wrong configuration: exit status 1 and one line on stderr saying why.

A Pod in a crash loop shows only the last lines of its log: each start-up error must be one line
that names the option and the problem, never a traceback and never an endless retry.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from harness import runtime as harness

URL = "https://127.0.0.1:9/aws/token"  # never contacted: the configuration is checked first


def run(tmp_path: pathlib.Path, *change: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    tls = harness.make_tls(tmp_path / "tls")
    (tmp_path / "sa").write_text("sa-token\n")
    (tmp_path / "out").mkdir()
    options = {
        "--url": URL,
        "--service-account-token": str(tmp_path / "sa"),
        "--token-file": str(tmp_path / "out" / "token"),
        "--ca-file": str(tls.ca),
    }
    for setting in change:
        name, _, value = setting.partition("=")
        if value == "<none>":
            options.pop(name)
        else:
            options[name] = value.replace("{tmp}", str(tmp_path))
    argv = [sys.executable, "-m", "kube_sts.runtime.sidecar", *(p for o in options.items() for p in o)]
    result = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=20, env={**os.environ, **(env or {})}
    )
    assert result.stdout == ""
    return result.returncode, result.stderr


BAD_PEM = "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("change", "env", "message"),
    [
        (["--ca-file={tmp}/missing.pem"], {}, "cannot read --ca-file {tmp}/missing.pem: No such file or directory"),
        (["--ca-file={tmp}"], {}, "cannot read --ca-file {tmp}: Is a directory"),
        (["--ca-file={tmp}/sa"], {}, "--ca-file {tmp}/sa holds no valid PEM certificate"),
        (
            ["--ca-file=<none>", "--ca-env=KUBE_STS_CA"],
            {"KUBE_STS_CA": BAD_PEM},
            "variable KUBE_STS_CA (--ca-env) holds no valid PEM certificate",
        ),
        (
            ["--ca-file=<none>", "--ca-env=KUBE_STS_CA"],
            {"KUBE_STS_CA": "garbage"},
            "variable KUBE_STS_CA (--ca-env) holds no valid PEM certificate",
        ),
        (
            ["--ca-file=<none>", "--ca-env=KUBE_STS_CA"],
            {"KUBE_STS_CA": "é" + BAD_PEM},
            "variable KUBE_STS_CA (--ca-env) holds no valid PEM certificate (not ASCII)",
        ),
        (
            ["--ca-file=<none>", "--ca-env=KUBE_STS_UNSET"],
            {},
            "variable KUBE_STS_UNSET (--ca-env) holds no CA certificate",
        ),
        (["--ca-file=<none>"], {}, "--ca-file or --ca-env is required"),
        (
            ["--service-account-token={tmp}/missing"],
            {},
            "--service-account-token {tmp}/missing: cannot read the ServiceAccount token: No such file or directory",
        ),
        (
            ["--service-account-token={tmp}"],
            {},
            "--service-account-token {tmp}: cannot read the ServiceAccount token: Is a directory",
        ),
        (["--service-account-token={tmp}/tls/ca.crt"], {}, "the ServiceAccount token: it holds control characters"),
        (["--service-account-token={tmp}/out"], {}, "cannot read the ServiceAccount token: Is a directory"),
        (["--url=http://127.0.0.1:9/aws/token"], {}, "--url 'http://127.0.0.1:9/aws/token' is not an https:// URL"),
        (["--url=https:///aws/token"], {}, "is not an https:// URL with a host"),
        (["--url=https://sts:99999/aws/token"], {}, "is not an https:// URL"),
        (["--url=https://sts/aws/token\r\nX-Injected: 1"], {}, "is not an https:// URL"),
        (
            ["--token-file={tmp}/nowhere/token"],
            {},
            "--token-file {tmp}/nowhere/token: the directory {tmp}/nowhere does not exist",
        ),
    ],
    ids=[
        *("missing-ca-file", "ca-file-is-a-directory", "ca-file-without-pem", "bad-pem-in-variable"),
        *("garbage-in-variable", "non-ascii-variable", "unset-variable", "no-ca-option"),
        *(
            "missing-sa-token",
            "sa-token-is-a-directory",
            "sa-token-with-control-characters",
            "sa-token-is-the-token-directory",
        ),
        *("http-url", "url-without-host", "url-port-out-of-range", "url-with-crlf", "missing-token-directory"),
    ],
)
def test_each_bad_input_exits_1_with_one_line(
    tmp_path: pathlib.Path, change: list[str], env: dict[str, str], message: str
) -> None:
    code, stderr = run(tmp_path, *change, env=env)
    assert code == 1
    assert stderr.count("\n") == 1 and stderr.startswith("kube-sts-sidecar: error: "), stderr
    assert message.replace("{tmp}", str(tmp_path)) in stderr


def test_an_empty_service_account_token_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "empty").write_text("\n")
    code, stderr = run(tmp_path, "--service-account-token={tmp}/empty")
    assert code == 1 and stderr.count("\n") == 1
    assert "cannot read the ServiceAccount token: the file is empty" in stderr
