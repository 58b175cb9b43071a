"""The one dead-letter envelope (issue 14, item 7): what a component writes reads back the same."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from walduck.dlq import MAX_VALUE_BYTES, DeadLetter, read

ROOT = Path(__file__).resolve().parents[3]


@given(
    st.sampled_from(["connector", "compactor", "context"]),
    st.text(min_size=1, max_size=40),
    st.text(max_size=2000),
    st.binary(max_size=2048),
    st.one_of(st.none(), st.binary(min_size=1, max_size=20)),
)
def test_envelope_round_trips(
    component: str, reason: str, detail: str, raw: bytes, key: bytes | None
) -> None:
    letter = DeadLetter(component, reason, "walduck.changes/3@17", raw, detail, key, {"table": "datasets"})
    k, value, headers = letter.envelope(at="2026-12-03T12:00:00+00:00")
    back = read(value, headers, k)
    assert (back.component, back.reason, back.source, back.raw, back.key) == (
        component,
        reason,
        letter.source,
        raw,
        key,
    )
    assert back.detail == detail[:1000]
    assert back.extra == {"at": "2026-12-03T12:00:00+00:00", "table": "datasets"}


def test_oversized_values_are_cut_and_say_their_size() -> None:
    _, value, headers = DeadLetter("compactor", "too_large", "t/0@1", b"x" * (MAX_VALUE_BYTES + 5)).envelope()
    assert len(value) == MAX_VALUE_BYTES
    assert dict(headers)["truncated_from"] == str(MAX_VALUE_BYTES + 5).encode()


def test_every_dlq_writer_uses_the_envelope() -> None:
    """No component builds DLQ headers itself (there were three formats: JSON with raw_b64, src=, source=)."""
    writers = {
        path.relative_to(ROOT).as_posix()
        for package in ("connectors", "pipeline", "sinks")
        for path in (ROOT / package).rglob("*.py")
        if "dlq_topic" in (text := path.read_text()) or "DeadLetter(" in text
    }
    assert writers, "no DLQ writer found"
    for path in writers:
        text = (ROOT / path).read_text()
        assert '("reason", ' not in text and "raw_b64" not in text, path
