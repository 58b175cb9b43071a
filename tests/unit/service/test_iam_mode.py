"""Issue 13 finding 3: the query service refuses to start with routes open to any caller, unless asked to."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sinks.service.settings import IamNotConfigured, QuerySettings, require_iam_mode
from stack.up import TIMESTORE_SCOPES_ENV


def scoped(**extra: object) -> QuerySettings:
    names = {k.removeprefix("WALDUCK_QUERY_").lower(): v for k, v in TIMESTORE_SCOPES_ENV.items()}
    return QuerySettings(**{**names, **extra})


def test_unset_scopes_refuse_to_start() -> None:
    with pytest.raises(IamNotConfigured) as err:
        require_iam_mode(QuerySettings())
    message = str(err.value)
    for group in ("/sql/read", "/sql/exec", "/admin/*", "/metrics", "WALDUCK_QUERY_IAM_OPEN=true"):
        assert group in message


def test_a_partly_configured_service_is_still_open() -> None:
    # only the admin scope (what the test stacks used to set): /sql/read stays open to anyone
    with pytest.raises(IamNotConfigured) as err:
        require_iam_mode(QuerySettings(admin_scope="timestore:admin"))
    assert "/sql/read" in str(err.value) and "/admin/*" not in str(err.value)


def test_explicit_open_mode_starts_and_names_what_is_open() -> None:
    groups = require_iam_mode(QuerySettings(iam_open=True))
    assert len(groups) == 4


def test_timestore_scope_names_close_every_route() -> None:
    settings = scoped()
    assert require_iam_mode(settings) == []
    iam = settings.iam_policy()
    assert iam.sql_read == ("timestore:sql:read",)
    assert iam.sql_exec == ("timestore:sql:exec",)
    assert iam.admin == ("timestore:admin",)
    assert iam.metrics == ("timestore:metrics",)
    # require_scope alone closes everything through Timestore's fallbacks
    assert require_iam_mode(QuerySettings(require_scope="timestore:read")) == []


def test_iam_open_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALDUCK_IAM_OPEN", "true")
    assert QuerySettings().iam_open is True


def test_walduck_query_serve_exits_with_the_reason() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WALDUCK_", "TIMESTORE_"))}
    done = subprocess.run(
        [sys.executable, "-m", "stack.cli", "query", "serve", "--no-consume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing to start" in done.stderr and "WALDUCK_QUERY_IAM_OPEN=true" in done.stderr
