"""``sts-compile``: the command line around ``manifest.compile_values``.

stdout carries only manifests; diagnostics go to stderr. Exit codes: 0 ok, 1 invalid input or
stale ``--check`` directory, 2 usage error.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import re
import sys
from collections.abc import Sequence

__all__ = ["main"]

_SUBCOMMANDS = ("keys", "issuer-docs")
_GENERATED = re.compile(r"^[0-9]{2}-[a-z]+-[a-z0-9.-]+\.yaml$")
_DESCRIPTION = """\
Compile a kube-sts values file into Kubernetes manifests.

subcommands (see `sts-compile <subcommand> --help`):
  keys          create, inspect and rotate key set files and Secrets
  issuer-docs   print an endpoint's OIDC discovery document and JWKS
  trust         the relying parties' trust documents (AWS, Azure, Google, Vault)
  doctor        check a token against the values and the issuer, as a relying party would
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sts-compile", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("values", nargs="?", help="the values file ('-' for stdin)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--output-dir", metavar="DIR", help="write one file per object and a kustomization.yaml")
    group.add_argument("--check", metavar="DIR", help="exit 1 with a diff when DIR differs from the output")
    group.add_argument("--schema", action="store_true", help="print the values file's JSON Schema and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "trust":
        from kube_sts.compiler.trust import command  # noqa: PLC0415

        return command.main(args_list[1:])
    if args_list and args_list[0] == "doctor":
        from kube_sts.compiler import doctor  # noqa: PLC0415

        return doctor.main(args_list[1:])
    if args_list and args_list[0] in _SUBCOMMANDS:
        from kube_sts.compiler import keys  # noqa: PLC0415 - only the subcommand pays for its imports

        return keys.main(args_list)
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.schema:
        if args.values:
            parser.print_usage(sys.stderr)
            print("sts-compile: error: --schema takes no values file", file=sys.stderr)
            return 2
        from kube_sts.compiler import schema  # noqa: PLC0415

        sys.stdout.write(schema.text("values"))
        return 0
    if not args.values:
        parser.print_usage(sys.stderr)
        print("sts-compile: error: a values file is required", file=sys.stderr)
        return 2
    return _compile(args.values, args.output_dir, args.check)


def _compile(path: str, output_dir: str | None, check: str | None) -> int:
    from kube_sts.compiler import diagnostics, manifest  # noqa: PLC0415 - fast --help

    name = "<stdin>" if path == "-" else path
    try:
        raw = sys.stdin.buffer.read() if path == "-" else pathlib.Path(path).read_bytes()
    except OSError as exc:
        print(f"sts-compile: error: cannot read {name}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        print(
            f"{name}:1:1: error: the file is not UTF-8 ({exc.reason} at byte {exc.start}) [encoding]", file=sys.stderr
        )
        return 1
    try:
        result = manifest.compile_values(text)
    except diagnostics.ValuesError as exc:
        sys.stderr.write(diagnostics.render(exc.diagnostics, name, text))
        return 1
    if result.notes:
        sys.stderr.write(diagnostics.render(result.notes, name, text, level="info"))
    if result.warnings:
        sys.stderr.write(diagnostics.render(result.warnings, name, text, level="warning"))
    wanted = {**dict(result.files), "kustomization.yaml": result.kustomization()}
    if check is not None:
        return _check(pathlib.Path(check), wanted)
    if output_dir is not None:
        return _write(pathlib.Path(output_dir), wanted)
    sys.stdout.write(result.text)
    return 0


def _existing(directory: pathlib.Path) -> dict[str, str]:
    if not directory.is_dir():
        return {}
    return {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted(directory.iterdir())
        if p.is_file() and (_GENERATED.match(p.name) or p.name == "kustomization.yaml")
    }


def _write(directory: pathlib.Path, wanted: dict[str, str]) -> int:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in sorted(set(_existing(directory)) - set(wanted)):
            (directory / stale).unlink()
        for name, content in wanted.items():
            (directory / name).write_text(content, encoding="utf-8")
    except OSError as exc:
        print(f"sts-compile: error: cannot write {directory}: {exc}", file=sys.stderr)
        return 2
    return 0


def _check(directory: pathlib.Path, wanted: dict[str, str]) -> int:
    have = _existing(directory)
    diff: list[str] = []
    for name in sorted(set(have) | set(wanted)):
        old, new = have.get(name, ""), wanted.get(name, "")
        if old != new:
            diff += difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                fromfile=f"{directory / name}" if name in have else "/dev/null",
                tofile=f"{directory / name} (expected)" if name in wanted else "/dev/null",
            )
    if diff:
        sys.stderr.write("".join(line if line.endswith("\n") else line + "\n" for line in diff))
        print(f"sts-compile: {directory} is stale; regenerate it with --output-dir {directory}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
