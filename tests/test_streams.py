"""Stream definitions: the fast schema checks give exactly jsonschema's answers."""

from __future__ import annotations

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectorsync import SchemaError, ValidationError
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
