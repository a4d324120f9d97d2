"""The stop sequence's timing rules: SIGTERM drains first, SIGINT and a second signal do not wait.

(The whole sequence on real processes is in tests/ops/test_shutdown.py.)"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from aihub.kit.serve import DRAIN, DrainFlag, Listener, Shutdown


def _listener() -> tuple[Listener, DrainFlag]:
    app = web.Application()
    flag = DrainFlag()
    app[DRAIN] = flag
    return Listener("x", app, "127.0.0.1", 0), flag


async def test_sigterm_drains_and_a_second_signal_ends_the_delay() -> None:
    listener, flag = _listener()
    shutdown = Shutdown([listener], drain_seconds=3600)
    shutdown.signal(signal.SIGTERM)
    assert flag.draining
    await asyncio.sleep(0.05)
    assert not shutdown.stopping.is_set()  # still serving during the drain delay
    shutdown.signal(signal.SIGTERM)
    await asyncio.wait_for(shutdown.stopping.wait(), timeout=10)


async def test_sigint_skips_the_drain_delay() -> None:
    listener, flag = _listener()
    shutdown = Shutdown([listener], drain_seconds=3600)
    shutdown.signal(signal.SIGINT)
    assert flag.draining
    await asyncio.wait_for(shutdown.stopping.wait(), timeout=10)
