"""Objects -> deterministic YAML text: one document per object, keys in template order."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import ruamel.yaml
import ruamel.yaml.scalarstring

__all__ = ["document", "file_name", "stream"]


def _literal(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _literal(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_literal(v) for v in node]
    if isinstance(node, str) and "\n" in node and all(line.isprintable() for line in node.split("\n")):
        # Literal blocks cannot escape; strings with non-printable characters stay double-quoted.
        return ruamel.yaml.scalarstring.LiteralScalarString(node)
    return node


def document(obj: dict[str, Any]) -> str:
    """One object as YAML (block style, multi-line strings as literal blocks)."""
    yaml = ruamel.yaml.YAML(typ="rt", pure=True)
    yaml.default_flow_style = False
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=2, offset=0)
    out = io.StringIO()
    yaml.dump(_literal(obj), out)
    return out.getvalue()


def stream(documents: Sequence[str]) -> str:
    """A multi-document stream; each document starts with ``---``."""
    return "".join(f"---\n{d}" for d in documents)


def file_name(index: int, obj: dict[str, Any]) -> str:
    """``03-clusterrole-kube-sts.yaml``: the index keeps the apply order in a directory listing."""
    return f"{index:02d}-{str(obj['kind']).lower()}-{obj['metadata']['name']}.yaml"
