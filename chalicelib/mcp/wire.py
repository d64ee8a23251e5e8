"""JSON as it arrives: parsed within a nesting limit, and checked for values no handler can use.

JSON has neither NaN nor Infinity (Python's parser accepts both), PostgreSQL stores no U+0000 in
text or jsonb, and UTF-8 has no form for a lone surrogate (which the escape `\\ud800` yields).
The server refuses all of these before a handler runs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, NamedTuple

# Deeper bodies are refused before parsing: the parser recurses once per level.
MAX_JSON_DEPTH = 512
# Tool arguments nest objects and arrays at most this deep, the arguments object being the first level.
MAX_ARGUMENT_DEPTH = 32

# Possessive, and an unclosed string runs to the end: one linear pass whatever the body holds.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_DEPTH_CHUNK = 16_384


class TooDeep(ValueError):
    """A JSON body nested deeper than MAX_JSON_DEPTH."""


class Parsed(NamedTuple):
    """A parsed body, and whether it used NaN, Infinity or -Infinity (which JSON does not have)."""

    value: Any
    non_finite: bool


class _NonFinite(Exception):
    """NaN, Infinity or -Infinity met while parsing."""


def _refuse_non_finite(name: str) -> float:
    raise _NonFinite(name)


_JSON_ONLY = json.JSONDecoder(parse_constant=_refuse_non_finite)


def parse_json(body: bytes) -> Parsed:
    """Parse a request body. Raises TooDeep, or ValueError when the body is not JSON in UTF-8 (or -16/-32)."""
    text = body.decode(json.detect_encoding(body))
    if _openers_exceed(body, MAX_JSON_DEPTH) and _nesting_depth(text) > MAX_JSON_DEPTH:
        raise TooDeep(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        try:
            return Parsed(_JSON_ONLY.decode(text), non_finite=False)
        except _NonFinite:
            # Rare: parse again keeping them (as floats), so that a tool argument holding one is named.
            return Parsed(json.loads(text), non_finite=True)
    except RecursionError:  # only when the stack is deep already: the check above is the limit
        raise TooDeep(f"JSON nested more than {MAX_JSON_DEPTH} levels deep") from None


def _openers_exceed(body: bytes, limit: int) -> bool:
    """Are there more than `limit` bytes `[` and `{`? Nesting needs as many; few bodies have that many.

    Each search is memchr, and it stops at `limit`: cheaper than counting every byte (in UTF-16/32
    other characters may hold these bytes too, which only means a closer look).
    """
    found = 0
    for opener in b"[{":
        at = body.find(opener)
        while at != -1:
            found += 1
            if found > limit:
                return True
            at = body.find(opener, at + 1)
    return False


def _nesting_depth(text: str) -> int:
    """How deeply brackets nest outside strings (as deep as a parser would recurse, or deeper for
    broken JSON), counted until it passes MAX_JSON_DEPTH."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    depth = deepest = 0
    for start in range(0, len(brackets), _DEPTH_CHUNK):
        depths = list(accumulate(map(_BRACKET_STEP.__getitem__, brackets[start : start + _DEPTH_CHUNK]), initial=depth))
        depth, deepest = depths[-1], max(deepest, max(depths))
        if deepest > MAX_JSON_DEPTH:
            break
    return deepest


def unstorable(text: str) -> str | None:
    """Why a string cannot be stored or sent as UTF-8 (U+0000, a lone surrogate), or None when it can."""
    if "\x00" in text:
        return "contains U+0000 (NUL), which cannot be stored"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")  # a tenth of the time a regular expression takes to find a surrogate
    except UnicodeEncodeError as error:
        return f"contains a lone surrogate (U+{ord(text[error.start]):04X}), which is not valid Unicode"
    return None


@dataclass(frozen=True)
class Unfit:
    """Where in a value something unusable sits (keys and indexes from the top), and what it is."""

    path: tuple[str | int, ...]
    problem: str

    @property
    def field(self) -> str:
        """The path as tool errors name fields: `metadata/tags/0`; the top level is `arguments`."""
        return "/".join(str(part) for part in self.path) or "arguments"


def find_unfit(value: Any, max_depth: int) -> Unfit | None:
    """The first string with U+0000 or a lone surrogate (keys too), non-finite number, or object or
    array nested more than `max_depth` levels (`value` itself being the first) in `value`, if any.

    One pass without recursion, which goes no deeper than `max_depth` whatever the value's depth.
    Plain ASCII text without U+0000 (nearly all of it) costs two C-speed checks per string.
    """
    if not isinstance(value, (dict, list)):
        problem = _problem(value)
        return None if problem is None else Unfit((), problem)
    stack: list[tuple[dict[str, Any] | list[Any], tuple[str | int, ...], int]] = [(value, (), 1)]
    while stack:
        container, path, depth = stack.pop()
        if depth > max_depth:
            return Unfit(path, f"nested more than {max_depth} levels deep")
        if isinstance(container, dict):
            for key in container:
                if "\x00" in key or not key.isascii():
                    problem = unstorable(key)
                    if problem is not None:
                        return Unfit(path, f"a key {problem}")
            steps: Iterable[tuple[str | int, Any]] = container.items()
        else:
            steps = enumerate(container)
        for step, item in steps:
            if isinstance(item, str):
                if "\x00" in item or not item.isascii():
                    problem = unstorable(item)
                    if problem is not None:
                        return Unfit((*path, step), problem)
            elif isinstance(item, (dict, list)):
                stack.append((item, (*path, step), depth + 1))
            elif isinstance(item, float) and not math.isfinite(item):
                return Unfit((*path, step), _non_finite(item))
    return None


def _problem(item: Any) -> str | None:
    if isinstance(item, str):
        return unstorable(item)
    if isinstance(item, float) and not math.isfinite(item):
        return _non_finite(item)
    return None


def _non_finite(number: float) -> str:
    name = "NaN" if math.isnan(number) else "Infinity" if number > 0 else "-Infinity"
    return f"{name} is not a JSON number"


@dataclass(frozen=True)
class IntegerFields:
    """Where a schema says `integer`: here, under named properties, in array items, in other properties."""

    here: bool
    properties: dict[str, IntegerFields | None] = field(default_factory=dict)
    items: IntegerFields | None = None
    others: IntegerFields | None = None


def integer_fields(schema: Any) -> IntegerFields | None:
    """The places a JSON Schema types as integer, or None when it has none."""
    if not isinstance(schema, dict):
        return None
    kinds = schema.get("type")
    here = kinds == "integer" or (isinstance(kinds, list) and "integer" in kinds)
    declared = schema.get("properties")
    properties = {name: integer_fields(sub) for name, sub in declared.items()} if isinstance(declared, dict) else {}
    items = integer_fields(schema.get("items"))
    others = integer_fields(schema.get("additionalProperties"))
    if not here and items is None and others is None and not any(properties.values()):
        return None
    return IntegerFields(here=here, properties=properties, items=items, others=others)


def coerce_integers(value: Any, fields: IntegerFields | None) -> Any:
    """`value` with integral floats made ints wherever `fields` says integer; containers change in place.

    JSON Schema counts 100.0 as an integer, so a validated `1e2` is still a float: SQL would refuse it.
    """
    if fields is None:
        return value
    if fields.here and type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        for key, item in value.items():
            sub = fields.properties.get(key, fields.others)  # declared properties are never "other"
            if sub is not None:
                value[key] = coerce_integers(item, sub)
    elif isinstance(value, list) and fields.items is not None:
        for index, item in enumerate(value):
            value[index] = coerce_integers(item, fields.items)
    return value
