"""``aihub backup`` and ``aihub restore``: a dump plus a manifest that proves what it holds.

Backup (PostgreSQL): one REPEATABLE READ transaction exports its snapshot, counts every
table's rows and the ledger's totals inside it, and ``pg_dump --format=custom --snapshot``
dumps that same snapshot while writes go on, so the manifest describes exactly the dump. The
manifest (JSON, next to the dump) also holds the aihub version, the Alembic revision, the
time, the database name and the dump's SHA-256.

Backup (SQLite, the embedded default): SQLite's online backup API copies the file
consistently while the service runs; the manifest is computed from the copy.

Restore: the dump's checksum must match the manifest; the target must be empty (``--force``
replaces its ``public`` schema, or the SQLite file); ``pg_restore`` loads it in one
transaction (or ``--jobs N`` in parallel, not atomic); then the target's row counts, revision
and ledger totals must equal the manifest's and the ledger must reconcile.

The database password never appears in output: the tools get it through ``PGPASSWORD`` in
their environment, and URLs are shown with it masked. Dumps hold password hashes and tokens'
hashes, so files are created readable by their owner only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aihub import __version__
from aihub.config import Settings
from aihub.kit.db import Tx, create_engine, create_sessionmaker
from aihub.ops.facts import Facts, collect, differences, table_names

MANIFEST_FORMAT = 1
MANIFEST_SUFFIX = ".manifest.json"
_DUMP_SUFFIX = {"postgresql": ".dump", "sqlite": ".sqlite3"}
_CHUNK = 1 << 20


class BackupError(Exception):
    """The command could not run (arguments, tools, files, a non-empty target): exit 2."""

    exit_code = 2


class VerificationFailed(BackupError):
    """A checksum, a count, a total or the reconcile disagrees: exit 1."""

    exit_code = 1


@dataclass
class BackupResult:
    dump: Path
    manifest: Path
    data: dict[str, Any]
    seconds: float


@dataclass
class RestoreResult:
    manifest: Path
    data: dict[str, Any]
    target: str  # shown with the password masked
    problems: list[tuple[str, str, str]] = field(default_factory=list)
    reconciled_accounts: int = 0
    reconcile_mismatches: int = 0
    restore_seconds: float = 0.0
    verify_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.reconcile_mismatches == 0


# ------------------------------------------------------------------------------ helpers


def masked(url: str | URL) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _kind(url: URL) -> str:
    if url.drivername == "postgresql+asyncpg":
        return "postgresql"
    if url.drivername == "sqlite+aiosqlite":
        return "sqlite"
    raise BackupError(f"unsupported database URL {masked(url)}: use postgresql+asyncpg:// or sqlite+aiosqlite://")


def _engine(settings: Settings, url: URL) -> AsyncEngine:
    return create_engine(
        settings.model_copy(
            update={"database_url": url.render_as_string(hide_password=False), "db_pool_size": 2, "db_pool_overflow": 0}
        )
    )


def _pg_env(url: URL) -> dict[str, str]:
    """libpq's variables for pg_dump/pg_restore: the password never goes on a command line."""
    env = dict(os.environ)
    for name, value in (
        ("PGHOST", url.host),
        ("PGPORT", url.port),
        ("PGUSER", url.username),
        ("PGPASSWORD", url.password),
        ("PGDATABASE", url.database),
    ):
        if value is not None:
            env[name] = str(value)
    ssl = url.query.get("sslmode") or url.query.get("ssl")
    if ssl:
        mode = ssl if isinstance(ssl, str) else ssl[0]
        env["PGSSLMODE"] = {"true": "require", "false": "disable"}.get(mode.lower(), mode)
    return env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} is not installed (Debian/Ubuntu: apt-get install postgresql-client)")
    return path


