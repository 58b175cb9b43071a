"""The compiled row encoder returns exactly what the pure-Python one returns, for generated TupleData.

Both encoders turn one INSERT's TupleData into the row's JSON bytes plus routing values
(connectors/rowjson.py). The Python encoder is the reference (RowPlan.decode + orjson.dumps); the native
one copies PostgreSQL's text where it already is JSON and must agree byte for byte, including on
refusals (``None``: the careful decoder takes the row).
"""

from __future__ import annotations

import os
import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors import pgoutput as po
from connectors import rowjson, values

# a column type and a generator of its text form as the walsender could send it (plus malformed ones)
_digits = st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str)
_odd_ints = st.sampled_from(["-0", "007", "+5", " 5", "1_000", "", "-", "12a", "9" * 19, "-" + "9" * 19])
_text = st.text(max_size=30)
_ascii = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=30)
_ts = st.builds(
    lambda d, frac, tz: f"{d:%Y-%m-%d %H:%M:%S}{frac}{tz}",
    st.datetimes(),
    st.sampled_from(["", ".5", ".123456", ".1234567", ".", ".12a"]),
    st.sampled_from(["+00", "+05:30", "", "-03"]),
)
_odd_ts = st.sampled_from(
    ["infinity", "-infinity", "2024-01-01 00:00:00+00 BC", "2024-01-01T00:00:00+00", "x" * 25]
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
).map(lambda v: orjson.dumps(v).decode())
COLUMN_TYPES: dict[int, st.SearchStrategy[str]] = {
    values.TEXT: _text | _ascii,
    values.VARCHAR: _ascii,
    values.INT4: _digits | _odd_ints,
    values.INT8: _digits | _odd_ints,
    values.BOOL: st.sampled_from(["t", "f", "x", "true", ""]),
    values.JSONB: _json,
    values.TIMESTAMPTZ: _ts | _odd_ts,
    values.FLOAT8: st.floats(allow_nan=True).map(repr)
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e+20"]),
    values.TEXT_ARRAY: st.sampled_from(["{}", "{a,b}", '{"x y",NULL}', "{{1}}"]),
    values.NUMERIC: st.sampled_from(["1.50", "-0", "NaN"]),
}


@st.composite
def relation_and_tuple(draw: st.DrawFn) -> tuple[po.Relation, bytes]:
    types = draw(st.lists(st.sampled_from(sorted(COLUMN_TYPES)), min_size=0, max_size=8))
    names = draw(
        st.lists(
            st.sampled_from(["id", "dataset_id", "a", "b", "c", 'q"uote', "é", "x\ny"]),
            min_size=len(types),
            max_size=len(types),
            unique=True,
        )
    )
    cols = tuple(po.Column(n, t, -1, n == "id") for n, t in zip(names, types, strict=True))
    parts = [struct.pack("!h", len(cols))]
    for col in cols:
        kind = draw(st.sampled_from("ttttttnu"))
        if kind == "t":
            raw = draw(COLUMN_TYPES[col.type_oid]).encode()
            if draw(st.integers(0, 30)) == 0:
                raw = raw + b"\xff"  # not UTF-8
            parts.append(b"t" + struct.pack("!I", len(raw)) + raw)
        else:
            parts.append(kind.encode())
    buf = b"".join(parts)
    cut = draw(st.sampled_from(["whole"] * 8 + ["short", "long"]))
    if cut == "short" and buf:
        buf = buf[: draw(st.integers(0, len(buf) - 1))]
    elif cut == "long":
        buf += b"x"
    return po.Relation(16384, "public", "t", "d", cols), buf


@settings(max_examples=1500, deadline=None)
@given(relation_and_tuple())
def test_native_encoder_equals_python_encoder(case: tuple[po.Relation, bytes]) -> None:
    rel, tuple_data = case
    plan = po.RowPlan.of(rel)
    wanted = ("id", "dataset_id", "missing")
    payload = b"I" + struct.pack("!I", rel.oid) + b"N" + tuple_data
    reference = rowjson.PyRowEncoder(plan, wanted).encode(payload, 6)
    native = rowjson.native_encoder(plan, wanted).encode(payload, 6)
    if reference is None:
        assert native is None
    else:  # (routing values may be orjson.Fragment: compared as JSON)
        assert native is not None
        assert (native[0], orjson.dumps(native[1])) == (reference[0], orjson.dumps(reference[1]))
    if reference is not None:  # and the JSON is what the careful decoder gives, parsed
        row = po.RelationCache.row(rel, po.decode(payload).new)  # type: ignore[union-attr]
        assert orjson.loads(reference[0]) == orjson.loads(orjson.dumps(row))


def test_native_encoder_is_built() -> None:
    """The test run uses the compiled encoder (a silent fallback would leave it untested);
    WALDUCK_ALLOW_PYTHON_ROW_ENCODER=1 accepts an installation without a C compiler."""
    if os.environ.get("WALDUCK_ALLOW_PYTHON_ROW_ENCODER") == "1":
        assert rowjson.active() in ("native", "python")
    else:
        assert rowjson.NativeRowEncoder is not None, (
            "connectors._rowjson not built: pip install -e . with gcc"
        )
        assert rowjson.active() == "native"


def test_encoder_choice() -> None:
    rel = po.Relation(1, "public", "t", "d", (po.Column("id", values.INT8, -1, True),))
    plan = po.RowPlan.of(rel)
    assert isinstance(rowjson.make_encoder(plan, ("id",), "python"), rowjson.PyRowEncoder)
    assert not isinstance(rowjson.make_encoder(plan, ("id",), "native"), rowjson.PyRowEncoder)
    with pytest.raises(ValueError, match="unknown row encoder"):
        rowjson.make_encoder(plan, ("id",), "fast")
    payload = b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x0242"
    for which in ("python", "native"):
        assert rowjson.make_encoder(plan, ("id",), which).encode(payload, 6) == (b'{"id":42}', (42,))
