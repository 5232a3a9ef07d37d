"""JSON Schemas of the values file and the runtime config; ``python -m kube_sts.compiler.schema``
rewrites ``schemas/*.schema.json`` and ``docs/values.md``."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Literal

__all__ = ["FILES", "text"]

FILES = {"values": "values.schema.json", "runtime-config": "runtime-config.schema.json"}


def text(which: Literal["values", "runtime-config"]) -> str:
    """The schema as stable, indented JSON with a trailing newline."""
    from kube_sts.compiler import values  # noqa: PLC0415
    from kube_sts.runtime import config  # noqa: PLC0415

    model: Any = values.Values if which == "values" else config.RuntimeConfig
    schema = model.model_json_schema(by_alias=True)
    if which == "values":
        _openunison_sections(schema)
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://kube-sts.tremolo.io/schemas/{FILES[which]}",
        **schema,
    }
    return json.dumps(schema, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def _openunison_sections(schema: dict[str, Any]) -> None:
    """Admit OpenUnison's own sections (any value), which the compiler ignores with a note."""
    from kube_sts.compiler import openunison  # noqa: PLC0415

    ignored = "An OpenUnison setting kube-sts does not use; ignored (one informational line on stderr)."
    for properties, names in (
        (schema["properties"], openunison.SECTIONS),
        (schema["$defs"]["Sts"]["properties"], openunison.STS_SECTIONS),
    ):
        for name in sorted(names):
            properties.setdefault(name, {"description": ignored})


def main() -> int:
    """Rewrite the checked-in schemas next to this package's ``schemas`` folder."""
    from kube_sts.compiler import reference  # noqa: PLC0415

    package = pathlib.Path(__file__).resolve().parent.parent
    root = package.parent
    for which, name in FILES.items():
        (package / "schemas" / name).write_text(text(which), encoding="utf-8")  # type: ignore[arg-type]
        print(f"wrote {package / 'schemas' / name}", file=sys.stderr)
    (root / "docs" / "values.md").write_text(reference.markdown(), encoding="utf-8")
    print(f"wrote {root / 'docs' / 'values.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
