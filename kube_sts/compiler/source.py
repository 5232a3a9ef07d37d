"""Values text -> validated ``values.Values``, every problem positioned at its line and column.

YAML is read with ruamel's round-trip loader, which remembers where each key and value starts;
pydantic's error locations (by alias) are walked back through that tree.
"""

from __future__ import annotations

import datetime
import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

import pydantic
import ruamel.yaml
import ruamel.yaml.comments
import ruamel.yaml.error

from kube_sts.compiler import diagnostics, openunison, values

__all__ = ["Checked", "check", "parse", "positioned"]

_Loc = tuple[str | int, ...]
_MAX_DEPTH = 64


class Checked(typing.NamedTuple):
    """A validated values file and what deserves a word on stderr (positioned, sorted)."""

    model: values.Values
    warnings: tuple[diagnostics.Diagnostic, ...]
    """Values that compile but weaken what they seem to promise."""
    notes: tuple[diagnostics.Diagnostic, ...] = ()
    """Informational: the OpenUnison settings that were ignored, one each."""


def parse(text: str) -> values.Values:
    """Validate ``text``; raise ``diagnostics.ValuesError`` listing every problem."""
    return check(text).model


def check(text: str) -> Checked:
    """``parse``, plus the warnings and notes for values that compile but deserve a word."""
    tree = _load(text)
    plain = _plain(tree, ())
    if plain is None:
        _fail(1, 1, "", "the file is empty; it needs an 'sts:' section with 'endpoints'", "empty-file")
    if not isinstance(plain, dict):
        line, column = _node_position(tree)
        _fail(line, column, "", f"the file must be a mapping with an 'sts:' key, not a {_kind(plain)}", "not-a-mapping")
    if "sts" not in plain:
        found = [str(k) for k in plain]
        hint = _hint(found[0], ["sts"]) if len(found) == 1 else ""
        _fail(1, 1, "", f"the 'sts:' section is missing{hint}", "missing-section")
    kept, ignored = openunison.split(plain)
    try:
        model = values.Values.model_validate(kept)
    except pydantic.ValidationError as exc:
        raise diagnostics.ValuesError(_diagnostic(tree, error) for error in exc.errors()) from None
    problems = [
        _positioned(tree, conflict.loc, conflict.message, conflict.code) for conflict in values.conflicts(model)
    ]
    if problems:
        raise diagnostics.ValuesError(problems)
    cautions = values.warnings(model.sts)
    if ignored or model.k8s_cluster_name is not None:  # an OpenUnison values file
        cautions += openunison.rekeys(model.sts)
    warnings = {_positioned(tree, w.loc, w.message, w.code) for w in cautions}
    notes = {_key_note(tree, note) for note in ignored}
    return Checked(model, tuple(sorted(warnings)), tuple(sorted(notes)))


def _key_note(tree: Any, note: openunison.Note) -> diagnostics.Diagnostic:
    line, column = _key_position(tree, note.loc)
    return diagnostics.Diagnostic(line, column, diagnostics.dotted(note.loc), note.message, note.code)


def positioned(text: str, loc: _Loc, message: str, code: str) -> diagnostics.Diagnostic:
    """A diagnostic at ``loc`` (aliases) of the valid values ``text``, for checks made after ``check``."""
    return _positioned(_load(text), loc, message, code)


def _fail(line: int, column: int, path: str, message: str, code: str) -> typing.NoReturn:
    raise diagnostics.ValuesError([diagnostics.Diagnostic(line, column, path, message, code)])


