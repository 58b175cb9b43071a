"""Which local partition files exist, without one ``stat`` per file per query.

A directory's listing is cached with the directory's mtime; a file created, deleted or renamed in it
changes that mtime, so one ``stat`` of the directory per query says whether the cached listing still
holds. Listings taken while the directory's mtime is younger than ``racy_s`` are not cached: a change
within the same timestamp tick could otherwise leave the mtime unchanged (git's "racy" entries).
Remote locations (``s3://`` …) are assumed present, as before.
"""

from __future__ import annotations

import os
import stat
import threading
import time

_UNSET = object()


class FilePresence:
    def __init__(self, racy_s: float = 0.1, max_dirs: int = 100_000) -> None:
        self.racy_ns = int(racy_s * 1e9)
        self.max_dirs = max_dirs
        self._listings: dict[str, tuple[int, int, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def probe(self) -> PresenceProbe:
        """A per-query view: each directory is checked at most once through it."""
        return PresenceProbe(self)

    def listing(self, directory: str) -> frozenset[str] | None:
        """Names in ``directory`` (empty if it does not exist); None = cannot tell, stat the file instead."""
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            return frozenset()
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return frozenset()
        cached = self._listings.get(directory)
        if cached is not None and cached[0] == st.st_mtime_ns and cached[1] == st.st_ino:
            return cached[2]
        try:
            names = frozenset(os.listdir(directory))
        except OSError:
            return None
        with self._lock:
            if time.time_ns() - st.st_mtime_ns > self.racy_ns:
                if len(self._listings) >= self.max_dirs:
                    self._listings.clear()
                self._listings[directory] = (st.st_mtime_ns, st.st_ino, names)
            else:
                self._listings.pop(directory, None)
        return names

    def forget(self, path: str) -> None:
        """Drop the cached listing of the directory holding ``path`` (DuckDB could not open it)."""
        with self._lock:
            self._listings.pop(os.path.dirname(path), None)

    def forget_all(self) -> None:
        with self._lock:
            self._listings.clear()


class PresenceProbe:
    def __init__(self, owner: FilePresence) -> None:
        self._owner = owner
        self._dirs: dict[str, frozenset[str] | None] = {}

    def missing(self, location: str) -> bool:
        if "://" in location:
            return False  # only local files can be probed cheaply; remote objects are assumed present
        directory, name = os.path.split(location)
        names = self._dirs.get(directory, _UNSET)
        if names is _UNSET:
            names = self._dirs[directory] = self._owner.listing(directory or ".")
        if names is None:
            return not os.path.exists(location)
        return name not in names  # type: ignore[operator]
