"""Bad values files: every problem at its exact line, column and code; never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest
import ruamel.yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kube_sts.compiler import cli, diagnostics, manifest, render, source
from kube_sts.runtime import config
from tests.compiler.values_files import aws_values

ROOT = pathlib.Path(__file__).resolve().parents[2]

GOOD = aws_values()


def second(**changes: str) -> str:
    """GOOD plus a second endpoint whose fields default to distinct values."""
    fields = {
        "name": "aws2",
        "path": "/aws2",
        "keypair": "aws2-keys",
        "label": "aws2-role",
        "audience": "sts.amazonaws.com",
    } | changes
    return GOOD + (
        f"  - name: {fields['name']}\n"
        f"    audience: {fields['audience']}\n"
        f"    path: {fields['path']}\n"
        "    azRules:\n"
        "    - scope: filter\n"
        '      constraint: "(namespace=myns)"\n'
        "    issuer:\n"
        "      host: d2.cloudfront.net\n"
        f"      keypair: {fields['keypair']}\n"
        "    injector:\n"
        f"      label: {fields['label']}\n"
        "      token_environment_variable_name: AWS_WEB_IDENTITY_TOKEN_FILE\n"
        "      label_value_environment_variable_name: AWS_ROLE_ARN\n"
    )


def problems(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(diagnostics.ValuesError) as caught:
        source.parse(text)
    return [(d.line, d.column, d.code) for d in caught.value.diagnostics]


CASES: list[tuple[str, str, list[tuple[int, int, str]]]] = [
    ("empty", "", [(1, 1, "empty-file")]),
    ("comments only", "# nothing\n", [(1, 1, "empty-file")]),
    ("a list", "- a\n- b\n", [(1, 1, "not-a-mapping")]),
    ("a scalar", "hello\n", [(1, 1, "not-a-mapping")]),
    ("no sts", "stss:\n  endpoints: []\n", [(1, 1, "missing-section")]),
    ("syntax", "sts:\n  endpoints: [\n", [(3, 1, "yaml-syntax")]),
    ("tab", "sts:\n\tendpoints: []\n", [(2, 1, "yaml-syntax")]),
    ("duplicate key", GOOD.replace("    path: /aws\n", "    path: /aws\n    path: /b\n"), [(6, 5, "duplicate-key")]),
    ("sts is a list", "sts:\n- a\n", [(1, 1, "not-a-mapping")]),
    ("endpoint is a string", "sts:\n  endpoints:\n  - aws\n", [(3, 5, "not-a-mapping")]),
    ("undefined alias", "sts:\n  endpoints: *x\n", [(2, 14, "yaml-syntax")]),
    ("no endpoints", "sts:\n  namespace: x\n", [(1, 1, "missing-key")]),
    ("empty endpoints", "sts:\n  endpoints: []\n", [(2, 3, "too-short")]),
    ("host with scheme", GOOD.replace("host: d1", "host: https://d1"), [(10, 13, "invalid-value")]),
    ("path without slash", GOOD.replace("path: /aws", "path: aws"), [(5, 11, "invalid-value")]),
    ("unknown key", GOOD.replace("    audience:", "    audiense:"), [(3, 5, "missing-key"), (4, 5, "unknown-key")]),
    ("unknown top key", GOOD + "  replica: 3\n", [(16, 3, "unknown-key")]),
    ("missing audience", GOOD.replace("    audience: sts.amazonaws.com\n", ""), [(3, 5, "missing-key")]),
    ("bad filter", GOOD.replace('"(namespace=myns)"', '"(namespace=myns"'), [(8, 19, "invalid-value")]),
    ("bad scope", GOOD.replace("scope: filter", "scope: regex"), [(7, 14, "literal-error")]),
    ("bad env name", GOOD.replace("name: AWS_ROLE_ARN", "name: AWS-ROLE"), [(15, 46, "invalid-value")]),
    ("bad label", GOOD.replace("label: aws-role", "label: aws role"), [(13, 14, "invalid-value")]),
    ("upper-case name", GOOD.replace("name: aws\n", "name: AWS\n"), [(3, 11, "invalid-value")]),
    ("lifetime too long", GOOD + "    token:\n      lifetime: 48h\n", [(17, 17, "less-than-equal")]),
    ("bad algorithm", GOOD + "    token:\n      algorithm: HS256\n", [(17, 18, "literal-error")]),
    ("timeout", GOOD + "  webhook:\n    timeoutSeconds: 31\n", [(17, 21, "less-than-equal")]),
    ("failure policy", GOOD + "  webhook:\n    failurePolicy: Open\n", [(17, 20, "literal-error")]),
    ("version", GOOD + '  kubernetesVersion: "2.0"\n', [(16, 22, "invalid-value")]),
    ("replicas", GOOD + "  replicas: 0\n", [(16, 13, "greater-than-equal")]),
    ("duplicate name", second(name="aws"), [(16, 11, "duplicate-name")]),
    ("duplicate path", second(path="/aws"), [(18, 11, "duplicate-path")]),
    ("duplicate label", second(label="aws-role"), [(26, 14, "duplicate-label")]),
    ("duplicate keypair", second(keypair="aws-keys"), [(24, 16, "duplicate-keypair")]),
    (
        "several at once, sorted",
        GOOD.replace("path: /aws", "path: aws").replace("host: d1", "host: https://d1") + "  replica: 3\n",
        [(5, 11, "invalid-value"), (10, 13, "invalid-value"), (16, 3, "unknown-key")],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES], ids=[c[0] for c in CASES])
def test_bad_values(text: str, expected: list[tuple[int, int, str]]) -> None:
    assert problems(text) == expected


def test_audiences_may_repeat() -> None:
    source.parse(second(audience="sts.amazonaws.com"))


def test_did_you_mean() -> None:
    with pytest.raises(diagnostics.ValuesError) as caught:
        source.parse(GOOD.replace("    audience:", "    audiense:") + "  replica: 3\n")
    messages = [d.message for d in caught.value.diagnostics if d.code == "unknown-key"]
    assert messages == [
        "unknown key 'audiense'; did you mean 'audience'?",
        "unknown key 'replica'; did you mean 'replicas'?",
    ]


def test_cli_output_format(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "values.yaml"
    bad.write_text(GOOD.replace("host: d1", "host: https://d1"))
    result = subprocess.run(
        [sys.executable, "-m", "kube_sts.compiler.cli", str(bad)],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"{bad}:10:13: error: sts.endpoints[0].issuer.host: "
        "'https://d1dexjaad4ian0.cloudfront.net' is not a host name (no scheme, port or path) [invalid-value]\n"
        "        host: https://d1dexjaad4ian0.cloudfront.net\n"
        "              ^\n"
        "1 error\n"
    )


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def outcome(text: str) -> None:
    try:
        manifest.compile_values(text)
    except diagnostics.ValuesError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.line >= 1 and d.column >= 1 and d.code
        assert diagnostics.render(exc.diagnostics, "values.yaml", text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("sts:endpoints- \n\t[]{}\"'&*!|>#%@`,?name/aws0")), max_size=120))
def test_arbitrary_text_never_crashes(text: str) -> None:
    outcome(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_values)
def test_arbitrary_structures_under_sts_never_crash(value: object) -> None:
    outcome(json.dumps({"sts": value}))
    outcome(json.dumps({"sts": {"endpoints": [value]}}))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cluster=st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
    audience=st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
)
def test_arbitrary_strings_survive_rendering(cluster: str, audience: str) -> None:
    """Values are never spliced into YAML unquoted: whatever a string holds comes out unchanged."""
    text = render.tojson(
        {
            "sts": {
                "cluster": cluster,
                "endpoints": [
                    {
                        "name": "a",
                        "audience": audience,
                        "path": "/a",
                        "azRules": [{"scope": "filter", "constraint": "(namespace=a)"}],
                        "issuer": {"host": "h.example", "keypair": "k"},
                    }
                ],
            }
        }
    )
    try:
        result = manifest.compile_values(text)
    except diagnostics.ValuesError as exc:
        # Only length limits may reject these strings.
        assert {d.code for d in exc.diagnostics} <= {"string-too-long"}
        return
    objects = list(ruamel.yaml.YAML(typ="safe", pure=True).load_all(result.text))
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    runtime = config.RuntimeConfig.model_validate_json(config_map["data"]["config.json"])
    assert runtime.cluster == cluster
    assert runtime.endpoints[0].audience == audience


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(yaml_values.map(lambda v: json.dumps({"sts": v})), st.text(max_size=80)))
def test_cli_exits_0_or_1_never_a_traceback(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "values.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([str(path)])
    assert code in (0, 1)
    if code == 1:
        assert out.getvalue() == ""
        assert f"{path}:" in err.getvalue() and "Traceback" not in err.getvalue()
    else:
        assert out.getvalue().startswith("---\napiVersion: v1\nkind: Namespace\n")
