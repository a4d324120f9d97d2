"""Database plumbing: one engine per process, one transaction per request or job.

PostgreSQL (asyncpg) in production, SQLite (aiosqlite) embedded. On SQLite the pool holds a
single connection: SQLite allows one writer at a time, and a request that holds the only
connection for its whole transaction can never fail half-way with "database is locked".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, DateTime, Numeric, String, event, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.types import TypeDecorator

from aihub.config import Settings
from aihub.kit.slots import Slots


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """Aware UTC; a timestamp without a zone is read as UTC (as UTCDateTime stores it)."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# JSON columns: JSONB on PostgreSQL (indexable, compact), plain JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in Python on both engines (SQLite stores no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        # A client's timestamp without a zone is read as UTC (RFC 3339 asks for one anyway).
        value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class ExactDecimal(TypeDecorator[Decimal]):
    """NUMERIC on PostgreSQL; on SQLite (no decimal type) values travel as text, read back exactly."""

    impl = Numeric(18, 6)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(18, 6))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


def dialect_of(session: AsyncSession) -> str:
    """``postgresql`` or ``sqlite``: the engine a session's SQL goes to (for the few statements
    the two spell differently)."""
    return session.get_bind().dialect.name


def utc_day(dialect: str, column: Any) -> Any:
    """SQL for a timestamp column's UTC day as 'YYYY-MM-DD', on either engine.

    SQLite stores UTC text ('YYYY-MM-DD HH:MM:SS'); PostgreSQL is told the zone explicitly so
    the server's TimeZone setting cannot shift a day.
    """
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.substr(column, 1, 10)


class Base(DeclarativeBase):
    pass


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module's own transaction handling starts a transaction only at the first
    # write and lets a SAVEPOINT become the outer transaction (its RELEASE then commits). Turn
    # it off and say BEGIN ourselves (see _sqlite_begin), so every unit of work is one real
    # transaction and a savepoint is only ever nested.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # IMMEDIATE takes the write lock up front: another process (the CLI) then waits on
    # busy_timeout instead of failing half-way when a read transaction tries to write.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.database_url,
            poolclass=AsyncAdaptedQueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            hide_parameters=True,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_overflow,
        pool_pre_ping=False,
        pool_recycle=1800,
        # Bound values (argon2 hashes, emails, tokens' hashes) never reach a log line or an
        # exception message: a failed statement is logged by its SQL alone.
        hide_parameters=True,
        connect_args={"server_settings": {"application_name": "aihub"}},
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


AfterCommit = Callable[[], Awaitable[None]]
BeforeCommit = Callable[["Tx"], Awaitable[None]]


class Tx:
    """A unit of work: one session, committed once at the edge.

    Services ``flush()``; only the edge (the request handler wrapper, a job runner, a CLI verb)
    calls :meth:`commit`. Work that must only happen once the data is durable (cache
    invalidation, job enqueueing, webhooks) is registered with :meth:`after_commit` and dropped
    on rollback. Work that must be the last thing inside the transaction (the audit chain,
    which takes a short per-chain lock) is registered with :meth:`before_commit`.
    """

    def __init__(
        self,
        session: AsyncSession | Callable[[], AsyncSession],
        *,
        request_id: str | None = None,
        ip: str | None = None,
    ):
        # A session maker instead of a session: made on first use. Most units of work use
        # theirs, but a deduction by a service token never does (the ledger engine writes),
        # and making one costs a measurable share of such a request.
        if isinstance(session, AsyncSession):
            self._session: AsyncSession | None = session
            self._make: Callable[[], AsyncSession] | None = None
        else:
            self._session, self._make = None, session
        self.request_id = request_id
        self.ip = ip
        self.info = Slots()  # typed side channel: each domain declares its slots
        self._before: list[BeforeCommit] = []
        self._after: list[AfterCommit] = []
        self._done = False

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            assert self._make is not None
            self._session = self._make()
        return self._session

    def before_commit(self, hook: BeforeCommit) -> None:
        if hook not in self._before:
            self._before.append(hook)

    def after_commit(self, hook: AfterCommit) -> None:
        self._after.append(hook)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """Work that can be undone alone: when it raises, its SQL (a SAVEPOINT), the hooks it
        registered and what it queued in ``info`` (audit entries) are dropped, and the rest of
        the unit of work may still commit. An error with ``keep_changes`` keeps its work."""
        nested = await self.session.begin_nested()
        before, after = list(self._before), list(self._after)
        info = self.info.snapshot()
        try:
            yield
        except BaseException as exc:
            if getattr(exc, "keep_changes", False):
                await nested.commit()
                raise
            await nested.rollback()
            self._before, self._after = before, after
            self.info.restore(info)
            raise
        await nested.commit()

    def take_hooks(self) -> tuple[list[BeforeCommit], list[AfterCommit]]:
        """Hand over the registered hooks, for a unit of work whose SQL another transaction
        commits (the ledger engine's batch): it runs them around its own commit."""
        hooks = (self._before, self._after)
        self._before, self._after = [], []
        return hooks

    async def commit(self) -> None:
        if self._done:
            return
        for hook in self._before:
            await hook(self)
        if self._session is not None:  # never made: nothing to commit
            await self._session.commit()
        self._done = True
        hooks, self._after = self._after, []
        for after in hooks:
            await after()

    async def release(self) -> None:
        """Give the connection back, if one was taken, before a long wait (its reads are done):
        the unit of work goes on, and a session made later takes a connection again."""
        if self._session is not None:
            await self._session.close()

    async def close(self) -> None:
        """Roll back whatever was not committed (session.close does) and drop pending hooks.

        Loaded objects stay readable (detached, not expired), which read-only callers rely on.
        """
        self._done = True
        self._after.clear()
        if self._session is not None:
            await self._session.close()
