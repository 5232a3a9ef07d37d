"""The image: every command the rendered manifests and the injected patch run exists in the installed
package; the Dockerfile builds from a pinned base and a hash-checked lock file that is current."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import pathlib
import re
import subprocess
import sys
import tomllib
from typing import Any

import jsonpatch
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from harness.reviews import seed_pod
from kube_sts.runtime import config
from kube_sts.runtime.webhook import injection
from tests.webhook.test_injection import CA

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPILER_ONLY = {"jinja2", "ruamel-yaml", "pyyaml"}
"""pyproject.toml's dependencies that only sts-compile needs (PyYAML still comes with kubernetes)."""


def commands_of(pod_spec: dict[str, object]) -> list[list[str]]:
    found = []
    for key in ("initContainers", "containers"):
        for container in pod_spec.get(key, []) or []:  # type: ignore[attr-defined]
            if "command" in container:
                found.append([*container["command"], *container.get("args", [])])
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "exec" in container.get(probe, {}):
                    found.append(container[probe]["exec"]["command"])
    return found


def render(tmp_path: pathlib.Path, values: pathlib.Path = ROOT / "examples" / "aws" / "values.yaml") -> Rendered:
    """The Deployment's Pod spec and the runtime config of ``sts-compile values``, and the Pod specs
    the webhook makes of a plain Pod (native sidecar and init container plus sidecar)."""
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "kube_sts.compiler.cli", "--output-dir", str(out), str(values)], check=True)
    pod_spec: dict[str, Any] | None = None
    runtime = None
    for manifest in sorted(out.glob("*.yaml")):
        for document in yaml.safe_load_all(manifest.read_text()):
            if isinstance(document, dict) and document.get("kind") == "Deployment":
                pod_spec = document["spec"]["template"]["spec"]
            if isinstance(document, dict) and document.get("kind") == "ConfigMap":
                runtime = config.RuntimeConfig.model_validate_json(document["data"]["config.json"])
    assert runtime is not None and pod_spec is not None
    if runtime.sidecar_image is None:  # what the runtime reads from its own Pod at start
        [own] = [c for c in pod_spec["containers"] if c["name"] == config.RUNTIME_CONTAINER]
        runtime = runtime.model_copy(update={"sidecar_image": own["image"]})
    injected = []
    for native in (True, False):
        rt = runtime.model_copy(update={"native_sidecars": native})
        pod = seed_pod()
        injected.append(jsonpatch.apply_patch(pod, injection.patch(rt, rt.endpoints, pod, CA).operations)["spec"])
    return Rendered(deployment=pod_spec, runtime=runtime, injected=injected)


@dataclasses.dataclass(frozen=True)
class Rendered:
    deployment: dict[str, Any]
    runtime: config.RuntimeConfig
    injected: list[dict[str, Any]]

    def commands(self) -> list[list[str]]:
        """Every command the Deployment and the injected Pods run (containers and exec probes)."""
        found = commands_of(self.deployment)
        for spec in self.injected:
            found += commands_of(spec)
        return found


def options_used_exist(command: list[str], helptext: str) -> set[str]:
    """The options ``command`` passes that its ``--help`` does not list."""
    options = set(re.findall(r"--[a-z][a-z-]*", helptext))
    return {arg for arg in command[1:] if arg.startswith("--")} - options


def test_manifest_and_patch_commands_exist(tmp_path: pathlib.Path) -> None:
    commands = render(tmp_path).commands()
    scripts = {e.name: e for e in importlib.metadata.entry_points(group="console_scripts")}
    assert {"kube-sts-server", "kube-sts-sidecar"} <= {c[0] for c in commands}
    bin_dir = pathlib.Path(sys.executable).parent
    for command in commands:
        assert command[0] in scripts, command[0]
        assert scripts[command[0]].value.startswith("kube_sts."), command[0]
        helptext = subprocess.run(
            [str(bin_dir / command[0]), "--help"], check=True, capture_output=True, text=True, timeout=60
        ).stdout
        assert not options_used_exist(command, helptext), command


def stages(text: str) -> list[str]:
    return re.split(r"^FROM ", text, flags=re.M)[1:]


