"""Compactor membership settings: static members get the longer session timeout unless one is set."""

from __future__ import annotations

import pytest

from pipeline.settings import DYNAMIC_SESSION_TIMEOUT_MS, STATIC_SESSION_TIMEOUT_MS, CompactorSettings


def test_dynamic_member_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WALDUCK_COMPACTOR_GROUP_INSTANCE_ID", raising=False)
    monkeypatch.delenv("WALDUCK_COMPACTOR_SESSION_TIMEOUT_MS", raising=False)
    knobs = CompactorSettings()
    assert not knobs.static_member
    assert knobs.resolved_session_timeout_ms() == DYNAMIC_SESSION_TIMEOUT_MS == 10_000


def test_instance_id_from_the_environment_makes_a_static_member(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALDUCK_COMPACTOR_GROUP_INSTANCE_ID", "walduck-compactor-1")
    monkeypatch.delenv("WALDUCK_COMPACTOR_SESSION_TIMEOUT_MS", raising=False)
    knobs = CompactorSettings()
    assert knobs.static_member and knobs.group_instance_id == "walduck-compactor-1"
    assert knobs.resolved_session_timeout_ms() == STATIC_SESSION_TIMEOUT_MS == 30_000


def test_an_explicit_session_timeout_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALDUCK_COMPACTOR_GROUP_INSTANCE_ID", "c-0")
    monkeypatch.setenv("WALDUCK_COMPACTOR_SESSION_TIMEOUT_MS", "6000")
    assert CompactorSettings().resolved_session_timeout_ms() == 6000