async def _run(args: list[str], env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        detail = stderr.decode(errors="replace").strip()[-2000:]
        raise BackupError(f"{Path(args[0]).name} failed (exit {proc.returncode}): {detail}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _private(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.chmod(0o600)


# ------------------------------------------------------------------------------ backup


async def backup(settings: Settings, output: Path) -> BackupResult:
    """Dump the configured database into ``output`` and write its manifest next to it."""
    started = time.perf_counter()
    url = make_url(settings.database_url)
    kind = _kind(url)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    dump, manifest = _new_files(output, url, kind, now)
    partial = dump.with_name(dump.name + ".partial")
    try:
        if kind == "postgresql":
            facts = await _dump_postgres(settings, url, partial)
        else:
            facts = await _copy_sqlite(settings, url, partial)
        _private(partial)
        checksum = await asyncio.to_thread(sha256, partial)
        partial.rename(dump)
    finally:
        partial.unlink(missing_ok=True)
    data = {
        "format": MANIFEST_FORMAT,
        "aihubVersion": __version__,
        "createdAt": now.isoformat().replace("+00:00", "Z"),
        "database": {"kind": kind, "name": url.database, "host": url.host, "port": url.port},
        "dump": {
            "file": dump.name,
            "format": "pg_dump custom" if kind == "postgresql" else "sqlite backup",
            "bytes": dump.stat().st_size,
            "sha256": checksum,
        },
        **facts.to_json(),
    }
    _write_json(manifest, data)
    return BackupResult(dump, manifest, data, time.perf_counter() - started)


def _new_files(output: Path, url: URL, kind: str, now: dt.datetime) -> tuple[Path, Path]:
    """The dump's and the manifest's paths: ``aihub-<database>-<UTC time>``, never overwritten."""
    output.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = Path(url.database or "aihub").stem if kind == "sqlite" else (url.database or "aihub")
    stem = f"aihub-{name}-{now.strftime('%Y%m%dT%H%M%SZ')}"
    dump, manifest = output / (stem + _DUMP_SUFFIX[kind]), output / (stem + MANIFEST_SUFFIX)
    if dump.exists() or manifest.exists():
        raise BackupError(f"{dump} exists already")
    return dump, manifest


async def _dump_postgres(settings: Settings, url: URL, target: Path) -> Facts:
    pg_dump = _tool("pg_dump")
    engine = _engine(settings, url)
    try:
        async with engine.connect() as conn:
            # The snapshot pg_dump reads is the one these counts were taken in: the manifest and
            # the dump agree even while the services keep writing.
            await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            snapshot = str((await conn.execute(text("SELECT pg_export_snapshot()"))).scalar_one())
            facts = await collect(conn)
            await _run(
                [pg_dump, "--format=custom", "--no-password", f"--snapshot={snapshot}", f"--file={target}"],
                _pg_env(url),
            )
            await conn.rollback()
    finally:
        await engine.dispose()
    return facts


async def _copy_sqlite(settings: Settings, url: URL, target: Path) -> Facts:
    source = Path(url.database or "")

    def copy() -> None:
        if not source.is_file():
            raise BackupError(f"the SQLite database {source} does not exist")
        # The online backup API: a consistent copy even while the service writes.
        with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
            src.backup(dst)

    await asyncio.to_thread(copy)
    return await _facts_of(settings, url.set(database=str(target)))


async def _facts_of(settings: Settings, url: URL) -> Facts:
    engine = _engine(settings, url)
    try:
        async with engine.connect() as conn:
            if _kind(url) == "postgresql":
                await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            return await collect(conn)
    finally:
        await engine.dispose()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    _private(partial)
    partial.rename(path)


# ------------------------------------------------------------------------------ restore


def locate(source: Path) -> tuple[Path, dict[str, Any], Path]:
    """(manifest path, manifest, dump path) for a dump, a manifest or a directory of backups
    (the newest one in it)."""
    if source.is_dir():
        manifests = sorted(source.glob("*" + MANIFEST_SUFFIX))
        if not manifests:
            raise BackupError(f"no backup manifest (*{MANIFEST_SUFFIX}) in {source}")
        manifest = max(manifests, key=lambda p: (_read_manifest(p).get("createdAt", ""), p.name))
    elif source.name.endswith(MANIFEST_SUFFIX):
        manifest = source
    else:
        manifest = source.with_name(source.name.rsplit(".", 1)[0] + MANIFEST_SUFFIX)
    if not manifest.is_file():
        raise BackupError(f"the manifest {manifest} does not exist (a dump is restored only with its manifest)")
    data = _read_manifest(manifest)
    dump = manifest.with_name(str(data["dump"]["file"]))
    if not dump.is_file():
        raise BackupError(f"the dump {dump} named by {manifest.name} does not exist")
    return manifest, data, dump


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unknown manifest format {data.get('format') if isinstance(data, dict) else data!r}")
        Facts.from_json(data)
        str(data["dump"]["file"]) + str(data["dump"]["sha256"])  # both present, or KeyError
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{path} is not a valid aihub backup manifest: {exc}") from None
    return data


async def restore(
    settings: Settings, source: Path, *, target_url: str | None = None, force: bool = False, jobs: int = 1
) -> RestoreResult:
    """Verify the dump, load it into an empty target, then verify the target against the manifest."""
    manifest, data, dump = locate(source)
    if await asyncio.to_thread(sha256, dump) != data["dump"]["sha256"]:
        raise VerificationFailed(
            f"checksum mismatch: {dump.name} is not the file the manifest describes (damaged or altered); "
            "nothing was restored"
        )
    url = make_url(target_url or settings.database_url)
    kind = _kind(url)
    if kind != data["database"]["kind"]:
        raise BackupError(f"this is a {data['database']['kind']} backup; the target {masked(url)} is {kind}")
    result = RestoreResult(manifest, data, masked(url))
    started = time.perf_counter()
    if kind == "postgresql":
        await _load_postgres(settings, url, dump, force=force, jobs=jobs)
    else:
        await _load_sqlite(settings, url, dump, force=force)
    result.restore_seconds = time.perf_counter() - started
    started = time.perf_counter()
    await _verify(settings, url, Facts.from_json(data), result)
    result.verify_seconds = time.perf_counter() - started
    return result


async def _load_postgres(settings: Settings, url: URL, dump: Path, *, force: bool, jobs: int) -> None:
    pg_restore = _tool("pg_restore")
    engine = _engine(settings, url)
    try:
        try:
            async with engine.connect() as conn:
                objects = await _user_objects(conn)
                if objects and not force:
                    raise BackupError(
                        f"the target database {masked(url)} is not empty ({objects} tables, sequences or views); "
                        "restore into an empty database, or pass --force to replace its public schema"
                    )
                if objects:
                    await conn.execute(text("DROP SCHEMA public CASCADE"))
                    await conn.execute(text("CREATE SCHEMA public"))
                    await conn.commit()
        except OSError as exc:
            raise BackupError(f"cannot connect to the target database {masked(url)}: {exc}") from None
    finally:
        await engine.dispose()
    # --no-owner/--no-acl: the target's own role owns what it restores (roles differ between
    # servers); one transaction unless parallel, so a failed restore leaves the target empty.
    args = [pg_restore, "--no-owner", "--no-acl", "--exit-on-error", "--no-password", f"--dbname={url.database}"]
    args += [f"--jobs={jobs}"] if jobs > 1 else ["--single-transaction"]
    await _run([*args, str(dump)], _pg_env(url))


async def _user_objects(conn: AsyncConnection) -> int:
    row = await conn.execute(
        text(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
            "AND n.nspname NOT LIKE 'pg_temp%'"
        )
    )
    return int(row.scalar_one())


async def _load_sqlite(settings: Settings, url: URL, dump: Path, *, force: bool) -> None:
    target = Path(url.database or "")
    if not url.database or url.database == ":memory:":
        raise BackupError("restore needs a SQLite file path as the target")
    if _has_content(target):
        engine = _engine(settings, url)
        try:
            async with engine.connect() as conn:
                tables = await table_names(conn)
        finally:
            await engine.dispose()
        if tables and not force:
            raise BackupError(f"the target {target} is not empty ({len(tables)} tables); pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    await asyncio.to_thread(shutil.copyfile, dump, partial)
    _private(partial)
    for stale in (target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
        stale.unlink(missing_ok=True)  # the old file's journal must not be replayed into the new one
    partial.replace(target)


def _has_content(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


async def _verify(settings: Settings, url: URL, expected: Facts, result: RestoreResult) -> None:
    from aihub.core.credits.reconcile import reconcile

    actual = await _facts_of(settings, url)
    result.problems = differences(expected, actual)
    engine = _engine(settings, url)
    tx = Tx(create_sessionmaker(engine)())
    try:
        if _kind(url) == "postgresql":
            await tx.session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        report = await reconcile(tx)
    finally:
        await tx.close()
        await engine.dispose()
    result.reconciled_accounts = report.accounts
    result.reconcile_mismatches = report.mismatched
