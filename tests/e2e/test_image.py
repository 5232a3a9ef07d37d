"""Every command the rendered manifests and the injected patch run exists in the installed package."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import subprocess
import sys

import jsonpatch
import yaml

from kube_sts.runtime import config, injection
from tests.webhook.test_injection import CA, seed_pod

ROOT = pathlib.Path(__file__).resolve().parents[2]


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


def test_manifest_and_patch_commands_exist(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    values = ROOT / "examples" / "aws" / "values.yaml"
    subprocess.run([sys.executable, "-m", "kube_sts.compiler.cli", "--output-dir", str(out), str(values)], check=True)
    commands: list[list[str]] = []
    runtime = None
    for manifest in sorted(out.glob("*.yaml")):
        for document in yaml.safe_load_all(manifest.read_text()):
            if isinstance(document, dict) and document.get("kind") == "Deployment":
                commands += commands_of(document["spec"]["template"]["spec"])
            if isinstance(document, dict) and document.get("kind") == "ConfigMap":
                runtime = config.RuntimeConfig.model_validate_json(document["data"]["config.json"])
    assert runtime is not None and commands
    for native in (True, False):
        rt = runtime.model_copy(update={"native_sidecars": native})
        pod = seed_pod()
        patched = jsonpatch.apply_patch(pod, injection.patch(rt, rt.endpoints, pod, CA).operations)
        commands += commands_of(patched["spec"])
    scripts = {e.name: e for e in importlib.metadata.entry_points(group="console_scripts")}
    assert {"kube-sts-server", "kube-sts-sidecar"} <= {c[0] for c in commands}
    bin_dir = pathlib.Path(sys.executable).parent
    for command in commands:
        assert command[0] in scripts, command[0]
        assert scripts[command[0]].value.startswith("kube_sts."), command[0]
        helptext = subprocess.run(
            [str(bin_dir / command[0]), "--help"], check=True, capture_output=True, text=True, timeout=60
        ).stdout
        options = set(re.findall(r"--[a-z][a-z-]*", helptext))
        used = {arg for arg in command[1:] if arg.startswith("--")}
        assert used <= options, (command[0], used - options)


def test_dockerfile_installs_the_server_extra_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert '".[server]"' in text and "USER 65532" in text
    assert "command -v kube-sts-server kube-sts-sidecar" in text
    for source in re.findall(r"^COPY (?!--)(\S+)", text, re.M):
        assert (ROOT / source).exists(), source


def test_runtime_imports_nothing_the_image_removes() -> None:
    """The image drops the compiler's packages; the runtime's console commands must not need them."""
    removed = re.search(r"pip uninstall --yes ([^\\\n]+)", (ROOT / "Dockerfile").read_text())
    assert removed is not None
    distributions = removed.group(1).split()
    assert {"jinja2", "ruamel.yaml"} <= set(distributions)
    modules = {name.split(".")[0].lower() for name in distributions}
    probe = (
        "import sys, kube_sts.runtime.server, kube_sts.runtime.sidecar, kube_sts.runtime.webhook;"
        "print(' '.join(sorted({m.split('.')[0].lower() for m in sys.modules})))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    )
    assert not loaded & modules
    assert "jwt" not in loaded  # PyJWT is a test dependency: the image does not install it
    assert "kube_sts" in loaded
