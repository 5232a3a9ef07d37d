"""RFC 4515 search filters, parsed once and evaluated over a Pod's attributes.

This is the one authorization-rule parser of kube-sts: the compiler uses it to validate
``azRules`` and the token service uses it to decide. Supported: ``&``, ``|``, ``!``,
equality, presence (``attr=*``), substrings (``attr=a*b*c``) and ``\\XX`` escapes.
Attribute names and values compare case-insensitively (``caseIgnoreMatch``), which is
what an LDAP directory does for the string attributes the seed system exposed.

Matching is defined over printable ASCII only (``U+0020`` to ``U+007E``), so that no
look-alike character can slip past a negation: ``(!(role=*admin*))`` must not admit
``ADM\u0130N`` (Turkish dotted capital I) or ``\u0430dmin`` (Cyrillic a). Hence:

- a filter whose assertion values hold anything else is refused by ``parse`` (it could
  never match);
- when any attribute value of the caller is outside printable ASCII, the whole filter is
  false, whatever its negations say: such a caller is denied by every rule;
- case folding is ASCII folding (``A-Z`` to ``a-z``) and nothing else.

    >>> parse("(&(namespace=myns)(!(saname=default)))").matches({"namespace": "myns", "saname": "app"})
    True
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

__all__ = ["Filter", "FilterError", "parse", "printable_ascii"]

# RFC 4512 attribute description: keystring (ALPHA *(ALPHA / DIGIT / "-")) with options,
# or a numeric OID. Options (";lang-en") are accepted and ignored for matching.
_ATTR = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)(?:;[A-Za-z0-9-]+)*")
_MAX_DEPTH = 32
_MAX_LENGTH = 4096
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def printable_ascii(value: str) -> bool:
    """Whether ``value`` holds only printable ASCII (the only values a filter can match)."""
    return _PRINTABLE.fullmatch(value) is not None


class FilterError(ValueError):
    """The filter text is not an RFC 4515 filter; ``position`` is the 0-based offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at offset {position}")
        self.message = message
        self.position = position


Attributes = Mapping[str, str | None]


