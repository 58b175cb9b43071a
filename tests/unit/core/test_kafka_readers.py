"""Every reader of the transactional topics is built by ``walduck.kafka_readers`` (issue 14): read_committed,
no group, no auto-commit, records up to WALDUCK_MAX_MESSAGE_BYTES, the security settings of every client."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from walduck.config import WalduckSettings
from walduck.kafka_readers import READ_COMMITTED, committed_reader, committed_reader_kwargs
from walduck.kafka_security import client_kwargs

ROOT = Path(__file__).resolve().parents[3]

# the readers of the deltas (or compactor-state) topic: each must build its consumer with committed_reader
READERS = {
    "sinks/context/consumer.py": {"_run_once"},
    "pipeline/runner.py": {"consumer_end_offsets"},
    "pipeline/state_topic.py": {"read_snapshots", "read_deltas_from"},
    "stack/bench/pipeline.py": {"topic_records"},
    "stack/bench/connector.py": {"tail"},
    "tests/support/truth.py": {"deltas_replayed"},
    "tests/support/compactor_kafka.py": {"read_topic"},
}
# the other consumers of the runtime packages read topics no transaction writes, in a consumer group
OTHER_CONSUMERS = {
    "pipeline/runner.py",  # the compactor's group consumer of the changes topic
    "connectors/debezium/source.py",  # Debezium's topics, in its group
    "stack/bench/history.py",  # end offsets of the changes topic
}
SELF = ("walduck/kafka_readers.py", "tests/unit/core/test_kafka_readers.py")
RUNTIME = ("walduck", "connectors", "pipeline", "sinks", "stack")


def test_kwargs_are_read_committed_without_group_or_commit() -> None:
    s = WalduckSettings(kafka_bootstrap="k1:9092,k2:9092", max_message_bytes=3 << 20)
    kwargs = committed_reader_kwargs(s)
    assert kwargs == {
        **client_kwargs(s),
        "group_id": None,
        "enable_auto_commit": False,
        "isolation_level": READ_COMMITTED,
        "max_partition_fetch_bytes": 3 << 20,
    }


def test_kwargs_carry_the_security_settings() -> None:
    s = WalduckSettings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="walduck",
        kafka_sasl_password="pw",
    )
    kwargs = committed_reader_kwargs(s)
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert kwargs["sasl_plain_username"] == "walduck" and kwargs["sasl_plain_password"] == "pw"


def test_overrides_add_or_replace_but_never_the_isolation_level() -> None:
    s = WalduckSettings()
    kwargs = committed_reader_kwargs(s, bootstrap_servers="other:1", auto_offset_reset="none")
    assert kwargs["bootstrap_servers"] == "other:1" and kwargs["auto_offset_reset"] == "none"
    assert kwargs["isolation_level"] == READ_COMMITTED
    with pytest.raises(TypeError, match="read_committed"):
        committed_reader_kwargs(s, isolation_level="read_uncommitted")


def test_the_consumer_built_reads_committed() -> None:
    async def build() -> tuple[str, object]:
        consumer = committed_reader(WalduckSettings(), max_poll_records=7)
        return consumer._isolation_level, consumer._group_id

    assert asyncio.run(build()) == (READ_COMMITTED, None)


def _calls(node: ast.AST, name: str) -> bool:
    return any(
        isinstance(n, ast.Call)
        and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)
        for n in ast.walk(node)
    )


@pytest.mark.parametrize("path", sorted(READERS))
def test_each_deltas_reader_is_a_committed_reader(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    missing = READERS[path] - set(functions)
    assert not missing, f"{path} has no {missing}: update READERS"
    assert [f for f in sorted(READERS[path]) if not _calls(functions[f], "committed_reader")] == []


def test_no_consumer_sets_its_own_isolation_level_or_is_built_by_hand() -> None:
    """Outside walduck/kafka_readers.py nothing passes ``isolation_level=``; in the runtime packages an
    ``AIOKafkaConsumer(...)`` is built only by the consumers listed in OTHER_CONSUMERS."""
    own_level, by_hand = [], []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".", "build/")) or "/." in rel or rel in SELF:
            continue
        tree = ast.parse(path.read_text(), filename=rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and any(k.arg == "isolation_level" for k in node.keywords):
                own_level.append(f"{rel}:{node.lineno}")
        if rel.startswith(RUNTIME) and rel not in OTHER_CONSUMERS and _calls(tree, "AIOKafkaConsumer"):
            by_hand.append(rel)
    assert own_level == [] and by_hand == []