def _load(text: str) -> Any:
    yaml = ruamel.yaml.YAML(typ="rt")
    try:
        return yaml.load(text)
    except ruamel.yaml.error.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        duplicate = "duplicate key" in str(exc.problem or "")
        problem = str(exc.problem or "not valid YAML").split("\n", 1)[0]
        if duplicate:
            _fail(line, column, "", f"{problem}; each key may appear once in a mapping", "duplicate-key")
        context = f" ({exc.context})" if exc.context else ""
        _fail(line, column, "", f"YAML syntax: {problem}{context}", "yaml-syntax")
    except (ruamel.yaml.error.YAMLError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        # ruamel raises plain Python errors for a few malformed inputs (e.g. odd tags); report them.
        _fail(1, 1, "", f"YAML syntax: {type(exc).__name__}: {exc}".split("\n", 1)[0], "yaml-syntax")


def _plain(node: Any, stack: tuple[int, ...]) -> Any:
    """ruamel's round-trip objects -> dict/list/str/int/float/bool, refusing recursive aliases."""
    if isinstance(node, dict | list):
        if id(node) in stack or len(stack) > _MAX_DEPTH:
            line, column = _node_position(node)
            _fail(line, column, "", "recursive or too deeply nested YAML alias", "yaml-syntax")
        inner = (*stack, id(node))
        if isinstance(node, dict):
            return {_plain_key(k): _plain(v, inner) for k, v in node.items()}
        return [_plain(v, inner) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if node is None or isinstance(node, datetime.date | bytes):
        return node
    return str(node)


def _plain_key(key: Any) -> str:
    if isinstance(key, str):
        return str(key)
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    return str(key)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return type(value).__name__


def _node_position(node: Any) -> tuple[int, int]:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return 1, 1
    return lc.line + 1, lc.col + 1


def _walk(tree: Any, loc: _Loc) -> tuple[tuple[int, int], int]:
    """Position of the deepest node of ``loc`` present in ``tree`` and how many parts matched.

    A scalar value is positioned at the value, a mapping or list value at its key."""
    position = _node_position(tree)
    node = tree
    matched = 0
    for part in loc:
        if isinstance(node, ruamel.yaml.comments.CommentedMap) and isinstance(part, str):
            key = next((k for k in node if _plain_key(k) == part), _MISSING)
            if key is _MISSING:
                break
            child = node[key]
            line, column = node.lc.value(key) if not isinstance(child, dict | list) else node.lc.key(key)
            position = (line + 1, column + 1)
            node = child
        elif isinstance(node, ruamel.yaml.comments.CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line, column = node.lc.item(part)
            position = (line + 1, column + 1)
            node = node[part]
        else:
            break
        matched += 1
    return position, matched


_MISSING = object()


def _key_position(tree: Any, loc: _Loc) -> tuple[int, int]:
    """Position of the key ``loc[-1]`` itself inside its parent mapping."""
    parent_position, matched = _walk(tree, loc[:-1])
    parent = tree
    for part in loc[:-1]:
        parent = parent[next(k for k in parent if _plain_key(k) == part)] if isinstance(part, str) else parent[part]
    if matched == len(loc) - 1 and isinstance(parent, ruamel.yaml.comments.CommentedMap):
        for key in parent:
            if _plain_key(key) == loc[-1]:
                line, column = parent.lc.key(key)
                return line + 1, column + 1
    return parent_position


def _positioned(tree: Any, loc: _Loc, message: str, code: str) -> diagnostics.Diagnostic:
    (line, column), _ = _walk(tree, loc)
    return diagnostics.Diagnostic(line, column, diagnostics.dotted(loc), message, code)


def _diagnostic(tree: Any, error: Any) -> diagnostics.Diagnostic:
    loc: _Loc = tuple(error["loc"])
    kind: str = error["type"]
    if kind == "extra_forbidden":
        unknown = str(loc[-1])
        known = sorted(_aliases(loc[:-1]))
        line, column = _key_position(tree, loc)
        message = f"unknown key {unknown!r}{_hint(unknown, known)}"
        return diagnostics.Diagnostic(line, column, diagnostics.dotted(loc), message, "unknown-key")
    if kind == "missing":
        (line, column), _ = _walk(tree, loc[:-1])
        message = f"required key {loc[-1]!r} is missing"
        return diagnostics.Diagnostic(line, column, diagnostics.dotted(loc), message, "missing-key")
    data_loc = tuple(p for p in loc if not (isinstance(p, str) and p == "[key]"))
    (line, column), matched = _walk(tree, data_loc)
    if loc and loc[-1] == "[key]":
        line, column = _key_position(tree, data_loc)
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if kind in {"model_type", "dict_type", "model_attributes_type"}:
        message = f"expected a mapping, found a {_kind(error.get('input'))}"
    code = {"value_error": "invalid-value", "model_type": "not-a-mapping", "dict_type": "not-a-mapping"}.get(
        kind, kind.replace("_", "-")
    )
    path = diagnostics.dotted(data_loc[: max(matched, len(data_loc))])
    return diagnostics.Diagnostic(line, column, path, message, code)


def _hint(unknown: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(unknown, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    if known:
        return f"; expected one of: {', '.join(known)}"
    return ""


def _aliases(loc: _Loc) -> set[str]:
    """The keys the model accepts at ``loc`` (a mapping's location)."""
    annotation: Any = values.Values
    for part in loc:
        annotation = _unwrap(annotation, part)
        if annotation is None:
            return set()
    model = _model(annotation)
    if model is None:
        return set()
    known = {field.alias or name for name, field in model.model_fields.items()}
    if loc == ():
        known |= openunison.SECTIONS
    elif loc == ("sts",):
        known |= openunison.STS_SECTIONS
    return known


def _model(annotation: Any) -> type[pydantic.BaseModel] | None:
    for candidate in _candidates(annotation):
        if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
            return candidate
    return None


def _candidates(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _candidates(typing.get_args(annotation)[0])
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        return [c for arg in typing.get_args(annotation) for c in _candidates(arg)]
    return [annotation]


def _unwrap(annotation: Any, part: str | int) -> Any:
    for candidate in _candidates(annotation):
        if isinstance(part, str):
            if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
                for name, field in candidate.model_fields.items():
                    if (field.alias or name) == part:
                        return field.annotation
            if typing.get_origin(candidate) is dict:
                return typing.get_args(candidate)[1]
        elif typing.get_origin(candidate) in (list, tuple):
            return typing.get_args(candidate)[0]
    return None