@dataclasses.dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter node. ``op`` is one of ``& | ! = =* ~sub``."""

    op: str
    attribute: str = ""
    value: str = ""
    parts: tuple[str | None, ...] = ()
    children: tuple[Filter, ...] = ()

    def matches(self, attributes: Attributes) -> bool:
        """Evaluate over ``attributes`` (names matched case-insensitively, missing = absent).

        False, whatever the filter, when any value is outside printable ASCII (module docstring).
        """
        lowered: dict[str, str | None] = {}
        for name, value in attributes.items():
            if value is not None and not printable_ascii(value):
                return False
            lowered[name.lower()] = value
        return self._eval(lowered)

    def _eval(self, attrs: Mapping[str, str | None]) -> bool:
        if self.op == "&":
            return all(c._eval(attrs) for c in self.children)
        if self.op == "|":
            return any(c._eval(attrs) for c in self.children)
        if self.op == "!":
            return not self.children[0]._eval(attrs)
        actual = attrs.get(self.attribute)
        if actual is None:
            return False
        if self.op == "=*":
            return True
        if self.op == "=":
            return actual.lower() == self.value.lower()
        return _substring_match(actual.lower(), self.parts)

    def __str__(self) -> str:
        if self.op in "&|!":
            return f"({self.op}{''.join(str(c) for c in self.children)})"
        if self.op == "=*":
            return f"({self.attribute}=*)"
        if self.op == "=":
            return f"({self.attribute}={_escape(self.value)})"
        return f"({self.attribute}={'*'.join(_escape(p or '') for p in self.parts)})"


def _substring_match(value: str, parts: tuple[str | None, ...]) -> bool:
    initial, *middle, final = parts
    pos = 0
    if initial:
        if not value.startswith(initial):
            return False
        pos = len(initial)
    end = len(value)
    if final:
        if len(value) - pos < len(final) or not value.endswith(final):
            return False
        end = len(value) - len(final)
    for piece in middle:
        assert piece is not None
        found = value.find(piece, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True


def _escape(value: str) -> str:
    return "".join(f"\\{ord(c):02x}" if c in "*()\\\0" else c for c in value)


def parse(text: str) -> Filter:
    """Parse ``text`` as one RFC 4515 filter (surrounding whitespace allowed)."""
    if len(text) > _MAX_LENGTH:
        raise FilterError(f"filter is longer than {_MAX_LENGTH} characters", _MAX_LENGTH)
    parser = _Parser(text)
    parser.skip_space()
    node = parser.filter(0)
    parser.skip_space()
    if parser.pos != len(text):
        raise FilterError("unexpected text after the filter", parser.pos)
    return node


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def expect(self, char: str) -> None:
        if self.pos >= len(self.text):
            raise FilterError(f"expected {char!r} but the filter ended", self.pos)
        if self.text[self.pos] != char:
            raise FilterError(f"expected {char!r}, found {self.text[self.pos]!r}", self.pos)
        self.pos += 1

    def filter(self, depth: int) -> Filter:
        if depth > _MAX_DEPTH:
            raise FilterError(f"filter nests deeper than {_MAX_DEPTH} levels", self.pos)
        self.expect("(")
        if self.pos >= len(self.text):
            raise FilterError("filter ended after '('", self.pos)
        char = self.text[self.pos]
        if char in "&|":
            self.pos += 1
            children = []
            while self.pos < len(self.text) and self.text[self.pos] == "(":
                children.append(self.filter(depth + 1))
            if not children:
                raise FilterError(f"'{char}' needs at least one filter", self.pos)
            node = Filter(char, children=tuple(children))
        elif char == "!":
            self.pos += 1
            node = Filter("!", children=(self.filter(depth + 1),))
        else:
            node = self.item()
        self.expect(")")
        return node

    def item(self) -> Filter:
        match = _ATTR.match(self.text, self.pos)
        if match is None:
            raise FilterError("expected an attribute name", self.pos)
        attribute = match.group().split(";", 1)[0].lower()
        self.pos = match.end()
        if self.text.startswith((">=", "<=", "~="), self.pos):
            raise FilterError(f"the {self.text[self.pos : self.pos + 2]!r} match is not supported", self.pos)
        if self.text.startswith(":", self.pos):
            raise FilterError("extensible matches are not supported", self.pos)
        self.expect("=")
        value_start = self.pos
        parts: list[str] = [""]
        starred = False
        while self.pos < len(self.text) and self.text[self.pos] != ")":
            char = self.text[self.pos]
            if char == "*":
                starred = True
                parts.append("")
                self.pos += 1
            elif char == "\\":
                parts[-1] += self.escaped()
            elif char in "(\0":
                raise FilterError(f"{char!r} must be escaped as \\{ord(char):02x}", self.pos)
            else:
                parts[-1] += char
                self.pos += 1
        for part in parts:
            if not printable_ascii(part):
                raise FilterError(
                    "values are matched as printable ASCII only; a value with other characters can never match",
                    value_start,
                )
        if not starred:
            return Filter("=", attribute, parts[0])
        if parts == ["", ""]:
            return Filter("=*", attribute)
        if any(p == "" for p in parts[1:-1]):
            raise FilterError("a substring filter cannot contain '**'", self.pos)
        folded: tuple[str | None, ...] = tuple(p.lower() for p in parts)
        return Filter("~sub", attribute, parts=folded)

    def escaped(self) -> str:
        # One or more \XX escapes decode to UTF-8 bytes; decode them together.
        start = self.pos
        raw = bytearray()
        while self.text.startswith("\\", self.pos):
            digits = self.text[self.pos + 1 : self.pos + 3]
            if len(digits) != 2 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise FilterError("'\\' must be followed by two hex digits", self.pos)
            raw.append(int(digits, 16))
            self.pos += 3
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FilterError("escaped bytes are not valid UTF-8", start) from exc
