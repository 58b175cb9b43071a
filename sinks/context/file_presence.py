"""Which local partition files exist, and lie inside the storage root, without one ``stat`` per file per query.

A directory's listing is cached with the directory's mtime; a file created, deleted or renamed in it
changes that mtime, so one ``stat`` of the directory per query says whether the cached listing still
holds. Listings taken while the directory's mtime is younger than ``racy_s`` are not cached: a change
within the same timestamp tick could otherwise leave the mtime unchanged (git's "racy" entries).
Remote locations (``s3://`` …) are assumed present, as before.

With ``roots`` (the storage root and the other allowed directories), a location is **outside** when its
normalised path is not under a root, when its directory resolves (symlinks followed) outside every root,
or when the file is a symlink whose target does. The directory's resolved path is cached with its listing
(keyed on the resolved directory's inode: re-pointing a symlinked parent changes it); only files the
listing shows as symlinks are resolved one by one. DuckDB refuses such files anyway (Permission Error for
the whole query); the store skips them with a warning instead.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Sequence
from enum import Enum


class FileState(Enum):
    PRESENT = "present"
    MISSING = "missing"
    OUTSIDE = "outside"


_UNSET = object()
_Listing = tuple[frozenset[str], frozenset[str], str]  # names, names that are symlinks, resolved directory


class FilePresence:
    def __init__(self, racy_s: float = 0.1, max_dirs: int = 100_000, roots: Sequence[str] = ()) -> None:
        self.racy_ns = int(racy_s * 1e9)
        self.max_dirs = max_dirs
        prefixes: list[str] = []
        for root in roots:
            for form in (os.path.normpath(root), os.path.realpath(root)):
                prefix = form.rstrip("/") + "/"
                if prefix not in prefixes:
                    prefixes.append(prefix)
        self.roots = tuple(prefixes)
        self._listings: dict[str, tuple[int, int, _Listing]] = {}
        self._lock = threading.Lock()

    def probe(self) -> PresenceProbe:
        """A per-query view: each directory is checked at most once through it."""
        return PresenceProbe(self)

    def inside(self, path: str) -> bool:
        return not self.roots or (path.rstrip("/") + "/").startswith(self.roots)

    def listing(self, directory: str) -> frozenset[str] | None:
        """Names in ``directory`` (empty if it does not exist); None = cannot tell, stat the file instead."""
        entry = self.entry(directory)
        return None if entry is None else entry[0]

    def entry(self, directory: str) -> _Listing | None:
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            return frozenset(), frozenset(), directory
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return frozenset(), frozenset(), directory
        cached = self._listings.get(directory)
        if cached is not None and cached[0] == st.st_mtime_ns and cached[1] == st.st_ino:
            return cached[2]
        try:
            names: set[str] = set()
            links: set[str] = set()
            with os.scandir(directory) as entries:
                for e in entries:
                    names.add(e.name)
                    if e.is_symlink():
                        links.add(e.name)
            entry = (frozenset(names), frozenset(links), os.path.realpath(directory))
        except OSError:
            return None
        with self._lock:
            if time.time_ns() - st.st_mtime_ns > self.racy_ns:
                if len(self._listings) >= self.max_dirs:
                    self._listings.clear()
                self._listings[directory] = (st.st_mtime_ns, st.st_ino, entry)
            else:
                self._listings.pop(directory, None)
        return entry

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
        # directory -> (names, symlink names, directory resolves inside the roots); None = cannot list
        self._dirs: dict[str, tuple[frozenset[str], frozenset[str], bool] | None] = {}

    def missing(self, location: str) -> bool:
        return self.state(location) is FileState.MISSING

    def state(self, location: str) -> FileState:
        if "://" in location:
            return (
                FileState.PRESENT
            )  # only local files can be probed cheaply; remote objects are assumed present
        directory, name = os.path.split(location)
        cached = self._dirs.get(directory, _UNSET)
        if cached is _UNSET:
            cached = self._dirs[directory] = self._directory(directory)
        if cached is None:  # cannot list: stat the file itself
            if not os.path.exists(location):
                return FileState.MISSING
            return FileState.PRESENT if self._owner.inside(os.path.realpath(location)) else FileState.OUTSIDE
        names, links, dir_inside = cached  # type: ignore[misc]
        if not dir_inside:
            return FileState.OUTSIDE
        if name not in names:
            return FileState.MISSING
        if links and name in links:
            real = os.path.realpath(location)
            if not self._owner.inside(real):
                return FileState.OUTSIDE
            if not os.path.exists(real):
                return FileState.MISSING
        return FileState.PRESENT

    def _directory(self, directory: str) -> tuple[frozenset[str], frozenset[str], bool] | None:
        """Listing of ``directory`` and whether it lies inside the roots, as written (``..``, absolute
        paths) and resolved (symlinked components): checked once per directory, not per file."""
        owner = self._owner
        entry = owner.entry(directory or ".")
        if entry is None:
            return None
        inside = owner.inside(os.path.normpath(directory or ".")) and owner.inside(entry[2])
        return entry[0], entry[1], inside
