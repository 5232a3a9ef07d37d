"""A whole OpenUnison values file compiles: what kube-sts uses, what it ignores (one line each),
and what it refuses (a typo, an endpoint without rules, two cluster names)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import ruamel.yaml

from kube_sts.compiler import diagnostics, manifest, openunison, source
from kube_sts.runtime import config

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "openunison" / "values.yaml"

# The openunison-kube-sts chart's own values.yaml (defaults), with one endpoint as its comments show.
CHART_DEFAULTS = """\
sts:
  image: ghcr.io/mlbiam/openunison-cli:1.1.0-7dfa6a
  openunison:
    name: orchestra
    namespace: openunison
    host_in_openunison: k8sou.apps.domain.int
  endpoints:
  - name: aws
    audience: sts.aws.com
    path: /aws
    azRules:
    - scope: filter
      constraint: "(namespace=myns)"
    issuer:
      host: "d1dexjaad4ian0.cloudfront.net"
      keypair: "unison-saml2-rp-sig"
    injector:
      label: aws-role
      token_environment_variable_name: "AWS_WEB_IDENTITY_TOKEN_FILE"
      label_value_environment_variable_name: "AWS_ROLE_ARN"
      explicit_certificate_trust: false
"""


def objects(text: str) -> list[dict[str, Any]]:
    return list(ruamel.yaml.YAML(typ="safe", pure=True).load_all(manifest.compile_values(text).text))


def runtime_config(text: str) -> config.RuntimeConfig:
    [config_map] = [o for o in objects(text) if o["kind"] == "ConfigMap"]
    return config.RuntimeConfig.model_validate_json(config_map["data"]["config.json"])


def image_of(text: str) -> str:
    [deployment] = [o for o in objects(text) if o["kind"] == "Deployment"]
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def problems(text: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(diagnostics.ValuesError) as caught:
        source.parse(text)
    return [(d.line, d.column, d.path, d.code) for d in caught.value.diagnostics]


def test_the_example_compiles_with_one_line_per_ignored_section() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "kube_sts.compiler.cli", "examples/openunison/values.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("---\napiVersion: v1\nkind: Namespace\n")
    text = EXAMPLE.read_text()
    document = ruamel.yaml.YAML(typ="safe", pure=True).load(text)
    ignored = sorted(set(document) & openunison.SECTIONS)
    assert len(ignored) == 15
    lines = result.stderr.splitlines()
    # one line each: the ignored top-level sections, sts.image (OpenUnison's sidecar) and sts.openunison
    assert len(lines) == len(ignored) + 2
    source_lines = text.splitlines()
    for line in lines:
        where, level, rest = line.split(": ", 2)
        assert level == "info" and rest.endswith("[openunison-ignored]")
        _, row, column = where.split(":")
        path = rest.split(": ", 1)[0]
        key = path.rsplit(".", 1)[-1]
        assert source_lines[int(row) - 1][int(column) - 1 :].startswith(f"{key}:"), line
    paths = [line.split(": ", 3)[2] for line in lines]
    assert sorted(paths) == sorted([*ignored, "sts.image", "sts.openunison"])
    assert "examples/openunison/values.yaml:5:1: info: network: an OpenUnison setting kube-sts does not use; " in (
        result.stderr
    )


def test_what_the_example_keeps() -> None:
    text = EXAMPLE.read_text()
    runtime = runtime_config(text)
    assert runtime.cluster == "prod-east"  # k8s_cluster_name, so sub is prod-east:<namespace>:<sa> as before
    [endpoint] = runtime.endpoints
    assert endpoint.subject_template == "{cluster}:{namespace}:{saname}"
    assert (endpoint.issuer.url, endpoint.audience) == ("https://d1dexjaad4ian0.cloudfront.net", "sts.aws.com")
    assert endpoint.issuer.keypair == "unison-saml2-rp-sig" and endpoint.issuer.keys.mode == "provided"
    assert endpoint.injector is not None and endpoint.injector.token_file("aws") == "/tokens/token.jwt"
    # OpenUnison's sidecar image is not run: kube-sts's own image is
    assert image_of(text) == "ghcr.io/kube-sts/kube-sts:0.1.0"
    # the sidecars follow the runtime's image (read from its Pod), nothing frozen in the ConfigMap
    assert runtime.sidecar_image is None


def test_the_charts_own_defaults_compile() -> None:
    checked = source.check(CHART_DEFAULTS)
    assert [(n.path, n.code) for n in checked.notes] == [
        ("sts.image", "openunison-ignored"),
        ("sts.openunison", "openunison-ignored"),
    ]
    # its key set is managed (no keys: section): kube-sts would make a new key
    assert [(w.line, w.column, w.path, w.code) for w in checked.warnings] == [
        (16, 16, "sts.endpoints[0].issuer.keypair", "openunison-rekey")
    ]
    assert checked.model.sts.cluster == "kubernetes"  # OpenUnison's own default for k8s_cluster_name
    provided = CHART_DEFAULTS.replace(
        '      keypair: "unison-saml2-rp-sig"\n',
        '      keypair: "unison-saml2-rp-sig"\n      keys:\n        mode: provided\n',
    )
    assert source.check(provided).warnings == ()


def test_a_kube_sts_values_file_gets_no_rekey_warning() -> None:
    plain = CHART_DEFAULTS.split("  endpoints:\n", 1)[1]
    plain = "sts:\n  endpoints:\n" + plain
    checked = source.check(plain)
    assert checked.notes == () and checked.warnings == ()


@pytest.mark.parametrize(
    ("typo", "hint"),
    [
        ("k8s_cluser_name: prod\n", "did you mean 'k8s_cluster_name'?"),
        ("netwrok: {}\n", "did you mean 'network'?"),
        ("trusted_cert: []\n", "did you mean 'trusted_certs'?"),
    ],
)
def test_a_typo_at_the_top_is_still_an_error_with_a_hint(typo: str, hint: str) -> None:
    text = typo + CHART_DEFAULTS
    with pytest.raises(diagnostics.ValuesError) as caught:
        source.parse(text)
    [problem] = caught.value.diagnostics
    assert (problem.line, problem.column, problem.code) == (1, 1, "unknown-key")
    assert problem.message.endswith(hint)


def test_a_typo_under_sts_is_still_an_error_with_a_hint() -> None:
    text = CHART_DEFAULTS.replace("  openunison:\n", "  openunisn:\n")
    with pytest.raises(diagnostics.ValuesError) as caught:
        source.parse(text)
    [problem] = caught.value.diagnostics
    assert (problem.line, problem.column, problem.path) == (3, 3, "sts.openunisn")
    assert problem.message == "unknown key 'openunisn'; did you mean 'openunison'?"


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("registry.corp.example/mirror/kube-sts:0.1.0", "registry.corp.example/mirror/kube-sts:0.1.0"),
        ("registry.corp.example:5000/kube-sts:0.2.0", "registry.corp.example:5000/kube-sts:0.2.0"),
        ("ghcr.io/kube-sts/kube-sts@sha256:" + "a" * 64, "ghcr.io/kube-sts/kube-sts@sha256:" + "a" * 64),
        ("ghcr.io/kube-sts/kube-sts", "ghcr.io/kube-sts/kube-sts:0.1.0"),
    ],
)
def test_image_as_a_string(image: str, expected: str) -> None:
    text = CHART_DEFAULTS.replace("ghcr.io/mlbiam/openunison-cli:1.1.0-7dfa6a", image)
    assert image_of(text) == expected
    assert runtime_config(text).sidecar_image is None  # the sidecars follow the runtime's image
    assert [n.path for n in source.check(text).notes] == ["sts.openunison"]


def test_a_bad_image_string_is_positioned() -> None:
    text = CHART_DEFAULTS.replace("ghcr.io/mlbiam/openunison-cli:1.1.0-7dfa6a", "Not An Image:x")
    assert problems(text) == [(2, 10, "sts.image.repository", "invalid-value")]


def test_k8s_cluster_name_is_the_cluster() -> None:
    text = "k8s_cluster_name: prod-east\n" + CHART_DEFAULTS
    assert runtime_config(text).cluster == "prod-east"
    assert runtime_config(text + "  cluster: prod-east\n").cluster == "prod-east"


def test_two_different_cluster_names_are_an_error() -> None:
    text = "k8s_cluster_name: prod-east\n" + CHART_DEFAULTS + "  cluster: prod-west\n"
    assert problems(text) == [(1, 19, "k8s_cluster_name", "cluster-conflict")]


def test_a_bad_k8s_cluster_name_is_positioned() -> None:
    assert problems('k8s_cluster_name: ""\n' + CHART_DEFAULTS) == [(1, 19, "k8s_cluster_name", "string-too-short")]


@pytest.mark.parametrize(
    "rules",
    ["    azRules: []\n", ""],
    ids=["empty", "absent"],
)
def test_an_endpoint_without_rules_is_an_error_with_the_fix(rules: str) -> None:
    text = CHART_DEFAULTS.replace('    azRules:\n    - scope: filter\n      constraint: "(namespace=myns)"\n', rules)
    with pytest.raises(diagnostics.ValuesError) as caught:
        source.parse(text)
    [problem] = caught.value.diagnostics
    assert problem.code == "no-az-rules" and problem.path == "sts.endpoints[0].azRules"
    assert (problem.line, problem.column) == ((11, 5) if rules else (8, 5))
    assert "OpenUnison let every ServiceAccount" in problem.message
    assert "(namespace=*)" in problem.message
    # the fix the message gives compiles, and keeps OpenUnison's allow-all explicitly
    fixed = text.replace(rules, "") if rules else text
    fixed = fixed.replace(
        "    issuer:\n", '    azRules:\n    - scope: filter\n      constraint: "(namespace=*)"\n    issuer:\n'
    )
    assert runtime_config(fixed).endpoints[0].az_rules[0].constraint == "(namespace=*)"


def test_no_rules_fails_the_cli_with_stdout_empty(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(
        CHART_DEFAULTS.replace('    azRules:\n    - scope: filter\n      constraint: "(namespace=myns)"\n', "")
    )
    result = subprocess.run(
        [sys.executable, "-m", "kube_sts.compiler.cli", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert f"{path}:8:5: error: sts.endpoints[0].azRules: no azRules: kube-sts lets no caller use" in result.stderr


def test_token_path_problems_are_positioned() -> None:
    text = CHART_DEFAULTS + "      tokenPath: tokens/token.jwt\n"
    assert problems(text) == [(22, 18, "sts.endpoints[0].injector.tokenPath", "invalid-value")]


def test_two_endpoints_cannot_share_a_token_directory() -> None:
    second = CHART_DEFAULTS.split("  endpoints:\n", 1)[1]
    second = second.replace("name: aws", "name: aws2").replace("path: /aws", "path: /aws2")
    second = second.replace("unison-saml2-rp-sig", "aws2-keys").replace("label: aws-role", "label: aws2-role")
    text = CHART_DEFAULTS + "      tokenPath: /tokens/token.jwt\n" + second + "      tokenPath: /tokens/other.jwt\n"
    [(line, column, path, code)] = problems(text)
    assert (path, code) == ("sts.endpoints[1].injector.tokenPath", "duplicate-token-directory")
    assert text.splitlines()[line - 1][column - 1 :] == "/tokens/other.jwt"
