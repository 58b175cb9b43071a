"""``/admin/*`` routes: runtime-cache snapshot/invalidate (Timestore's admin snapshot endpoint) and the manifest endpoint (§3)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from sinks.service.admin_snapshot import admin_snapshot
from sinks.service.audit import ACTION_RUNTIME_INVALIDATE, record_action
from sinks.service.body_limit import OffLoopJsonRoute
from sinks.service.errors import ApiError, error_json, not_readable
from sinks.service.iam import Principal, principal_from_headers
from sinks.service.state import ServiceState

log = logging.getLogger(__name__)
router = APIRouter(tags=["Admin"], route_class=OffLoopJsonRoute)


class InvalidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    datasetId: str | None = None
    datasetSlug: str | None = None
    scope: Literal["all", "dataset"] | None = None
    reason: str | None = None


def svc(request: Request) -> ServiceState:
    return request.app.state.svc  # type: ignore[no-any-return]


def authorize_admin(request: Request) -> Principal:
    p = principal_from_headers(request.headers)
    svc(request).iam.require_admin(p)
    return p


@router.get("/admin/sql/runtime-cache", summary="Snapshot of the DuckDB context (admin)")
async def runtime_cache(request: Request, detail: str | None = None) -> dict[str, Any]:
    """``?detail=partitions`` adds every dataset's visible partitions (what ``walduck verify`` compares)."""
    authorize_admin(request)
    store = svc(request).store
    return {"snapshot": await asyncio.to_thread(admin_snapshot, store, detail == "partitions")}


def _rebuild_in_background(s: ServiceState, dataset_id: str | None, reason: str) -> None:
    """Queue the rebuild on the store's scheduler (one per scope, merged while one runs; its result and error
    are kept in the admin snapshot). Returns at once: no request or executor thread waits for it."""
    s.store.request_rebuild(dataset_id, reason)


@router.post(
    "/admin/sql/runtime-cache/invalidate",
    status_code=202,
    summary="Rebuild one dataset or all from PostgreSQL",
)
async def runtime_cache_invalidate(request: Request, body: InvalidateRequest | None = None) -> JSONResponse:
    p = authorize_admin(request)
    s = svc(request)
    body = body or InvalidateRequest()
    has_target = bool(body.datasetId or body.datasetSlug)
    scope = body.scope or ("dataset" if has_target else "all")
    if scope == "dataset" and not has_target:
        return error_json(400, "datasetId or datasetSlug is required when scope is dataset")
    dataset_id: str | None = None
    audit_slug: str | None = None
    if scope == "dataset":
        dataset_id = body.datasetId
        known = await asyncio.to_thread(s.store.datasets)
        if dataset_id is None and body.datasetSlug:
            match = [d for d in known if d.slug == body.datasetSlug]
            dataset_id = match[0].id if match else None  # unknown slug: full rebuild (as Timestore)
        by_id = [d for d in known if d.id == dataset_id]
        audit_slug = by_id[0].slug if by_id else (body.datasetSlug or dataset_id)
    reason = body.reason or "admin-invalidate"
    record_action(
        s.audit,
        p,
        ACTION_RUNTIME_INVALIDATE,
        True,
        {"scope": scope, "reason": reason, "rebuild": "dataset" if dataset_id else "all"},
        dataset_id=dataset_id,
        dataset_slug=audit_slug,
    )
    _rebuild_in_background(s, dataset_id, reason)
    return JSONResponse(
        {
            "status": "invalidated",
            "scope": scope,
            "datasetId": body.datasetId,
            "datasetSlug": body.datasetSlug,
        },
        status_code=202,
    )


@router.get(
    "/admin/datasets/{dataset_ref}/manifest", summary="Published manifests of a dataset (dataset read)"
)
async def dataset_manifest(
    request: Request, dataset_ref: str, shard: str | None = Query(None, description="UTC day YYYY-MM-DD")
) -> Any:
    s = svc(request)
    if s.catalog is None:
        raise ApiError(503, "No PostgreSQL catalog configured (WALDUCK_PG_DSN)")
    dataset = await s.catalog.find_dataset(dataset_ref)
    p = principal_from_headers(request.headers)
    if dataset is None and s.iam.is_admin(p):
        raise ApiError(404, f"Dataset {dataset_ref} not found")
    if dataset is None or not s.iam.can_read(p, dataset.get("metadata") or {}):
        # unknown and forbidden answer alike, naming the reference as given (no existence oracle)
        raise not_readable(dataset_ref)
    manifests = await s.catalog.published_manifests(dataset["id"], shard)
    staging = {"totalRows": 0, "batches": []}
    if shard:
        if not manifests:
            return error_json(404, f"no published manifest for shard {shard}")
        return {"datasetId": dataset["id"], "manifest": manifests[0], "staging": staging}
    if not manifests:
        return error_json(404, "no published manifests")
    return {"datasetId": dataset["id"], "manifests": manifests, "staging": staging}
