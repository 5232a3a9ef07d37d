"""Build the runtime image as an OCI image layout, reproducibly, from package registries only.

    sudo .venv/bin/python -m image.build                 # -> build/image/oci, tag 0.1.0
    sudo .venv/bin/python -m image.build --output DIR --tag TAG

No container engine is involved. The root filesystem is Debian bookworm's ``python3`` (3.11) and
``ca-certificates`` made by ``mmdebstrap`` (``--variant=essential``, merged /usr without the
usrmerge package, no manual pages, locales or documentation other than copyright files); into it
go a virtual environment at ``/opt/kube-sts`` with the wheels of ``requirements/runtime.lock``
(``pip install --require-hashes --no-deps --only-binary :all:``, pip run from its locked wheel in
``requirements/build.lock`` and gone afterwards) and the kube-sts wheel (``pip wheel`` of this
tree with the locked setuptools, no build isolation). ``umoci`` packs it as one layer with the
user, entry point and environment the manifests expect.

The same inputs give the same image digest: every file's mtime is ``SOURCE_DATE_EPOCH`` (default:
the time of the checked-out commit), bytecode is compiled with hash-based invalidation and a fixed
hash seed, apt's caches and lists, dpkg's and debconf's backups and every log are removed, and the
image's ``created`` times are the same epoch. Ownership is what dpkg gives each file (root for
everything kube-sts adds).

The mmdebstrap root filesystem is cached in ``$KUBE_STS_CACHE`` (default ``~/.cache/kube-sts``)
under ``image-base-<key>/``, keyed by everything that goes into it: suite, mirrors and the
digests of their ``InRelease`` files (so a Debian security update makes a new base), packages,
options and mmdebstrap's version. Without network the newest cached base with the same options is
used, and the build says so. ``mmdebstrap`` and ``umoci`` are Debian packages, installed with
apt-get when missing. Building needs root (``chroot`` into the root filesystem, device nodes,
ownership).

The build prints the image's digest and sizes and the ``sts.image`` values that deploy it; push it
with ``skopeo copy --preserve-digests oci:<output>:<tag> docker://<repository>:<tag>`` (the digest
stays the same), see the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from kube_sts.runtime import config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUITE = "bookworm"
ARCHITECTURE = "amd64"
MIRRORS = (
    "http://deb.debian.org/debian bookworm main",
    "http://deb.debian.org/debian bookworm-updates main",
    "http://deb.debian.org/debian-security bookworm-security main",
)
PACKAGES = ("python3", "ca-certificates")
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
MMDEBSTRAP_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"
BASE_EPOCH = 0
"""The base's own timestamps: every mtime is set to the build's SOURCE_DATE_EPOCH afterwards, so
the base does not depend on the project's commit and its cache survives new commits."""
VENV = "/opt/kube-sts"
STAGING = "/tmp/kube-sts-build"  # noqa: S108 (inside the image's root filesystem, removed before packing)
USER = config.RUN_AS_UID
"""The manifests' and the injected sidecar's user and group; the image runs as the same."""
ENVIRONMENT = (
    f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
    "LANG=C.UTF-8",
)
PORT = "8443/tcp"
REMOVED = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/cache/ldconfig/aux-cache",
    "root/.cache",
)
"""Caches and backups, removed from the root filesystem (and everything under ``var/log``)."""


@dataclasses.dataclass(frozen=True)
class Image:
    layout: pathlib.Path
    tag: str
    digest: str
    """The manifest's digest: what ``sts.image.digest`` names."""
    compressed: int
    """Bytes of the layer and config blobs (what a node pulls)."""
    unpacked: int
    """Bytes of the root filesystem's regular files."""


def _log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def _run(command: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), check=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("KUBE_STS_CACHE") or pathlib.Path.home() / ".cache" / "kube-sts")