def test_dockerfile_pins_the_base_by_digest_and_runs_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    preamble = text.split("\nFROM ", 1)[0]
    sources = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(sources) == 2
    for source in sources:
        # by digest, never by a tag alone: a literal sha256 or the build argument that must hold one
        assert re.fullmatch(r"python:3\.11-slim[\w.-]*@(sha256:[0-9a-f]{64}|\$\{PYTHON_DIGEST\})", source), source
    if any("${PYTHON_DIGEST}" in source for source in sources):
        # declared before the first FROM, with no default (a build without it fails) or a digest
        declared = re.search(r"^ARG PYTHON_DIGEST(=\S+)?$", preamble, re.M)
        assert declared is not None
        assert declared.group(1) is None or re.fullmatch(r"=sha256:[0-9a-f]{64}", declared.group(1))
    final = stages(text)[-1]
    assert "USER 65532" in final
    assert "command -v kube-sts-server kube-sts-sidecar" in final
    for source in re.findall(r"^COPY (?!--)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path


def test_dockerfile_literals_are_the_runtime_contract() -> None:
    """A Dockerfile cannot read Python: its user and command are literals, which must be the values
    the manifests render from ``config`` (``runAsUser``, the Deployment's command)."""
    final = stages(DOCKERFILE.read_text())[-1]
    uid = config.RUN_AS_UID
    assert re.findall(r"^USER (\S+)$", final, re.M) == [f"{uid}:{uid}"]
    assert re.search(rf"groupadd --system --gid {uid} nonroot\b", final)
    assert re.search(rf"useradd --system --uid {uid} --gid {uid} ", final)
    numbers = {int(number) for number in re.findall(r"(?:--gid|--uid|USER) (\d+)", final)}
    assert numbers == {uid}
    [command] = re.findall(r"^CMD (.+)$", final, re.M)
    assert json.loads(command) == list(config.SERVER_COMMAND)
    assert config.CONFIG_PATH in config.SERVER_COMMAND


def test_dockerfile_installs_only_hash_checked_locked_packages() -> None:
    text = DOCKERFILE.read_text()
    installs = re.findall(r"pip install ([^\\\n&]+)", text)
    assert installs
    for args in installs:
        if "-r requirements/" in args:
            assert "--require-hashes" in args and "--no-deps" in args, args
        else:  # only the kube-sts wheel built from this tree, from the local directory
            assert "--no-deps" in args and "--no-index" in args and "/wheels/kube_sts-" in args, args
    assert "-r requirements/runtime.lock" in text and "-r requirements/build.lock" in text
    assert "--no-build-isolation" in text  # the build backend is the locked one, nothing fetched
    final = stages(text)[-1]
    assert re.search(r"pip uninstall --yes pip setuptools wheel", final)
    assert re.search(r"/opt/kube-sts/bin/pip uninstall --yes pip setuptools", text)
    assert "find_spec" in final and "'pip', 'setuptools', 'wheel'" in final  # checked at build time


def locked(name: str) -> dict[str, tuple[Version, int]]:
    """``requirements/<name>``: canonical name -> (pinned version, number of hashes)."""
    found: dict[str, tuple[Version, int]] = {}
    text = (ROOT / "requirements" / name).read_text()
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9._-]+)==([^\s;\\]+)", entry)
        if match:
            found[canonicalize_name(match.group(1))] = (Version(match.group(2)), entry.count("--hash=sha256:"))
    return found


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(line) for line in [*project["dependencies"], *project["optional-dependencies"]["server"]]]
    return [req for req in declared if canonicalize_name(req.name) not in COMPILER_ONLY]


def test_lock_files_name_the_command_that_made_them() -> None:
    for name in ("runtime", "build"):
        text = (ROOT / "requirements" / f"{name}.lock").read_text()
        assert re.search(rf"^#    pip-compile .*--generate-hashes.* requirements/{name}\.in$", text, re.M), name


def test_runtime_lock_is_current_with_pyproject() -> None:
    """requirements/runtime.in is pyproject's runtime dependencies; runtime.lock pins each of them
    and everything they need (walked through the installed metadata) with hashes, at versions the
    specifiers allow, and the test environment runs exactly those versions."""
    wanted = runtime_requirements()
    listed = [
        Requirement(line.split("#")[0])
        for line in (ROOT / "requirements" / "runtime.in").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert sorted(map(str, listed)) == sorted(map(str, wanted)), "requirements/runtime.in differs from pyproject.toml"
    lock = locked("runtime.lock")
    environment = {str(k): str(v) for k, v in default_environment().items()}
    pending, seen, problems = list(wanted), set(), []
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({**environment, "extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name not in lock:
            problems.append(f"{name} is not in requirements/runtime.lock")
            continue
        version, hashes = lock[name]
        if hashes == 0:
            problems.append(f"{name} has no hash")
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{name}=={version} does not satisfy {requirement}")
        if name in seen:
            continue
        seen.add(name)
        installed = Version(importlib.metadata.version(name))
        if installed != version:
            problems.append(f"{name}: the tests run {installed}, the image gets {version} (pip install -r the lock)")
        pending += [Requirement(line) for line in importlib.metadata.requires(name) or []]
    assert not problems, problems
    assert {"kubernetes", "pydantic", "cryptography", "uvicorn", "orjson", "pyyaml"} <= seen
    assert not COMPILER_ONLY - {"pyyaml"} & set(lock)  # the compiler's packages stay out
    unused = set(lock) - seen
    assert not unused, f"requirements/runtime.lock pins packages nothing needs: {sorted(unused)}"


def test_build_lock_pins_the_build_backend() -> None:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    lock = locked("build.lock")
    for line in build:
        requirement = Requirement(line)
        version, hashes = lock[canonicalize_name(requirement.name)]
        assert hashes > 0 and requirement.specifier.contains(version)


PROBE = """
import importlib.metadata, re, sys

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

allowed = set(sys.argv[1:])
absent = {
    module
    for module, owners in importlib.metadata.packages_distributions().items()
    if not {canonical(owner) for owner in owners} & allowed
}

class Absent:
    # What the image does not install cannot be imported (optional imports fall back)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in absent:
            raise ImportError(f"No module named {name!r} in the image")
        return None

sys.meta_path.insert(0, Absent())
import kube_sts.runtime.server, kube_sts.runtime.sidecar, kube_sts.runtime.webhook.admission
import kube_sts.runtime.keys.manager, kube_sts.runtime.kube.api
print(" ".join(sorted({module.split(".")[0] for module in sys.modules})))
"""


def test_runtime_runs_on_what_the_image_installs() -> None:
    """The image holds only the locked packages and kube-sts: the runtime's modules import with
    every other installed distribution hidden (the compiler's jinja2 and ruamel.yaml, PyJWT and
    the other test packages), and do not load the compiler's packages."""
    allowed = [*locked("runtime.lock"), "kube-sts"]
    answer = subprocess.run([sys.executable, "-c", PROBE, *allowed], capture_output=True, text=True, check=False)
    assert answer.returncode == 0, answer.stderr
    loaded = set(answer.stdout.split())
    assert "kube_sts" in loaded and "kubernetes" in loaded
    assert not {"jwt", "jinja2", "ruamel"} & loaded
