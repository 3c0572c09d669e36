"""Stream definitions: the fast schema checks give exactly jsonschema's answers."""

from __future__ import annotations

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectorsync import SchemaError, StreamError, ValidationError
from connectorsync.streams import StreamDef

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"type": "number"},
        {"type": "integer"},
        {"type": "string"},
        {"type": "boolean"},
        {"type": "null"},
    ],
)
@given(value=scalars | st.lists(scalars, max_size=2))
def test_fast_path_agrees_with_jsonschema(schema, value) -> None:
    definition = StreamDef("s", schema)
    expected = jsonschema.Draft4Validator(schema).is_valid(value)
    try:
        definition.encode(value)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == expected


def test_bad_schemas_raise_schema_error() -> None:
    with pytest.raises(SchemaError, match="invalid JSON schema"):
        StreamDef("s", {"type": "numbr"})
    with pytest.raises(SchemaError, match="must be a dict"):
        StreamDef("s", "number")  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="not JSON"):
        StreamDef("s", {"type": "number", "x": {1, 2}})


def test_encoding_is_compact_json() -> None:
    definition = StreamDef("s", {})
    assert definition.encode(21.5) == "21.5"
    assert definition.encode(3) == "3"
    assert definition.encode({"a": [1, "é"]}) == '{"a":[1,"é"]}'
    assert definition.encode((1, 2)) == "[1,2]"


def _nested_schema(depth: int) -> dict:
    schema: dict = {"type": "number"}
    for _ in range(depth):
        schema = {"not": {"not": schema}}
    return schema


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        pytest.param({"$ref": "#"}, ["'#'", "back to itself"], id="self"),
        pytest.param(
            {
                "definitions": {
                    "a": {"anyOf": [{"type": "string"}, {"$ref": "#/definitions/b"}]},
                    "b": {"allOf": [{"not": {"$ref": "#/definitions/a"}}]},
                },
                "$ref": "#/definitions/a",
            },
            ["back to itself"],
            id="chain",
        ),
        pytest.param({"dependencies": {"a": {"$ref": "#"}}}, ["back to itself"], id="deps"),
        pytest.param(
            {"$schema": "http://json-schema.org/draft-07/schema#", "if": {"$ref": "#"}},
            ["back to itself"],
            id="if",
        ),
        pytest.param({"$ref": "http://example.com/s.json"}, ["local", "#"], id="remote"),
        pytest.param(
            {"properties": {"a": {"$ref": "other.json#/x"}}}, ["'other.json#/x'"], id="relative"
        ),
        pytest.param({"$ref": "#/definitions/missing"}, ["no subschema"], id="missing"),
        pytest.param({"items": {"$ref": "#nowhere"}}, ["no subschema"], id="no-anchor"),
        pytest.param({"$ref": 5}, ["$ref", "5"], id="ref-not-str"),
        pytest.param({"$schema": 5}, ["$schema", "5"], id="schema-not-str"),
        pytest.param({"$schema": []}, ["$schema"], id="schema-list"),
        pytest.param(
            {"$schema": "https://json-schema.org/draft/2020-12/schema", "$dynamicRef": "#"},
            ["$dynamicRef"],
            id="dynamic",
        ),
        pytest.param(_nested_schema(3000), ["levels"], id="deep"),
    ],
)
def test_schemas_that_validation_could_not_finish_are_refused(schema, words) -> None:
    """Issue 9, defect 7: such schemas were accepted, then every insert raised
    RecursionError, an unresolvable-reference error, or AttributeError."""
    with pytest.raises(SchemaError) as info:
        StreamDef("s", schema)
    message = str(info.value)
    for word in ["'s'", *words]:
        assert word in message, message


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        pytest.param(
            {"type": "object", "properties": {"child": {"$ref": "#"}}},
            {"child": {"child": {}}},
            {"child": {"child": 1}},
            id="tree",
        ),
        pytest.param(
            {"definitions": {"n": {"type": "number"}}, "items": {"$ref": "#/definitions/n"}},
            [1, 2.5],
            [1, "x"],
            id="definitions",
        ),
        pytest.param(
            {"properties": {"$ref": {"type": "string"}}},
            {"$ref": "http://example.com"},
            {"$ref": 1},
            id="property-named-ref",
        ),
        pytest.param(
            {"enum": [{"$ref": "http://example.com"}]}, {"$ref": "http://example.com"}, 1, id="enum"
        ),
        pytest.param(
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "$id": "http://example.com/root.json",
                "definitions": {"i": {"$id": "#int", "type": "integer"}},
                "anyOf": [{"$ref": "#int"}, {"$ref": "#/definitions/i"}],
            },
            3,
            3.5,
            id="draft7-anchor",
        ),
        pytest.param(_nested_schema(49), 1, "x", id="deep-allowed"),
    ],
)
def test_schemas_with_local_references_work(schema, good, bad) -> None:
    definition = StreamDef("s", schema)
    definition.encode(good)
    with pytest.raises(ValidationError):
        definition.encode(bad)


def test_a_value_too_deep_for_its_schema_is_a_validation_error() -> None:
    """Each level of the value walks 45 schema levels: within both limits, but more than
    Python's stack. Before, the RecursionError escaped insert()."""
    chain: dict = {"$ref": "#"}
    for _ in range(45):
        chain = {"allOf": [chain]}
    definition = StreamDef("s", {"type": "array", "items": chain})
    value: object = 1
    for _ in range(99):
        value = [value]
    with pytest.raises(ValidationError, match="recursion limit"):
        definition.encode(value)


@pytest.mark.parametrize("name", ["temp\n", "alice/sensor/temp\n", "alice\n/sensor/temp", "a\n"])
def test_a_name_with_a_trailing_newline_is_refused(name) -> None:
    """Issue 9, defect 8: '$' matches before a final newline, so "temp\\n" was accepted and
    synced as temp%0A."""
    with pytest.raises(StreamError, match="invalid stream name"):
        StreamDef(name, {})