def ensure_tools() -> None:
    """mmdebstrap and umoci from Debian, installed with apt-get when missing."""
    missing = [package for package in ("mmdebstrap", "umoci") if shutil.which(package) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"{' and '.join(missing)} missing and there is no apt-get to install them")
    _log(f"installing Debian's {' '.join(missing)}")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], env=environment, stdout=subprocess.DEVNULL)
    _run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        env=environment,
        stdout=subprocess.DEVNULL,
    )


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` if set, else the commit time of the checked-out commit."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    answer = _run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], capture_output=True)
    return int(answer.stdout.strip())


def _release_files() -> dict[str, str] | None:
    """sha256 of each mirror's InRelease, the state of Debian the base is made from (None offline)."""
    found = {}
    for mirror in MIRRORS:
        url, suite = mirror.split()[:2]
        try:
            with urllib.request.urlopen(f"{url}/dists/{suite}/InRelease", timeout=20) as answer:  # noqa: S310 (fixed http mirror; apt checks signatures)
                found[f"{url} {suite}"] = hashlib.sha256(answer.read()).hexdigest()
        except (urllib.error.URLError, OSError) as exc:
            _log(f"cannot read {url}/dists/{suite}/InRelease ({exc})")
            return None
    return found


def _mmdebstrap_version() -> str:
    return _run(["mmdebstrap", "--version"], capture_output=True).stdout.strip()


def base_options() -> dict[str, object]:
    return {
        "suite": SUITE,
        "architecture": ARCHITECTURE,
        "mirrors": MIRRORS,
        "packages": PACKAGES,
        "dpkg": DPKG_OPTIONS,
        "hooks": MMDEBSTRAP_HOOKS,
        "epoch": BASE_EPOCH,
        "mmdebstrap": _mmdebstrap_version(),
    }


def _key(inputs: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def base() -> pathlib.Path:
    """The mmdebstrap tarball for the current inputs, from the cache or made (and cached) now."""
    options = base_options()
    releases = _release_files()
    if releases is None:
        options_key = _key(options)
        cached = sorted(
            (
                p
                for p in cache_root().glob("image-base-*/base.json")
                if json.loads(p.read_text())["options"] == options_key
            ),
            key=lambda p: p.stat().st_mtime,
        )
        if not cached:
            raise RuntimeError("the Debian mirrors cannot be reached and no base root filesystem is cached")
        releases = json.loads(cached[-1].read_text())["releases"]
        _log(f"offline: using the cached base {cached[-1].parent} (made from {releases})")
        return cached[-1].parent / "base.tar"
    directory = cache_root() / f"image-base-{_key({**options, 'releases': releases})}"
    tarball = directory / "base.tar"
    if tarball.is_file():
        return tarball
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / "base.tar.partial"
    _log(f"making the base root filesystem with mmdebstrap into {directory} (first run for these inputs)")
    command = [
        "mmdebstrap",
        "--quiet",
        "--mode=root",
        "--variant=essential",
        f"--architectures={ARCHITECTURE}",
        f"--include={','.join(PACKAGES)}",
        f"--hook-dir={MMDEBSTRAP_HOOKS}",
        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        "--format=tar",
        SUITE,
        str(partial),
        *(f"deb {mirror}" for mirror in MIRRORS),
    ]
    _run(command, env={**os.environ, "SOURCE_DATE_EPOCH": str(BASE_EPOCH)}, stdout=subprocess.DEVNULL)
    partial.rename(tarball)
    (directory / "base.json").write_text(
        json.dumps({"options": _key(options), "inputs": options, "releases": releases}, indent=2, sort_keys=True)
    )
    return tarball


def _wheels(staging: pathlib.Path) -> None:
    """The locked runtime wheels, pip's and kube-sts's own, into ``staging/wheels``."""
    wheels = staging / "wheels"
    tools = staging / "tools"
    lock = ROOT / "requirements"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    binary = ["--require-hashes", "--no-deps", "--only-binary", ":all:"]
    # The wheels the image's Python takes: CPython 3.11 on x86_64 glibc (bookworm's 2.36).
    target = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
    target += [
        arg for tag in ("manylinux_2_36_x86_64", "manylinux2014_x86_64", "linux_x86_64") for arg in ("--platform", tag)
    ]
    _run([*pip, "download", *binary, *target, "--dest", str(wheels), "-r", str(lock / "runtime.lock")])
    _run([*pip, "download", *binary, "--dest", str(tools), "-r", str(lock / "build.lock")])
    # The kube-sts wheel: pip wheel of a copy of this tree (so the checkout gets no build/ or
    # egg-info), with the locked setuptools and no build isolation, like the Dockerfile.
    builder = staging / "builder"
    _run([sys.executable, "-m", "venv", "--without-pip", str(builder)])
    site = next((builder / "lib").glob("python3*/site-packages"))
    for tool in sorted(tools.glob("*.whl")):
        _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(tool)])
    source = staging / "source"
    skipped = shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests"
    )
    shutil.copytree(ROOT, source, symlinks=True, ignore=skipped)
    wheel = [str(builder / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet", "wheel"]
    _run([*wheel, "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(wheels), str(source)])
    shutil.copy2(lock / "runtime.lock", staging / "runtime.lock")


def _chroot(rootfs: pathlib.Path, *command: str, epoch: int) -> None:
    environment = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(epoch),
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    _run(["chroot", str(rootfs), *command], env=environment)


def assemble(rootfs: pathlib.Path, tarball: pathlib.Path, epoch: int) -> None:
    """The image's root filesystem in ``rootfs`` (an empty directory)."""
    _run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball), "-C", str(rootfs)])
    staging = rootfs / STAGING.lstrip("/")
    staging.mkdir(parents=True)
    _wheels(staging)
    _chroot(rootfs, "/usr/bin/python3", "-m", "venv", "--without-pip", VENV, epoch=epoch)
    pip_wheel = next(staging.glob("tools/pip-*.whl")).name
    pip = [
        f"{VENV}/bin/python",
        f"{STAGING}/tools/{pip_wheel}/pip",
        "--disable-pip-version-check",
        "--no-cache-dir",
        "-q",
    ]
    offline = ["--no-index", "--find-links", f"{STAGING}/wheels", "--no-compile", "--no-deps", "--only-binary", ":all:"]
    _chroot(rootfs, *pip, "install", *offline, "--require-hashes", "-r", f"{STAGING}/runtime.lock", epoch=epoch)
    version = next(staging.glob("wheels/kube_sts-*.whl")).name.split("-")[1]
    _chroot(rootfs, *pip, "install", *offline, f"kube-sts=={version}", epoch=epoch)
    # Bytecode that does not depend on mtimes (and, with the fixed hash seed, not on the run).
    _chroot(
        rootfs,
        f"{VENV}/bin/python",
        "-m",
        "compileall",
        "-q",
        "-j",
        "1",
        "--invalidation-mode",
        "unchecked-hash",
        f"{VENV}/lib",
        epoch=epoch,
    )
    shutil.rmtree(staging)
    for path in REMOVED:
        target = rootfs / path
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    for log in sorted((rootfs / "var" / "log").iterdir()):
        shutil.rmtree(log) if log.is_dir() and not log.is_symlink() else log.unlink()
    # The non-root user the manifests run as (no login, no home).
    with (rootfs / "etc" / "passwd").open("a") as passwd:
        passwd.write(f"nonroot:x:{USER}:{USER}:kube-sts:/nonexistent:/usr/sbin/nologin\n")
    with (rootfs / "etc" / "group").open("a") as group:
        group.write(f"nonroot:x:{USER}:\n")
    for directory, subdirectories, files in os.walk(rootfs):
        for name in [*subdirectories, *files]:
            os.utime(os.path.join(directory, name), (epoch, epoch), follow_symlinks=False)
    os.utime(rootfs, (epoch, epoch))


def _iso(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pack(rootfs: pathlib.Path, layout: pathlib.Path, tag: str, epoch: int, command: Sequence[str]) -> None:
    """``rootfs`` as a one-layer OCI image ``layout:tag`` (``layout`` must not exist)."""
    image = f"{layout}:{tag}"
    created = _iso(epoch)
    history = ["--history.created", created, "--history.author", "kube-sts"]
    _run(["umoci", "init", "--layout", str(layout)])
    _run(["umoci", "new", "--image", image])
    _run(["umoci", "insert", "--image", image, *history, "--history.created_by", "image/build.py", str(rootfs), "/"])
    config = ["--created", created, "--author", "kube-sts", "--os", "linux", "--architecture", ARCHITECTURE]
    config += ["--config.user", f"{USER}:{USER}", "--config.workingdir", "/", "--config.exposedports", PORT]
    config += [arg for variable in ENVIRONMENT for arg in ("--config.env", variable)]
    config += ["--clear", "config.entrypoint"]  # the command alone, as the manifests give it
    config += [arg for word in command for arg in ("--config.cmd", word)]
    _run(["umoci", "config", "--image", image, *config, "--no-history"])
    _run(["umoci", "gc", "--layout", str(layout)])


def manifest(layout: pathlib.Path, tag: str) -> tuple[str, dict[str, Any]]:
    """The tag's manifest digest and the manifest itself."""
    index = json.loads((layout / "index.json").read_text())
    for descriptor in index["manifests"]:
        if descriptor.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            digest = descriptor["digest"]
            return digest, json.loads(blob(layout, digest))
    raise LookupError(f"{layout} has no tag {tag!r}")


def blob(layout: pathlib.Path, digest: str) -> bytes:
    algorithm, value = digest.split(":")
    return (layout / "blobs" / algorithm / value).read_bytes()


def image_config(layout: pathlib.Path, tag: str) -> dict[str, Any]:
    digest = manifest(layout, tag)[1]["config"]["digest"]
    return json.loads(blob(layout, digest))  # type: ignore[no-any-return]


def unpack(layout: pathlib.Path, tag: str, rootfs: pathlib.Path) -> None:
    """The image's layers extracted in order into ``rootfs`` by GNU tar (not by umoci, which made
    them), as a container runtime would; the image has no whiteouts, and tar would not apply them."""
    for layer in manifest(layout, tag)[1]["layers"]:
        algorithm, value = layer["digest"].split(":")
        path = layout / "blobs" / algorithm / value
        names = _run(["tar", "-tf", str(path)], capture_output=True).stdout.splitlines()
        whiteouts = [name for name in names if pathlib.PurePosixPath(name).name.startswith(".wh.")]
        if whiteouts:
            raise ValueError(f"layer {layer['digest']} holds whiteouts: {whiteouts[:5]}")
        _run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(path), "-C", str(rootfs)])


def build(layout: pathlib.Path, tag: str, epoch: int | None = None, work: pathlib.Path | None = None) -> Image:

    ensure_tools()
    epoch = source_date_epoch() if epoch is None else epoch
    tarball = base()
    if layout.exists():
        shutil.rmtree(layout)
    layout.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kube-sts-image-", dir=work) as scratch:
        rootfs = pathlib.Path(scratch) / "rootfs"
        rootfs.mkdir()
        assemble(rootfs, tarball, epoch)
        unpacked = sum(
            os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(rootfs)
            for f in files
            if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))
        )
        pack(rootfs, layout, tag, epoch, list(config.SERVER_COMMAND))
    digest, found = manifest(layout, tag)
    descriptors = [found["config"], *found["layers"]]
    compressed = sum(int(d["size"]) for d in descriptors)
    return Image(layout=layout, tag=tag, digest=digest, compressed=compressed, unpacked=unpacked)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m image.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=pathlib.Path, default=ROOT / "build" / "image" / "oci", help="OCI layout")
    parser.add_argument("--tag", default=None, help="the image's tag (default: the project's version)")
    parser.add_argument("--repository", default="ghcr.io/kube-sts/kube-sts", help="for the printed values")
    args = parser.parse_args(argv)
    tag = args.tag or _project_version()
    image = build(args.output, tag)
    print(f"layout: {image.layout}")
    print(f"tag: {image.tag}")
    print(f"digest: {image.digest}")
    print(f"size: {image.compressed / 2**20:.1f} MiB compressed, {image.unpacked / 2**20:.1f} MiB unpacked")
    print("values (the manifests' and the injected sidecars' image):")
    print(f"  sts:\n    image:\n      repository: {args.repository}\n      tag: {tag!r}\n      digest: {image.digest}")
    print(f"push: skopeo copy --preserve-digests oci:{image.layout}:{tag} docker://{args.repository}:{tag}")
    return 0


def _project_version() -> str:
    import tomllib  # noqa: PLC0415

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


if __name__ == "__main__":
    sys.exit(main())
