"""``aihub worker``: core's background jobs in a process that serves no API.

It consumes the job queue (Redis stream; low-balance webhooks and any other queued job) and
ticks core's periodic jobs (hold expiry, Sora generation expiry, ledger reconcile gauges) from
the one list in ``aihub.core.jobs``. Any number of workers may run at once: a queued job goes
to one consumer of the stream's group, and every periodic job is idempotent by construction.

With ``AIHUB_WORKER_PORT`` set it also answers ``/health``, ``/health/ready`` (database, Redis,
and the job loop running; 503 while stopping) and ``/metrics`` for probes and Prometheus.
On SIGTERM it stops taking work, lets running jobs finish (bounded by
``AIHUB_SHUTDOWN_TIMEOUT_SECONDS``) and exits 0.

Without Redis (the embedded default) a queued job always runs in the process that sends it,
so a worker there only ticks the periodic jobs.
"""

from __future__ import annotations

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from aihub.config import Settings
from aihub.kit.errors import error_body
from aihub.kit.jobs import Jobs, jobs_of
from aihub.kit.jsonutil import dumps
from aihub.kit.metrics import client_allowed
from aihub.kit.middleware import pick_request_id
from aihub.kit.runtime import Runtime
from aihub.kit.serve import DRAIN, DrainFlag, Listener, serve_apps

log = structlog.get_logger("aihub.worker")


def health_app(runtime: Runtime, jobs: Jobs) -> web.Application:
    """The worker's small HTTP face: liveness, readiness and metrics, nothing else."""
    app = web.Application()
    drain = DrainFlag()
    app[DRAIN] = drain

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        database = "ok" if await runtime.check_database() else "down"
        if runtime.store.kind == "redis":
            redis = "ok" if await runtime.store.ping() else "down"
        else:
            redis = "memory"
        job_loop = "ok" if jobs.running and not drain.draining else "stopping"
        down = database == "down" or redis == "down" or job_loop != "ok"
        body = {"status": "down" if down else "ok", "checks": {"database": database, "redis": redis, "jobs": job_loop}}
        return web.Response(body=dumps(body), status=503 if down else 200, content_type="application/json")

    async def metrics(request: web.Request) -> web.Response:
        if not client_allowed(request.remote, runtime.settings):
            body = error_body("FORBIDDEN", "Metrics are not available from this address", pick_request_id(None))
            return web.Response(body=body, status=403, content_type="application/json")
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/health", health)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app


async def run_worker(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then finish the running jobs and return."""
    from aihub.core.jobs import periodic

    runtime = Runtime.build(settings)
    try:
        await runtime.prepare()
        schedule = periodic(runtime)  # imports every job module of core, so all are known
        jobs = jobs_of(runtime)
        await jobs.start(schedule)
        listeners = []
        if settings.worker_port:
            listeners.append(Listener("worker", health_app(runtime, jobs), settings.host, settings.worker_port))
        log.info(
            "worker.started",
            queue="redis" if settings.redis_url else "in-process",
            periodic=[item.name for item in schedule],
            port=settings.worker_port or None,
        )
        # Nothing routes requests to a worker, so there is nothing to drain: stop at once.
        await serve_apps(listeners, drain_seconds=0.0, timeout_seconds=settings.shutdown_timeout_seconds)
    finally:
        await runtime.close()  # closes the jobs first: running ones finish, within the timeout
    log.info("worker.stopped")
