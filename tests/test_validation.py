"""Tool arguments: the compiled validator and the jsonschema reference judge every argument alike.

Valid arguments pass through a validator compiled by fastjsonschema (draft 7); refused ones
go to jsonschema (2020-12), which names the offending field. Both must say the same of any
input, for every tool: the schemas use only keywords that mean the same in both drafts, and
patterns end at the end of the string in both (ECMA-262), never before a final newline.
"""

from __future__ import annotations

import functools
from typing import Any

import fastjsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.db import Database
from chalicelib.mcp import ToolError
from chalicelib.mcp.registry import Tool, reference_validator
from tests.test_fuzz import json_values

# Keywords whose meaning is the same in draft 7 (fastjsonschema) and 2020-12 (the dialect we declare).
SHARED_KEYWORDS = {
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "maxProperties",
    "minimum",
    "maximum",
    "pattern",
    "description",
    "default",
}
EDGES = st.sampled_from(["", "x\n", " ", "\u0663", 1.0, 0, -1, 2**64, True, None, [], {}, 0.5]) | json_values
AGREEMENT = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.lru_cache(maxsize=1)
def tools() -> dict[str, Tool]:
    from chalicelib.tools import build_registry

    return build_registry(Database(url="postgresql://unused@localhost/unused")).tools


def keywords(schema: Any) -> set[str]:
    """Every keyword used in a schema (property names under `properties` are not keywords)."""
    if isinstance(schema, list):
        return set().union(*(keywords(item) for item in schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        if key == "properties":
            found |= set().union(*(keywords(sub) for sub in value.values())) if value else set()
        elif key not in ("enum", "const", "default", "required"):
            found |= keywords(value)
    return found


def values_for(schema: dict[str, Any], mutate: bool) -> st.SearchStrategy[Any]:
    """Values the schema accepts; with `mutate`, any part may be swapped for an edge case."""
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds] if kinds else []
    options: list[st.SearchStrategy[Any]] = []
    if "enum" in schema:
        options.append(st.sampled_from(schema["enum"]))
    for kind in [] if "enum" in schema else kinds:
        if kind == "string" and "pattern" in schema:
            pattern = st.from_regex(schema["pattern"], fullmatch=True)
            options.append(pattern.filter(lambda text: len(text) <= schema.get("maxLength", 10**6)))
        elif kind == "string":
            options.append(st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40)))
        elif kind == "integer":
            options.append(st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum")))
        elif kind == "number":
            options.append(st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False))
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "null":
            options.append(st.none())
        elif kind == "array":
            options.append(
                st.lists(
                    values_for(schema.get("items", {}), mutate),
                    min_size=schema.get("minItems", 0),
                    max_size=min(schema.get("maxItems", 3), 3),
                )
            )
        elif kind == "object":
            options.append(objects_for(schema, mutate))
    valid = st.one_of(options) if options else json_values
    return st.one_of(valid, EDGES) if mutate else valid


def objects_for(schema: dict[str, Any], mutate: bool) -> st.SearchStrategy[dict[str, Any]]:
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    if mutate:
        required = set()  # a required key may go missing
    objects = st.fixed_dictionaries(
        {name: values_for(properties[name], mutate) for name in required},
        optional={name: values_for(sub, mutate) for name, sub in properties.items() if name not in required},
    )
    if schema.get("maxProperties") is not None:
        objects = objects.filter(lambda value: len(value) <= schema["maxProperties"])
    if mutate:
        extra = st.dictionaries(st.text(max_size=8), json_values, max_size=2)
        objects = st.builds(lambda base, more: {**more, **base}, objects, extra)
    return objects


def fast_accepts(tool: Tool, arguments: Any) -> bool:
    check = fastjsonschema.compile(tool.input_schema, use_default=False)
    try:
        check(arguments)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


@functools.lru_cache(maxsize=64)
def reference(name: str) -> Any:
    return reference_validator(tools()[name].input_schema)


def test_every_input_schema_uses_only_keywords_that_mean_the_same_in_draft_7_and_2020_12():
    used = {name: keywords(tool.input_schema) - SHARED_KEYWORDS for name, tool in tools().items()}

    assert {name: extra for name, extra in used.items() if extra} == {}


@AGREEMENT
@given(data=st.data())
def test_the_compiled_validator_and_the_reference_agree_on_generated_arguments(data):
    name = data.draw(st.sampled_from(sorted(tools())))
    tool = tools()[name]
    arguments = data.draw(values_for(tool.input_schema, mutate=data.draw(st.booleans())))

    assert fast_accepts(tool, arguments) == reference(name).is_valid(arguments), (name, arguments)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_valid_arguments_pass_validation(data):
    name = data.draw(st.sampled_from(sorted(tools())))
    arguments = data.draw(values_for(tools()[name].input_schema, mutate=False))

    tools()[name].validate(arguments)


@pytest.mark.parametrize("ending", ["\n", "\r\n", " "])
def test_a_uuid_argument_with_anything_after_it_is_refused_by_name(ending):
    tool = tools()["chitty_chat_session_get"]

    with pytest.raises(ToolError) as refused:
        tool.validate({"session_id": "00000000-0000-0000-0000-000000000000" + ending})

    assert refused.value.data == {"field": "session_id"}
    assert "Invalid arguments for chitty_chat_session_get: session_id:" in refused.value.message
