"""The subjects an endpoint's rules authorize, as patterns a relying party can pin.

The minted ``sub`` is the endpoint's template (``config.Endpoint.subject_template``) filled in with
the caller's attributes. A rule (RFC 4515, ``runtime.filter``) restricts those attributes; this
module evaluates each rule with what is fixed (the cluster name, the role a trust document is for,
a ServiceAccount given on the command line), expands what is left into alternatives (disjunctive
normal form) and fills the template with, per field, a literal (an equality in the rule), a
substring pattern, or "anything". Conditions the relying party cannot express (negations, presence)
are dropped, so a pattern admits a superset of what the rule admits; the token service still
applies the rule itself before it mints anything. The role, when the template carries it, is
always a literal: that is what makes a role's trust refuse a token authorized for another role.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Iterable, Mapping

from kube_sts.runtime import config
from kube_sts.runtime import rules as rule_filter

__all__ = ["MAX_BYTES", "Pattern", "TrustError", "Wild", "patterns", "rule_roles"]

MAX_BYTES = {"namespace": 63, "saname": 253, "pod": 253, "role": 2048}
"""Longest value of each free field: Kubernetes name limits; the role annotation as the runtime caps it."""
_FREE = ("namespace", "saname", "pod")
_LOWER = frozenset(_FREE)  # Kubernetes names are lower case; rules compare case-insensitively
_MAX_ALTERNATIVES = 64


class TrustError(ValueError):
    """The trust documents cannot be generated; ``loc`` is where in the values file (aliases)."""

    def __init__(self, loc: tuple[str | int, ...], message: str, code: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message
        self.code = code


@dataclasses.dataclass(frozen=True)
class Wild:
    """A field the rules do not pin: any value, or one matching a substring pattern."""

    field: str
    parts: tuple[str | None, ...] = (None, None)
    """RFC 4515 substring parts ``(initial, *any, final)``; ``(None, None)`` is any value."""

    def glob(self) -> str:
        initial, *middle, final = self.parts
        return "*".join([initial or "", *(m or "" for m in middle), final or ""])


@dataclasses.dataclass(frozen=True)
class Pattern:
    """One alternative: the ``sub`` as literal text and ``Wild`` fields, and the claims it pins."""

    rule: int
    """Index of the rule in ``azRules``."""
    parts: tuple[str | Wild, ...]
    claims: tuple[tuple[str, str | Wild], ...]
    """``cluster``, ``namespace``, ``saname`` as the token's claims of the same name carry them."""

    @property
    def literal(self) -> str | None:
        """The whole ``sub`` when every field is pinned."""
        if any(isinstance(part, Wild) for part in self.parts):
            return None
        return "".join(str(part) for part in self.parts)

    def glob(self, wild: str = "") -> str:
        """The ``sub`` with ``*`` for free fields; the field named ``wild`` becomes ``*:*`` (a value with a colon)."""
        return "".join(
            ("*:*" if part.field == wild else part.glob()) if isinstance(part, Wild) else part for part in self.parts
        )

    def wild_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(part.field for part in self.parts if isinstance(part, Wild)))

    def max_bytes(self) -> int:
        return sum(
            MAX_BYTES[part.field] if isinstance(part, Wild) else len(part.encode("utf-8")) for part in self.parts
        )

    def matches(self, subject: str) -> bool:
        """Whether ``subject`` fits this pattern with colon-free values in the free fields."""
        import re  # noqa: PLC0415 - only the doctor asks

        regex = "".join(_wild_regex(part) if isinstance(part, Wild) else re.escape(part) for part in self.parts)
        return re.fullmatch(regex, subject) is not None


def _wild_regex(wild: Wild) -> str:
    import re  # noqa: PLC0415

    initial, *middle, final = wild.parts
    pieces = [re.escape(initial or "")] + [re.escape(m or "") for m in middle] + [re.escape(final or "")]
    return "(?:" + "[^:]*".join(pieces) + ")" if len(pieces) > 1 else "[^:]*"


# -- partial evaluation of a rule with some attributes fixed ----------------------------------------

_Residual = bool | rule_filter.Filter


def _known(node: rule_filter.Filter, fixed: Mapping[str, str | None]) -> _Residual:
    if node.op in "&|":
        results = [_known(child, fixed) for child in node.children]
        if node.op == "&":
            if any(r is False for r in results):
                return False
            rest = [r for r in results if not isinstance(r, bool)]
            return True if not rest else rule_filter.Filter("&", children=tuple(rest))
        if any(r is True for r in results):
            return True
        rest = [r for r in results if not isinstance(r, bool)]
        return False if not rest else rule_filter.Filter("|", children=tuple(rest))
    if node.op == "!":
        inner = _known(node.children[0], fixed)
        return (not inner) if isinstance(inner, bool) else rule_filter.Filter("!", children=(inner,))
    name = node.attribute.lower()
    if name in fixed:
        return node.matches({name: fixed[name]})
    if name not in _FREE:
        return False  # an attribute the token service never sets: the rule never matches it
    return node


