from __future__ import annotations

from sinks.service.iam import Principal, can_read_dataset, dataset_read_scopes, principal_from_headers


def test_scopes_and_actor_from_headers() -> None:
    p = principal_from_headers({"x-iam-scopes": " sql:read, ,admin ", "x-user-id": "u2", "x-actor-id": "a3"})
    assert p.scopes == ("sql:read", "admin")
    assert p.actor_id == "u2"
    assert principal_from_headers({"x-iam-user": " u1 ", "x-user-id": "u2"}).actor_id == "u1"
    assert principal_from_headers({"x-iam-user": "  ", "x-actor-id": "a3"}).actor_id == "a3"
    assert principal_from_headers({}) == Principal(None, ())


def test_any_scope_matches_and_unset_is_open() -> None:
    p = Principal("u", ("a", "b"))
    assert p.has_any(["x", "b"])
    assert not p.has_any(["x"])
    assert p.has_any([])


def test_dataset_read_rules() -> None:
    guarded = {"iam": {"readScopes": ["secret:read"]}}
    reader = Principal("u", ("secret:read",))
    nobody = Principal("u", ("sql:read",))
    admin = Principal("u", ("admin",))
    kw = {"admin_scopes": ["admin"], "fallback": []}
    assert can_read_dataset(reader, guarded, **kw)
    assert not can_read_dataset(nobody, guarded, **kw)
    assert can_read_dataset(admin, guarded, **kw)  # admin bypass
    assert can_read_dataset(nobody, {}, **kw)  # no policy, no global requirement: open
    # the dataset policy replaces the global fallback
    assert not can_read_dataset(nobody, {}, admin_scopes=["admin"], fallback=["timestore:read"])
    assert can_read_dataset(reader, guarded, admin_scopes=["admin"], fallback=["timestore:read"])
    # no admin scope configured: nothing bypasses
    assert not can_read_dataset(admin, guarded, admin_scopes=[], fallback=[])


def test_read_scopes_parsing() -> None:
    assert dataset_read_scopes(None) is None
    assert dataset_read_scopes({"iam": {"readScopes": "x"}}) is None
    assert dataset_read_scopes({"iam": {"readScopes": [" a ", 3, ""]}}) == ["a"]
