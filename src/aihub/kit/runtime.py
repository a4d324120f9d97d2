"""What a service process holds for its lifetime: settings, the engine, the store, the codec.

Built once at start (or by a test with its own database), closed once at shutdown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from aihub.config import Settings
from aihub.kit import migrate
from aihub.kit.db import Tx, create_engine, create_sessionmaker
from aihub.kit.jwt import TokenCodec
from aihub.kit.slots import Slots
from aihub.kit.store import Store, create_store


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    store: Store
    codec: TokenCodec
    extras: Slots = field(default_factory=Slots)  # what the process creates once, by typed slot
    # Closed before the store and the engine, newest first (job queues, HTTP clients, …).
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        engine = create_engine(settings)
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            store=create_store(settings.redis_url),
            codec=TokenCodec.from_settings(settings),
        )

    def tx(self, *, request_id: str | None = None, ip: str | None = None) -> Tx:
        return Tx(self.sessionmaker, request_id=request_id, ip=ip)  # its session made on first use

    async def prepare(self) -> None:
        """Migrations are applied at start on the embedded default (and when asked to)."""
        if self.settings.auto_migrate:
            await migrate.upgrade(self.engine)

    async def check_database(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:  # any driver error means "not ready"; readiness reports it
            return False
        return True

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        self.closers.append(closer)

    async def close(self) -> None:
        while self.closers:
            await self.closers.pop()()
        if self.codec.jwks is not None:
            await self.codec.jwks.close()
        await self.store.close()
        await self.engine.dispose()
