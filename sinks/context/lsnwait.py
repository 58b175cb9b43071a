"""LSN waits: a reader blocks until every context shard applied an LSN (read-your-writes, ``min_lsn``).

The writer wakes the waiters right after an apply or build that reaches their LSN, so the read path has no
polling delay; a waiter also re-checks every :data:`LSN_RECHECK_S` in case progress moved some other way.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

# a reader waiting for an LSN re-checks this often even without a wake-up from the writer
LSN_RECHECK_S = 0.05


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class LsnWaits:
    def __init__(self, applied_lsn: Callable[[], int]) -> None:
        self._applied_lsn = applied_lsn
        # readers blocked in wait(): (lsn, their event loop, future the writer resolves)
        self.waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._lock = threading.Lock()

    async def wait(self, lsn: int, timeout_s: float) -> bool:
        """True once every shard applied ``lsn``, False after ``timeout_s``."""
        if self._applied_lsn() >= lsn:
            return True
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            waiter = (lsn, loop, loop.create_future())
            with self._lock:
                self.waiters.append(waiter)
            try:
                if self._applied_lsn() >= lsn:  # applied between the check and the registration
                    return True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter[2], min(remaining, LSN_RECHECK_S))
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            if self._applied_lsn() >= lsn:
                return True

    def wake(self) -> None:
        """Wake the readers waiting for an LSN every shard has now applied (called after applies)."""
        if not self.waiters:
            return
        applied = self._applied_lsn()
        with self._lock:
            ready = [w for w in self.waiters if w[0] <= applied]
            if not ready:
                return
            self.waiters = [w for w in self.waiters if w[0] > applied]
        for _, loop, fut in ready:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, fut)
