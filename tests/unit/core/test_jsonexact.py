"""walduck/jsonexact.py: every JSON number a jsonb value can hold survives load and dump exactly."""

from __future__ import annotations

from decimal import Decimal

import orjson
from hypothesis import given
from hypothesis import strategies as st

from walduck.jsonexact import dumps_exact, loads_exact

_numbers = st.decimals(allow_nan=False, allow_infinity=False) | st.integers(-(10**40), 10**40)


@given(st.lists(_numbers, max_size=6), st.text(max_size=20))
def test_numbers_are_exact_through_load_and_dump(numbers: list, text: str) -> None:
    raw = b'{"n": [' + b", ".join(str(n).encode() for n in numbers) + b'], "t": ' + orjson.dumps(text) + b"}"
    doc = loads_exact(raw)
    assert [Decimal(str(x)) if isinstance(x, float) else Decimal(x) for x in doc["n"]] == [
        Decimal(n) for n in numbers
    ]
    again = loads_exact(dumps_exact(doc))
    assert again == doc and again["t"] == text


def test_plain_documents_stay_on_orjson_types() -> None:
    raw = b'{"a": 1.5, "b": 9223372036854775807, "t": "2024-01-01T00:00:00.123456+00:00", "e": 12E+5}'
    assert loads_exact(raw) == orjson.loads(raw)
    assert loads_exact(b'{"huge": 1e400, "tiny": 1e-400}') == {
        "huge": Decimal("1e400"),
        "tiny": Decimal("1e-400"),
    }


def test_a_number_has_one_representation_in_any_document() -> None:
    alone = loads_exact(b'{"v": 147.945}')
    beside_a_big_one = loads_exact(b'{"v": 147.945, "big": 123456789012345678901234567890}')
    assert type(alone["v"]) is type(beside_a_big_one["v"]) is float
    assert alone["v"] == beside_a_big_one["v"]
