"""The layering contracts of ``[tool.importlinter]`` hold, and each fails on a forbidden import.

``lint-imports`` (import-linter, run by ``.ci/run``) reads the import graph of the source tree.
Each contract is proved able to fail: a copy of the tree gets one forbidden import and
``lint-imports`` must name that contract as broken. A forbidden contract also counts indirect
imports, so each forbidden import below is one that only its own contract forbids (``kube_sts``
importing ``tests`` would also break the contracts of ``harness`` and ``bench``, which import ``kube_sts``).
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import grimp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINT_IMPORTS = pathlib.Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: pathlib.Path) -> subprocess.CompletedProcess[str]:
    # lint-imports puts its working directory first on sys.path, so the tree it reads is ``tree``
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], check=False, cwd=tree, capture_output=True, text=True, timeout=300
    )


def test_the_source_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    tree = tmp_path_factory.mktemp("tree")
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    for package in ("kube_sts", "harness", "tests", "bench"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__", "build"))
    return tree


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (
            "kube_sts/runtime/config.py",
            "from kube_sts.compiler import values",
            "the runtime never imports the compiler, its templates or its libraries",
        ),
        ("kube_sts/runtime/webhook/injection.py", "import jinja2", "the runtime never imports the compiler"),
        (
            "kube_sts/runtime/sidecar.py",
            "from kube_sts.runtime import config",
            "the sidecar imports only the standard library",
        ),
        ("kube_sts/runtime/sidecar.py", "import cryptography", "the sidecar imports only the standard library"),
        ("kube_sts/runtime/kube/api.py", "from kube_sts.runtime.tokens import callers", "runtime layers"),
        ("kube_sts/runtime/config.py", "from kube_sts.runtime import server", "runtime layers"),
        ("kube_sts/runtime/keys/manager.py", "from kube_sts.runtime.tls import certificates", "runtime layers"),
        ("kube_sts/compiler/cli.py", "from harness import apiserver", "the product never imports its test support"),
        ("kube_sts/compiler/values.py", "import bench.keys", "the product never imports its test support"),
        ("harness/runtime.py", "import bench.keys", "the test support never imports the test suite"),
        ("bench/keys.py", "from tests import awssts", "the benchmarks never import the test suite"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(copy: pathlib.Path, module: str, line: str, contract: str) -> None:
    path = copy / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{line}  # noqa\n")
        result = lint_imports(copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    broken = [text for text in result.stdout.splitlines() if text.endswith(" BROKEN")]
    assert len(broken) == 1 and broken[0].startswith(contract), result.stdout


def test_the_sidecar_imports_the_standard_library_and_nothing_else() -> None:
    """Every module the sidecar imports, not only those the forbidden contract lists."""
    graph = grimp.build_graph("kube_sts", include_external_packages=True, cache_dir=None)
    imported = graph.find_modules_directly_imported_by("kube_sts.runtime.sidecar")
    assert imported, "the graph lost the sidecar's imports"
    assert {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names} == set()
