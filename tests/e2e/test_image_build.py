"""The runtime image, built here by image/build.py (mmdebstrap, the locked wheels, umoci) and
checked by unpacking it with GNU tar and running its commands by chroot as the image's user."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from ruamel.yaml import YAML

from harness.reviews import seed_pod
from image import build
from kube_sts.runtime.webhook import injection
from tests.e2e.test_image import PROBE, ROOT, locked, options_used_exist, render

pytestmark = pytest.mark.slow

FORBIDDEN = ("pip", "setuptools", "wheel", "jinja2", "ruamel", "_pytest", "pytest", "jwt", "hypothesis", "harness")
"""Modules the image must not hold: packaging tools, the compiler's packages, test packages, the
test support (harness/)."""
COMPILERS = ("cc", "gcc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc-12", "ld", "as")


def in_image(
    rootfs: pathlib.Path, environment: list[str], user: str, *command: str
) -> subprocess.CompletedProcess[str]:
    """``command`` inside ``rootfs`` as ``user`` with exactly the image's environment."""
    return subprocess.run(
        ["chroot", f"--userspec={user}", str(rootfs), "/usr/bin/env", "-i", *environment, *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_image_is_reproducible_and_runs_what_the_manifests_and_the_webhook_reference(tmp_path: pathlib.Path) -> None:
    assert os.geteuid() == 0, "building the image needs root (chroot, ownership); CI runs as root"
    epoch = build.source_date_epoch()
    started = time.monotonic()
    first = build.build(tmp_path / "a" / "oci", "test", work=tmp_path)
    between = time.monotonic()
    second = build.build(tmp_path / "b" / "oci", "test", work=tmp_path)
    print(
        f"\nimage {first.digest}: {first.compressed / 2**20:.1f} MiB compressed, "
        f"{first.unpacked / 2**20:.1f} MiB unpacked; builds took {between - started:.0f} s and "
        f"{time.monotonic() - between:.0f} s"
    )
    assert first.digest == second.digest, "the same inputs gave two different images"
    assert first.digest.startswith("sha256:")

    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    build.unpack(first.layout, first.tag, rootfs)
    image = build.image_config(first.layout, first.tag)
    settings = image["config"]
    assert isinstance(settings, dict)

    # The image reference is one setting: sts.image with the built digest names the image of the
    # Deployment and of every injected sidecar.
    yaml = YAML()
    values = yaml.load((ROOT / "examples" / "aws" / "values.yaml").read_text())
    values["sts"]["image"] = {"repository": "registry.example/kube-sts", "tag": "test", "digest": first.digest}
    with (tmp_path / "values.yaml").open("w") as out:
        yaml.dump(values, out)
    rendered = render(tmp_path, tmp_path / "values.yaml")
    reference = f"registry.example/kube-sts@{first.digest}"
    images = {c["image"] for spec in [rendered.deployment, *rendered.injected] for c in spec["containers"]}
    images |= {c["image"] for spec in rendered.injected for c in spec.get("initContainers", [])}
    own = {c["image"] for c in seed_pod()["spec"]["containers"]}  # the application's images stay
    assert reference not in own and images == {reference, *own}, images

    # The user the manifests set (the Pod, the runtime's container and the sidecar) is the image's.
    context = rendered.deployment["securityContext"]
    assert settings["User"] == f"{context['runAsUser']}:{context['runAsGroup']}"
    assert settings["User"] == f"{injection.SIDECAR_UID}:{injection.SIDECAR_UID}"
    runtime_container = rendered.deployment["containers"][0]
    assert runtime_container["securityContext"]["runAsUser"] == context["runAsUser"]
    for spec in rendered.injected:
        sidecar = next(
            c
            for c in [*spec.get("initContainers", []), *spec["containers"]]
            if c.get("command", [None])[0] == injection.SIDECAR_COMMAND
        )
        assert sidecar["securityContext"]["runAsUser"] == injection.SIDECAR_UID
    assert settings["Cmd"] == runtime_container["command"] and not settings.get("Entrypoint")
    user, environment = settings["User"], settings["Env"]
    assert in_image(rootfs, environment, user, "id", "-u").stdout.strip() == str(injection.SIDECAR_UID)

    # Every command the manifests and the injected Pods run starts in the image, as its user, and
    # takes the options they pass.
    for command in rendered.commands():
        answer = in_image(rootfs, environment, user, command[0], "--help")
        assert answer.returncode == 0, (command, answer.stderr)
        assert not options_used_exist(command, answer.stdout), command
    # The image's own command, with the rendered config: it loads the config and every module of
    # the server and stops only where a cluster is needed.
    (rootfs / "etc" / "kube-sts").mkdir()
    (rootfs / "etc" / "kube-sts" / "config.json").write_text(rendered.runtime.model_dump_json())
    answer = in_image(rootfs, environment, user, *settings["Cmd"])
    assert answer.returncode == 1 and "no in-cluster credentials" in answer.stderr, answer.stderr
    python = f"{build.VENV}/bin/python"
    answer = in_image(rootfs, environment, user, python, "-c", PROBE, *locked("runtime.lock"), "kube-sts")
    assert answer.returncode == 0, answer.stderr
    assert {"kube_sts", "kubernetes", "cryptography", "orjson"} <= set(answer.stdout.split())
    # uvicorn loads its fast loop and parser when it serves: their native libraries load here
    native = "import uvloop, httptools, pydantic_core, cryptography.hazmat.bindings._rust"
    assert in_image(rootfs, environment, user, python, "-c", native).returncode == 0

    # Only the locked packages and kube-sts: no pip, no compiler, no test dependency.
    listing = "import importlib.metadata as m, json; print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"
    installed = {
        canonicalize_name(n) for n in json.loads(in_image(rootfs, environment, user, python, "-c", listing).stdout)
    }
    assert installed == {*locked("runtime.lock"), "kube-sts"}
    tests = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    test_only = {canonicalize_name(Requirement(r).name) for r in tests} - set(locked("runtime.lock")) - {"kube-sts"}
    assert test_only and not test_only & installed
    probe = f"import importlib.util as u; print([m for m in {FORBIDDEN!r} if u.find_spec(m)])"
    for interpreter in ("/usr/bin/python3", python):
        assert in_image(rootfs, environment, user, interpreter, "-c", probe).stdout.strip() == "[]", interpreter
    for directory in ("usr/bin", "usr/sbin", "usr/local/bin", build.VENV.lstrip("/") + "/bin"):
        present = {p.name for p in (rootfs / directory).iterdir()}
        assert not present & {*COMPILERS, "pip", "pip3", "pip3.11"}, (directory, present & {*COMPILERS, "pip"})

    # Normalised: no apt caches or lists, no logs, every mtime the build's epoch, kube-sts's files root's.
    assert not (rootfs / "var" / "cache" / "apt").exists() and not (rootfs / "var" / "lib" / "apt" / "lists").exists()
    assert not list((rootfs / "var" / "log").iterdir())
    assert not list((rootfs / "tmp").iterdir())
    stale = []
    for directory, subdirectories, files in os.walk(rootfs):
        for name in [*subdirectories, *files]:
            path = os.path.join(directory, name)
            if path == str(rootfs / "etc") or path.startswith(str(rootfs / "etc" / "kube-sts")):
                continue  # the config this test added
            info = os.lstat(path)
            if info.st_mtime != epoch:
                stale.append(path)
            if path.startswith(str(rootfs / build.VENV.lstrip("/"))):
                assert (info.st_uid, info.st_gid) == (0, 0), path
    assert not stale, stale[:10]
