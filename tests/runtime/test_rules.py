"""The RFC 4515 filter engine: a table of filters and attribute sets, and property tests."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kube_sts.runtime import rules as rule_filter

POD = {
    "namespace": "team-a",
    "saname": "builder",
    "cluster": "prod-eu",
    "pod": "builder-7f9c",
    "role": "arn:aws:iam::1:role/Team-A*",
}

# (filter, attributes, expected)
TABLE: list[tuple[str, Mapping[str, str | None], bool]] = [
    # equality, case-insensitive names and values
    ("(namespace=team-a)", POD, True),
    ("(namespace=team-b)", POD, False),
    ("(NameSpace=TEAM-A)", POD, True),
    ("(namespace=team-a)", {"NAMESPACE": "Team-A"}, True),
    ("(namespace=team-a )", POD, False),
    ("(namespace=)", {"namespace": ""}, True),
    ("(namespace=)", POD, False),
    ("  (namespace=team-a)\n", POD, True),
    ("(namespace;lang-en=team-a)", POD, True),
    # presence
    ("(role=*)", POD, True),
    ("(role=*)", {"namespace": "x"}, False),
    ("(role=*)", {"role": None}, False),
    ("(role=*)", {"role": ""}, True),
    # absent attributes never match, and negation turns that around
    ("(unknown=x)", POD, False),
    ("(!(unknown=x))", POD, True),
    # substrings
    ("(pod=builder-*)", POD, True),
    ("(pod=*-7f9c)", POD, True),
    ("(pod=*ILD*)", POD, True),
    ("(pod=b*d*r*c)", POD, True),
    ("(pod=b*r*d*c)", POD, False),
    ("(pod=builder-7f9c*)", POD, True),
    ("(pod=*builder-7f9c)", POD, True),
    ("(pod=builder*builder)", {"pod": "builder"}, False),
    ("(pod=ab*ba)", {"pod": "aba"}, False),
    ("(pod=ab*ba)", {"pod": "abba"}, True),
    ("(pod=a*a*a)", {"pod": "aa"}, False),
    ("(pod=a*a*a)", {"pod": "aaa"}, True),
    ("(cluster=prod-*)", POD, True),
    ("(cluster=dev-*)", POD, False),
    # escapes: \2a is a literal *, \28 \29 parentheses, \5c backslash
    ("(role=arn:aws:iam::1:role/team-a\\2a)", POD, True),
    ("(role=arn:aws:iam::1:role/team-a\\2A)", POD, True),
    ("(role=*team-a\\2a)", POD, True),
    ("(role=*team-a)", POD, False),
    ("(note=\\28x\\29)", {"note": "(x)"}, True),
    ("(note=a\\5cb)", {"note": "a\\b"}, True),
    ("(note=caf\\45)", {"note": "CAFE"}, True),
    # nesting
    ("(&(namespace=team-a)(saname=builder))", POD, True),
    ("(&(namespace=team-a)(saname=deployer))", POD, False),
    ("(|(namespace=team-b)(saname=builder))", POD, True),
    ("(|(namespace=team-b)(saname=deployer))", POD, False),
    ("(&(namespace=team-a)(!(saname=default)))", POD, True),
    ("(&(namespace=team-a)(!(saname=builder)))", POD, False),
    ("(!(&(namespace=team-a)(saname=builder)))", POD, False),
    ("(|(&(namespace=team-b)(role=*))(&(cluster=prod-*)(|(pod=x)(pod=builder-*))))", POD, True),
    ("(&(namespace=team-a))", POD, True),
    ("(|(namespace=team-a))", POD, True),
    ("(!(!(namespace=team-a)))", POD, True),
    # values outside printable ASCII satisfy no rule, and no negation turns that around
    ("(!(role=*admin*))", {"role": "ADMIN"}, False),
    ("(!(role=*admin*))", {"role": "ADM\u0130N"}, False),  # Turkish dotted capital I
    ("(!(role=*admin*))", {"role": "\u0430dmin"}, False),  # Cyrillic a
    ("(!(role=*admin*))", {"role": "reader"}, True),
    ("(!(role=*admin*))", {"role": "r\u00e9ader"}, False),
    ("(!(role=*admin*))", {"role": "reader\n"}, False),  # control characters are not printable
    ("(namespace=team-a)", {"namespace": "team-a", "role": "\u212aelvin"}, False),  # Kelvin sign
    ("(|(namespace=team-a)(!(role=x)))", {"namespace": "team-a", "role": "x\u00a0"}, False),
    ("(role=*)", {"role": "\ufeff"}, False),
    ("(!(unknown=x))", {"pod": "p\u0131"}, False),  # dotless i
]

INVALID = [
    "",
    "namespace=team-a",
    "(namespace=team-a",
    "namespace=team-a)",
    "(namespace=team-a))",
    "()",
    "(&)",
    "(|)",
    "(!)",
    "(!(a=b)(c=d))",
    "(=x)",
    "(1a=x)",
    "(a b=x)",
    "(a=x(y)",
    "(a=**)",
    "(a=x**y)",
    "(a=\\)",
    "(a=\\4)",
    "(a=\\zz)",
    "(a=\\c3)",
    "(a=caf\\c3\\a9)",  # decodes to a non-ASCII value: it could never match
    "(a=é)",
    "(a=*\u0430dmin*)",
    "(a=x\ty)",
    "(a=\\ff\\fe)",
    "(a>=1)",
    "(a<=1)",
    "(a~=1)",
    "(a:dn:=1)",
    "(a=b)(c=d)",
    "(& (a=b))",
    "(a=\x00)",
    "(a=b" + ")" * 2,
    "(" * 40 + "a=b" + ")" * 40,
    "(a=" + "x" * 5000 + ")",
]


@pytest.mark.parametrize(("text", "attributes", "expected"), TABLE)
def test_table(text: str, attributes: Mapping[str, str | None], expected: bool) -> None:
    assert rule_filter.parse(text).matches(attributes) is expected


@pytest.mark.parametrize("text", INVALID)
def test_invalid_filters_raise_filter_error(text: str) -> None:
    with pytest.raises(rule_filter.FilterError) as error:
        rule_filter.parse(text)
    assert 0 <= error.value.position <= max(len(text), 4096)


def test_error_position_points_at_the_problem() -> None:
    with pytest.raises(rule_filter.FilterError) as error:
        rule_filter.parse("(&(a=b)(c>=d))")
    assert error.value.position == 9
    assert "not supported" in str(error.value)


def test_deep_nesting_within_the_limit() -> None:
    text = "(!" * 16 + "(a=b)" + ")" * 16
    assert rule_filter.parse(text).matches({"a": "b"}) is True


# -- properties ---------------------------------------------------------------------------------

FILTER_ALPHABET = st.sampled_from([*"()&|!=*\\~<>:; abcAB01-.\x00é日", "\\2a", "\\28", "\\c3\\a9", "\\zz"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(FILTER_ALPHABET, max_size=40).map("".join)))
def test_any_text_parses_or_raises_filter_error(text: str) -> None:
    try:
        parsed = rule_filter.parse(text)
    except rule_filter.FilterError:
        return
    assert isinstance(parsed.matches({"a": "b", "namespace": text}), bool)


ATTRIBUTE = st.sampled_from(["namespace", "saname", "cluster", "pod", "role", "Role"])
VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=6)


def leaf() -> st.SearchStrategy[rule_filter.Filter]:
    equality = st.builds(lambda a, v: rule_filter.Filter("=", a.lower(), v), ATTRIBUTE, VALUE)
    presence = st.builds(lambda a: rule_filter.Filter("=*", a.lower()), ATTRIBUTE)
    pieces = st.lists(VALUE.filter(bool), min_size=0, max_size=3)
    substring = st.builds(
        lambda a, i, m, f: rule_filter.Filter("~sub", a.lower(), parts=(i.lower(), *(p.lower() for p in m), f.lower())),
        ATTRIBUTE,
        VALUE,
        pieces,
        VALUE,
    ).filter(lambda node: node.parts != ("", ""))
    return st.one_of(equality, presence, substring)


TREES = st.recursive(
    leaf(),
    lambda children: st.one_of(
        st.builds(lambda c: rule_filter.Filter("&", children=tuple(c)), st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda c: rule_filter.Filter("|", children=tuple(c)), st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda c: rule_filter.Filter("!", children=(c,)), children),
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(TREES)
def test_printed_filters_parse_back_to_the_same_tree(tree: rule_filter.Filter) -> None:
    assert rule_filter.parse(str(tree)) == tree


def _oracle(parts: tuple[str, ...], value: str) -> bool:
    return re.fullmatch(".*".join(re.escape(p) for p in parts), value, re.DOTALL) is not None


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.text(alphabet="abAB", max_size=3), min_size=2, max_size=5).filter(
        lambda p: all(p[1:-1]) and p != ["", ""]
    ),
    st.text(alphabet="abAB", max_size=10),
)
def test_substring_matching_agrees_with_a_regular_expression(parts: list[str], value: str) -> None:
    text = "(pod=" + "*".join(parts) + ")"
    folded = tuple(p.lower() for p in parts)
    assert rule_filter.parse(text).matches({"pod": value}) is _oracle(folded, value.lower())


NOT_PRINTABLE = st.characters(codec="utf-8").filter(lambda c: not 0x20 <= ord(c) <= 0x7E)
ANY_VALUE = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)


@settings(max_examples=400, deadline=None)
@given(
    TREES,
    st.sampled_from(["namespace", "saname", "cluster", "pod", "role"]),
    st.tuples(ANY_VALUE, NOT_PRINTABLE, ANY_VALUE).map("".join),
    st.dictionaries(st.sampled_from(["namespace", "saname", "cluster", "pod", "role"]), ANY_VALUE),
)
def test_no_rule_allows_a_value_outside_printable_ascii(
    tree: rule_filter.Filter, name: str, value: str, others: dict[str, str]
) -> None:
    """Whatever the rule (negations included), one non-ASCII attribute value means deny."""
    attributes: dict[str, str | None] = {**others, name: value}
    assert tree.matches(attributes) is False
    assert rule_filter.parse(str(tree)).matches(attributes) is False


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=8).filter(lambda v: not rule_filter.printable_ascii(v) and "\x00" not in v))
def test_rules_with_values_outside_printable_ascii_are_refused(value: str) -> None:
    text = "(role=" + "".join(f"\\{byte:02x}" for byte in value.encode()) + ")"
    with pytest.raises(rule_filter.FilterError, match="printable ASCII"):
        rule_filter.parse(text)