def _alternatives(node: _Residual) -> list[dict[str, list[rule_filter.Filter]]]:
    """Disjunctive normal form over positive assertions; negations of free attributes are dropped."""
    if node is True:
        return [{}]
    if node is False:
        return []
    if node.op == "|":
        out: list[dict[str, list[rule_filter.Filter]]] = []
        for child in node.children:
            out += _alternatives(child)
        return out
    if node.op == "&":
        product: list[dict[str, list[rule_filter.Filter]]] = [{}]
        for child in node.children:
            product = [
                {k: [*a.get(k, []), *b.get(k, [])] for k in {*a, *b}} for a in product for b in _alternatives(child)
            ]
            if len(product) > _MAX_ALTERNATIVES:
                raise TrustError(
                    (), f"the rule expands to more than {_MAX_ALTERNATIVES} alternatives", "rule-too-complex"
                )
        return product
    if node.op == "!":
        return [{}]  # the relying party cannot express it; the token service enforces it
    return [{node.attribute.lower(): [node]}]


def _field(name: str, assertions: list[rule_filter.Filter]) -> str | Wild | None:
    """The value of field ``name`` under ``assertions``: a literal, a pattern, or None (contradiction)."""
    equal = {a.value.lower() if name in _LOWER else a.value for a in assertions if a.op == "="}
    if len(equal) > 1:
        return None
    if equal:
        value = next(iter(equal))
        if not all(a.matches({name: value}) for a in assertions):
            return None
        return value
    substrings = [a for a in assertions if a.op == "~sub"]
    if substrings:
        parts = tuple(p.lower() if p and name in _LOWER else p for p in substrings[0].parts)
        return Wild(name, parts)
    return Wild(name)


def _template(template: str) -> list[tuple[str, str | None]]:
    return [(text, name) for text, name, _, _ in string.Formatter().parse(template)]


def patterns(
    endpoint: config.Endpoint,
    cluster: str,
    role: str | None = None,
    fixed: Mapping[str, str] | None = None,
    index: int = 0,
) -> tuple[Pattern, ...]:
    """The subjects endpoint ``index``'s rules authorize, for ``role`` and the ``fixed`` attributes.

    ``role`` is required when the ``sub`` template carries ``{role}``. Raises ``TrustError`` when
    no rule authorizes anything for them.
    """
    template = endpoint.subject_template
    carries_role = "{role}" in template
    if carries_role and role is None:
        raise TrustError(
            ("sts", "endpoints", index, "azRules"),
            f"the sub ({template!r}) carries the role: name the role with --role",
            "role-required",
        )
    known: dict[str, str | None] = {"cluster": cluster, **(fixed or {})}
    if role is not None:
        known["role"] = role
    found: list[Pattern] = []
    for number, rule in enumerate(endpoint.rules()):
        residual = (
            _known(rule, known) if role is not None or not endpoint.rules_mention_role else _drop_role(rule, known)
        )
        for alternative in _alternatives(residual):
            values: dict[str, str | Wild] = {"cluster": cluster, "endpoint": endpoint.name}
            if role is not None:
                values["role"] = role
            contradiction = False
            for name in _FREE:
                if name in known and known[name] is not None:
                    values[name] = str(known[name])
                    continue
                value = _field(name, alternative.get(name, []))
                if value is None:
                    contradiction = True
                    break
                values[name] = value
            if contradiction:
                continue
            parts: list[str | Wild] = []
            for text, field in _template(template):
                if text:
                    if parts and isinstance(parts[-1], str):
                        parts[-1] += text
                    else:
                        parts.append(text)
                if field is not None:
                    value = values[field]
                    if isinstance(value, str) and parts and isinstance(parts[-1], str):
                        parts[-1] += value
                    else:
                        parts.append(value)
            claims = tuple((name, values[name]) for name in ("cluster", "namespace", "saname"))
            pattern = Pattern(number, tuple(parts), claims)
            if pattern not in found:
                found.append(pattern)
    if not found:
        who = ", ".join(f"{k}={v}" for k, v in sorted(known.items()) if k != "cluster")
        raise TrustError(
            ("sts", "endpoints", index, "azRules"),
            f"no rule authorizes {who or 'any caller'} (in cluster {cluster!r}); nothing to trust",
            "nothing-authorized",
        )
    return tuple(found)


def _drop_role(rule: rule_filter.Filter, known: Mapping[str, str | None]) -> _Residual:
    """``rule`` with every assertion on ``role`` taken as true (the sub does not carry the role)."""

    def strip(node: rule_filter.Filter) -> rule_filter.Filter | bool:
        if node.op in "&|!":
            children = [strip(c) for c in node.children]
            if node.op == "!":
                inner = children[0]
                return True if isinstance(inner, bool) else rule_filter.Filter("!", children=(inner,))
            kept = tuple(c for c in children if not isinstance(c, bool))
            if node.op == "|" and len(kept) < len(children):
                return True
            return rule_filter.Filter(node.op, children=kept) if kept else True
        return True if node.attribute.lower() == "role" else node

    stripped = strip(rule)
    return True if stripped is True else _known(stripped, known) if not isinstance(stripped, bool) else stripped


def rule_roles(endpoint: config.Endpoint) -> tuple[str, ...]:
    """Roles the rules name exactly (``(role=...)``), in rule order: the roles to write trust for."""

    def walk(node: rule_filter.Filter) -> Iterable[str]:
        if node.op in "&|":
            for child in node.children:
                yield from walk(child)
        elif node.op == "=" and node.attribute.lower() == "role":
            yield node.value

    return tuple(dict.fromkeys(role for rule in endpoint.rules() for role in walk(rule)))
