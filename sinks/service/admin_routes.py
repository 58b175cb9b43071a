"""``/admin/*`` routes: runtime-cache snapshot/invalidate (reference §2.6) and the manifest endpoint (§3)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from sinks.service.errors import ApiError, error_json
from sinks.service.iam import can_read_dataset, principal_from_headers, require
from sinks.service.state import ServiceState

log = logging.getLogger(__name__)
router = APIRouter(tags=["Admin"])


class InvalidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    datasetId: str | None = None
    datasetSlug: str | None = None
    scope: Literal["all", "dataset"] | None = None
    reason: str | None = None


def svc(request: Request) -> ServiceState:
    return request.app.state.svc  # type: ignore[no-any-return]


def authorize_admin(request: Request) -> None:
    scopes = svc(request).settings.admin_scopes()
    require(
        principal_from_headers(request.headers),
        scopes,
        f"Missing required admin scope {scopes[0] if scopes else ''}".strip(),
    )


@router.get("/admin/sql/runtime-cache", summary="Snapshot of the DuckDB context (admin)")
async def runtime_cache(request: Request, detail: str | None = None) -> dict[str, Any]:
    """``?detail=partitions`` adds every dataset's visible partitions (what ``walduck verify`` compares)."""
    authorize_admin(request)
    store = svc(request).store
    return {"snapshot": await asyncio.to_thread(store.snapshot, detail == "partitions")}


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
    authorize_admin(request)
    s = svc(request)
    body = body or InvalidateRequest()
    has_target = bool(body.datasetId or body.datasetSlug)
    scope = body.scope or ("dataset" if has_target else "all")
    if scope == "dataset" and not has_target:
        return error_json(400, "datasetId or datasetSlug is required when scope is dataset")
    dataset_id: str | None = None
    if scope == "dataset":
        dataset_id = body.datasetId
        if dataset_id is None and body.datasetSlug:
            match = [d for d in await asyncio.to_thread(s.store.datasets) if d.slug == body.datasetSlug]
            dataset_id = match[0].id if match else None  # unknown slug: full rebuild (as Timestore)
    _rebuild_in_background(s, dataset_id, body.reason or "admin-invalidate")
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
    if dataset is None:
        raise ApiError(404, f"Dataset {dataset_ref} not found")
    p = principal_from_headers(request.headers)
    if not can_read_dataset(
        p,
        dataset.get("metadata") or {},
        admin_scopes=s.settings.admin_scopes(),
        fallback=s.settings.dataset_read_fallback(),
    ):
        raise ApiError(403, f"Missing required scope for dataset {dataset['slug']}")
    manifests = await s.catalog.published_manifests(dataset["id"], shard)
    staging = {"totalRows": 0, "batches": []}
    if shard:
        if not manifests:
            return error_json(404, f"no published manifest for shard {shard}")
        return {"datasetId": dataset["id"], "manifest": manifests[0], "staging": staging}
    if not manifests:
        return error_json(404, "no published manifests")
    return {"datasetId": dataset["id"], "manifests": manifests, "staging": staging}
