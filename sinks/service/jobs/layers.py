"""Tail layers: a chain prefix's objects persisted in a content-addressed DuckDB file, bounded LRU cache.

A layer is ``<dir>/<prefix hash>.duckdb``, written once by the tail replay (``<hash>.<nonce>.tmp`` renamed
into place) and afterwards only attached ``READ_ONLY``. Entries in use (``refs`` > 0) are never removed.
Bounds: ``max_bytes``, ``max_count`` (LRU eviction when a layer is published) and ``ttl_s`` since last use
(the GC removes such a layer once no live job names it). Layers do not survive a restart: the directory's
files are removed at start.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from walduck import metrics


@dataclass(slots=True)
class Layer:
    hash: str
    path: Path
    nbytes: int
    objects: set[str] = field(default_factory=set)
    last_used: float = 0.0
    refs: int = 0
    hits: int = 0


class LayerCache:
    def __init__(
        self,
        directory: str,
        *,
        max_bytes: int,
        max_count: int,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dir = Path(directory or tempfile.mkdtemp(prefix="walduck-job-layers-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.iterdir():
            if stale.is_file() and (
                stale.suffix in (".duckdb", ".tmp", ".wal") or stale.name.endswith(".tmp.wal")
            ):
                with contextlib.suppress(OSError):
                    stale.unlink()
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._layers: OrderedDict[str, Layer] = OrderedDict()

    # --------------------------------------------------------------- lookup
    def acquire_longest(self, hashes: list[str]) -> tuple[int, Layer | None]:
        """The longest cached prefix: (number of scripts it covers, the layer, acquired) or (0, None)."""
        with self._lock:
            for i in range(len(hashes), 0, -1):
                layer = self._layers.get(hashes[i - 1])
                if layer is not None and layer.path.exists():
                    layer.refs += 1
                    layer.hits += 1
                    layer.last_used = self.clock()
                    self._layers.move_to_end(layer.hash)
                    return i, layer
        return 0, None

    def release(self, layer: Layer | None) -> None:
        if layer is None:
            return
        with self._lock:
            layer.refs = max(0, layer.refs - 1)
            layer.last_used = self.clock()

    def get(self, layer_hash: str) -> Layer | None:
        with self._lock:
            return self._layers.get(layer_hash)

    def __len__(self) -> int:
        with self._lock:
            return len(self._layers)

    # --------------------------------------------------------------- writing
    def new_tmp(self, layer_hash: str, base: Layer | None = None) -> Path:
        """A fresh temporary file for ``layer_hash``, a copy of ``base`` when given."""
        tmp = self.dir / f"{layer_hash}.{secrets.token_hex(4)}.tmp"
        if base is not None:
            shutil.copyfile(base.path, tmp)
        return tmp

    def discard_tmp(self, tmp: Path) -> None:
        for path in (tmp, Path(f"{tmp}.wal")):
            with contextlib.suppress(OSError):
                path.unlink()

    def publish(self, layer_hash: str, tmp: Path, objects: Iterable[str]) -> Layer:
        """Move ``tmp`` into place as layer ``layer_hash`` and return it acquired; evicts over the bounds."""
        final = self.dir / f"{layer_hash}.duckdb"
        with self._lock:
            existing = self._layers.get(layer_hash)
            if existing is not None and existing.path.exists():
                self.discard_tmp(tmp)  # another job wrote the same content meanwhile
                existing.refs += 1
                existing.last_used = self.clock()
                self._layers.move_to_end(layer_hash)
                return existing
            os.replace(tmp, final)
            layer = Layer(layer_hash, final, final.stat().st_size, set(objects), self.clock(), refs=1)
            self._layers[layer_hash] = layer
        self.evict()
        return layer

    # --------------------------------------------------------------- removal
    def _remove(self, layer: Layer) -> int:
        self._layers.pop(layer.hash, None)
        with contextlib.suppress(OSError):
            layer.path.unlink()
        metrics.JOB_GC_REMOVED.labels(kind="layer").inc()
        metrics.JOB_GC_BYTES_FREED.inc(layer.nbytes)
        return layer.nbytes

    def evict(self) -> int:
        """LRU eviction over ``max_count`` / ``max_bytes`` (layers in use stay); returns bytes freed."""
        freed = 0
        with self._lock:
            for layer in list(self._layers.values()):  # oldest use first
                count = len(self._layers)
                size = sum(x.nbytes for x in self._layers.values())
                if count <= self.max_count and size <= self.max_bytes:
                    break
                if layer.refs == 0:
                    freed += self._remove(layer)
            self._gauge()
        return freed

    def expire(self, referenced: set[str]) -> int:
        """Remove layers unused for ``ttl_s`` that no live job names and none holds; returns bytes freed."""
        now = self.clock()
        freed = 0
        with self._lock:
            for layer in list(self._layers.values()):
                if layer.refs == 0 and layer.hash not in referenced and now - layer.last_used >= self.ttl_s:
                    freed += self._remove(layer)
            self._gauge()
        return freed

    def _gauge(self) -> None:
        metrics.JOB_LAYERS.set(len(self._layers))
        metrics.JOB_LAYER_BYTES.set(sum(x.nbytes for x in self._layers.values()))

    def snapshot(self) -> list[dict[str, object]]:
        with self._lock:
            return [
                {
                    "hash": x.hash,
                    "bytes": x.nbytes,
                    "objects": sorted(x.objects),
                    "refs": x.refs,
                    "hits": x.hits,
                }
                for x in self._layers.values()
            ]
