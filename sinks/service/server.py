"""One process, one event loop: uvicorn serving the API and the DeltaConsumer applying deltas.

The process is the DuckDB context's single writer (the consumer) and its readers (the API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from sinks.context.consumer import DeltaConsumer
from sinks.context.store import ContextStore
from sinks.service.app import create_app
from sinks.service.settings import QuerySettings, require_iam_mode
from sinks.settings import SinkSettings
from walduck.config import WalduckSettings
from walduck.gctuning import tune_for_streaming
from walduck.health import kafka_connected

log = logging.getLogger(__name__)


async def serve_async(
    query: QuerySettings, sink: SinkSettings, walduck: WalduckSettings, *, consume: bool = True
) -> None:
    # catalog reads (context rebuilds, manifests, saved queries, audit) run as the read role, /sql/exec as the exec
    # role (docs/security.md "Roles"); both fall back to WALDUCK_PG_DSN
    reads = walduck.model_copy(update={"pg_dsn": walduck.read_dsn()})
    open_groups = require_iam_mode(query)  # raises IamNotConfigured before anything is opened
    if open_groups:
        log.warning("IAM OPEN (WALDUCK_QUERY_IAM_OPEN=true): any caller reaches %s", "; ".join(open_groups))
    store = ContextStore(sink, reads)
    store.open()
    tune_for_streaming()  # the open context's caches stay out of every collection (apply outliers)
    consumer = DeltaConsumer(store) if consume else None
    server: uvicorn.Server | None = None
    checks = {}
    if consumer is not None:
        # the consumer's client between a successful start and its close (None while it backs off after an error)
        checks["deltasConsumer"] = lambda: kafka_connected(getattr(consumer._consumer, "_client", None))
    app = create_app(
        store,
        query,
        pg_dsn=reads.pg_dsn or None,
        exec_dsn=walduck.exec_dsn() or None,
        catalog_schema=walduck.catalog_schema,
        checks=checks,
        stopping=lambda: server is not None and bool(server.should_exit),
    )
    # log_config=None: uvicorn's loggers write through the process's one handler (walduck/logs.py)
    server = uvicorn.Server(
        uvicorn.Config(app, host=query.host, port=query.port, log_config=None, lifespan="on")
    )
    consumer_task = asyncio.create_task(consumer.run(), name="delta-consumer") if consumer else None
    # publishes the context for new replicas (WALDUCK_CONTEXT_SNAPSHOT_DIR; sinks/context/context_snapshot.py)
    publisher = store.snapshot_publisher() if consumer else None
    if publisher is not None:
        publisher.start()
    if consumer_task is not None:
        # a consumer that cannot log in (KafkaSecurityError) would leave the contexts stale for good: stop
        consumer_task.add_done_callback(lambda _task: setattr(server, "should_exit", True))
    try:
        await server.serve()
        if consumer_task is not None and consumer_task.done() and not consumer_task.cancelled():
            failure = consumer_task.exception()
            if failure is not None:
                raise failure
    finally:
        if publisher is not None:
            publisher.stop()
        if consumer is not None and consumer_task is not None:
            await consumer.stop()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(consumer_task, timeout=10)
        store.close()


def serve(
    query: QuerySettings | None = None,
    sink: SinkSettings | None = None,
    walduck: WalduckSettings | None = None,
    *,
    consume: bool = True,
) -> None:
    asyncio.run(
        serve_async(
            query or QuerySettings(), sink or SinkSettings(), walduck or WalduckSettings(), consume=consume
        )
    )
