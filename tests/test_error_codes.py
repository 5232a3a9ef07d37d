"""Every error code the runtime can answer is listed in the README, under the status it comes with.

The codes are collected from the source: the ``(status, "code", ...)`` literals of ``HTTPError``,
``error_response`` and the transport's ``_refuse``, and the codes ``_review_failure`` returns. A code
passed on from a variable must be one the test knows to forward an error already raised elsewhere,
so that a code built some other way cannot slip past the list."""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "kube_sts" / "runtime"
README = (ROOT / "README.md").read_text()
RAISERS = {"HTTPError", "error_response", "_refuse"}
FORWARDED = {"exc.code", "refused.code", "error.code", "code"}
"""Codes passed on unchanged: a caught or cached ``HTTPError``'s, or ``_refuse``'s own parameter."""
REVIEW_FAILURE = "_review_failure"


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _review_failures(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == REVIEW_FAILURE:
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.Return)
                    and isinstance(inner.value, ast.Constant)
                    and isinstance(inner.value.value, str)
                ):
                    found.add(inner.value.value)
    return found


def codes_in_source() -> set[tuple[int, str]]:
    found: set[tuple[int, str]] = set()
    for path in sorted(RUNTIME.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _name(node.func) in RAISERS and len(node.args) >= 2):
                continue
            status, code = node.args[0], node.args[1]
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                assert isinstance(status, ast.Constant) and isinstance(status.value, int), where
                found.add((status.value, code.value))
            elif isinstance(code, ast.Call) and _name(code.func) == REVIEW_FAILURE:
                assert isinstance(status, ast.Constant) and isinstance(status.value, int), where
                found |= {(status.value, each) for each in _review_failures(tree)}
            else:
                assert ast.unparse(code) in FORWARDED, f"{where}: an error code the test cannot read"
    return found


def codes_in_readme() -> set[tuple[int, str]]:
    start = README.index('Errors are JSON `{"error": "<code>"')
    paragraph = README[start : README.index("\n\n", start)]
    listed: set[tuple[int, str]] = set()
    status = None
    for number, code in re.findall(r"\b([45]\d\d)\b|`([a-z_]+)`", paragraph):
        if number:
            status = int(number)
        elif status is not None:
            listed.add((status, code))
    return listed


def test_the_collector_reads_the_codes() -> None:
    found = codes_in_source()
    assert {(401, "token_expired"), (503, "apiserver_unavailable"), (408, "request_timeout")} <= found
    assert {(400, "bad_request"), (503, "no_ca")} <= found


def test_the_readme_lists_every_error_code_with_its_status() -> None:
    missing = codes_in_source() - codes_in_readme()
    assert not missing, f"error codes the README does not list: {sorted(missing)}"
