"""Positioned problems, printed like ``values.yaml:12:5: error: sts.endpoints[0].name: message [code]``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

__all__ = ["Diagnostic", "ValuesError", "dotted", "render"]


@dataclasses.dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem; ``line`` and ``column`` are 1-based."""

    line: int
    column: int
    path: str
    message: str
    code: str


class ValuesError(Exception):
    """The values file has problems; ``diagnostics`` lists all of them, sorted."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = sorted(set(diagnostics))
        super().__init__(f"{len(self.diagnostics)} problem(s) in the values file")


def dotted(loc: Sequence[str | int]) -> str:
    """``("sts", "endpoints", 0, "name")`` -> ``sts.endpoints[0].name``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def render(diagnostics: Sequence[Diagnostic], filename: str, text: str, level: str = "error") -> str:
    """Every diagnostic with its source line and a caret under the column (``level``: error,
    warning), then their count; ``level`` info: one line each, nothing else."""
    lines = text.splitlines()
    out: list[str] = []
    for d in diagnostics:
        where = f"{d.path}: " if d.path else ""
        out.append(f"{filename}:{d.line}:{d.column}: {level}: {where}{d.message} [{d.code}]")
        if level != "info" and 1 <= d.line <= len(lines):
            source = lines[d.line - 1].expandtabs(1)
            out.append(f"  {source}")
            out.append("  " + " " * (d.column - 1) + "^")
    if level == "info":
        return "".join(line + "\n" for line in out)
    out.append(f"{len(diagnostics)} {level}{'s' if len(diagnostics) != 1 else ''}")
    return "\n".join(out) + "\n"
