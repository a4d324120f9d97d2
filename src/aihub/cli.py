"""The ``aihub`` command: serve, worker, migrate, admin, ledger, backup, restore."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from aihub.config import Settings

T = TypeVar("T")
app = typer.Typer(help="aihub: gateway, auth and core services of an AI platform.", no_args_is_help=True)
admin_app = typer.Typer(help="Manage administrator accounts.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
ledger_app = typer.Typer(help="Inspect the credit ledger.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
err = Console(stderr=True)
SERVICES = ("core", "auth", "gateway")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "AIHUB_" + "_".join(str(p) for p in error["loc"]).upper() if error["loc"] else "settings"
            message = error["msg"].removeprefix("Value error, ")
            # soft_wrap: one line per error however narrow the terminal, so log collectors and
            # `docker logs` show the whole message on the line that names the variable.
            err.print(f"[red]configuration error[/red] {name}: {escape(message)}", soft_wrap=True)
        raise typer.Exit(2) from None


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is absent on Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


@app.command()
def serve(
    service: Annotated[
        str | None, typer.Argument(help="One service (core, auth, gateway); all of them in one process when omitted")
    ] = None,
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            help="processes of one service sharing its port (SO_REUSEPORT); 'auto': one per CPU. "
            "More than 1 needs Redis (limits, blacklist and blocks are shared through it).",
        ),
    ] = "1",
) -> None:
    """Start the services (all in one process by default) on the configured database and store."""
    from aihub.kit.serve import WORKER_INDEX_ENV, supervise, this_worker, worker_count

    if service is not None and service not in SERVICES:
        err.print(f"[red]unknown service[/red] {service!r}; choose one of: {', '.join(SERVICES)}")
        raise typer.Exit(2)
    try:
        count = worker_count(workers)
    except ValueError:
        err.print(f"[red]invalid --workers[/red] {workers!r}: a number from 1 to 256, or auto")
        raise typer.Exit(2) from None
    settings = _settings()
    names = [service] if service else list(SERVICES)
    if "gateway" in names:
        _check_routes(settings)
    from aihub.kit.logging import configure_logging

    configure_logging(settings.log_level)
    if count > 1 and WORKER_INDEX_ENV not in os.environ:
        if service is None or not settings.redis_url:
            err.print("[red]--workers > 1[/red] needs one service and AIHUB_REDIS_URL (state shared by the workers)")
            raise typer.Exit(2)
        raise typer.Exit(supervise(["serve", service, "--workers", str(count)], count))
    _run(_serve(settings, names, bootstrap=service is None, worker=this_worker()))


def _check_routes(settings: Settings) -> None:
    """A bad route file stops the start with one line naming it, not a traceback."""
    from aihub.gateway.routing import load_table

    try:
        load_table(settings)
    except Exception as exc:  # any parse or shape error of the operator's file
        err.print(f"[red]configuration error[/red] AIHUB_GATEWAY_ROUTES: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


async def _serve(settings: Settings, names: list[str], *, bootstrap: bool, worker: tuple[int, int] = (0, 1)) -> None:
    """``worker``: (index, count) among the supervisor's workers; (0, 1) when alone."""
    from aihub.kit.runtime import Runtime
    from aihub.kit.serve import serve_apps

    runtime = Runtime.build(settings)
    try:
        if names != ["gateway"]:  # the gateway alone never touches the database
            await runtime.prepare()
        if bootstrap:
            await _first_admin(runtime)
        index, count = worker
        listeners = [_listener(name, settings, runtime, workers=count) for name in names]
        # One worker runs core's jobs: the periodic sweeps must not tick once per worker.
        if "core" in names and settings.core_run_jobs and index == 0:
            await _start_core_jobs(runtime)
        await serve_apps(
            listeners,
            drain_seconds=settings.shutdown_drain_seconds,
            timeout_seconds=settings.shutdown_timeout_seconds,
            on_started=_console_hint(settings) if "gateway" in names and index == 0 else None,
            reuse_port=count > 1,
        )
    finally:
        await runtime.close()  # the jobs first (running ones finish), then the store and the engine


def _listener(name: str, settings: Settings, runtime: Any, *, workers: int = 1) -> Any:
    from aihub.auth.app import create_app as create_auth
    from aihub.core.app import create_app as create_core
    from aihub.kit.serve import Listener

    if name == "gateway":
        from aihub.gateway.app import create_app as create_gateway
        from aihub.gateway.server import GatewayRunner

        # Shares the runtime's store and codec: in the embedded mode one in-process blacklist
        # serves auth's logout and the gateway's check.
        gateway = create_gateway(settings, store=runtime.store, codec=runtime.codec, workers=workers)
        return Listener(name=name, app=gateway, host=settings.host, port=settings.gateway_port, runner=GatewayRunner)
    factories: dict[str, tuple[Callable[..., Any], int]] = {
        "core": (create_core, settings.core_port),
        "auth": (create_auth, settings.auth_port),
    }
    factory, port = factories[name]
    service_app = factory(runtime=runtime)
    service_app.state.prepared = True
    service_app.state.owns_runtime = False
    return Listener(name=name, app=service_app, host=settings.host, port=port)


def _console_hint(settings: Settings) -> Callable[[], None] | None:
    """The last start-up line: where a newcomer opens the console (after every port listens)."""
    if not settings.console_enabled:
        return None
    host = settings.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{settings.gateway_port}/console/"

    def hint() -> None:
        sys.stderr.write(f"  aihub is running: open {url} in a browser and sign in.\n")
        sys.stderr.flush()

    return hint


async def _start_core_jobs(runtime: Any) -> None:
    """Core consumes the job queue and ticks the periodic sweeps (closed with the runtime)."""
    from aihub.core.jobs import periodic
    from aihub.kit.jobs import jobs_of

    await jobs_of(runtime).start(periodic(runtime))


async def _first_admin(runtime: Any) -> None:
    """On a first start (no admin at all), create one and print its password once."""
    from aihub.core.admin import admin_exists, ensure_admin

    if await admin_exists(runtime):
        return
    password = secrets.token_urlsafe(18)
    await ensure_admin(runtime, runtime.settings.admin_email, password)
    sys.stderr.write(
        "\n  First start: an administrator was created.\n"
        f"    email:    {runtime.settings.admin_email}\n"
        f"    password: {password}\n"
        "  This password is shown once; change it after signing in.\n\n"
    )
    sys.stderr.flush()


@app.command()
def worker() -> None:
    """Run core's background jobs (job queue, hold expiry, reconcile gauges) without the API.

    Several workers may run at once. AIHUB_WORKER_PORT adds /health, /health/ready and
    /metrics; SIGTERM lets running jobs finish, then exits 0."""
    settings = _settings()
    from aihub.kit.logging import configure_logging
    from aihub.ops.worker import run_worker

    configure_logging(settings.log_level)
    _run(run_worker(settings))


@app.command()
def migrate() -> None:
    """Apply every pending database migration."""
    settings = _settings()

    async def go() -> None:
        from aihub.kit import migrate as migrations
        from aihub.kit.db import create_engine

        engine = create_engine(settings)
        try:
            await migrations.upgrade(engine)
        finally:
            await engine.dispose()

    _run(go())
    err.print("[green]database is up to date[/green]")


def _read_password(prompt: str) -> str:
    """A password from standard input (a script pipes it), or asked twice on a terminal."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=True))


@admin_app.command("create")
def admin_create(
    email: Annotated[str, typer.Option("--email", help="The administrator's email")],
    password: Annotated[str | None, typer.Option("--password", help="Read from standard input when omitted")] = None,
) -> None:
    """Create an administrator, or give an existing account the admin role (idempotent)."""
    settings = _settings()
    if password is None:
        password = _read_password("Password")
    if len(password) < 8:
        err.print("[red]the password must be at least 8 characters[/red]")
        raise typer.Exit(2)

    async def go() -> str:
        from aihub.core.admin import ensure_admin
        from aihub.kit.runtime import Runtime

        runtime = Runtime.build(settings)
        try:
            await runtime.prepare()
            return await ensure_admin(runtime, email, password)
        finally:
            await runtime.close()

    try:
        outcome = _run(go())
    except Exception as exc:  # the CLI prints a sentence, not a stack trace
        err.print(f"[red]failed:[/red] {getattr(exc, 'message', exc)}")
        raise typer.Exit(1) from None
    err.print(f"[green]{outcome}[/green] {email}")


@admin_app.command("set-password")
def admin_set_password(
    email: Annotated[str, typer.Option("--email", help="The account's email")],
) -> None:
    """Set a new password for an account (a lost admin password): it is read from standard input
    (asked twice on a terminal), must pass the registration rules, and every session of the
    account ends (refresh tokens, their access tokens, Sora sessions). Writes an audit row."""
    settings = _settings()
    password = _read_password("New password")
    problem = _password_problem(password)
    if problem:
        err.print(f"[red]{problem}[/red]")
        raise typer.Exit(2)

    async def go() -> dict[str, int]:
        from aihub.core.admin import set_password
        from aihub.kit.runtime import Runtime

        runtime = Runtime.build(settings)
        try:
            await runtime.prepare()
            return await set_password(runtime, email, password)
        finally:
            await runtime.close()

    try:
        ended = _run(go())
    except Exception as exc:  # the CLI prints a sentence, not a stack trace
        err.print(f"[red]failed:[/red] {escape(str(getattr(exc, 'message', exc)))}")
        raise typer.Exit(1) from None
    err.print(
        f"[green]password set[/green] for {escape(email)}; ended {ended['refreshTokens']} refresh tokens, "
        f"{ended['accessFamilies']} signed-in sessions, {ended['soraSessions']} Sora sessions"
    )


def _password_problem(password: str) -> str | None:
    """The registration rules (``Password`` in core/users/schemas.py), checked the same way."""
    from pydantic import TypeAdapter

    from aihub.core.users.schemas import Password

    try:
        TypeAdapter(Password).validate_python(password)
    except ValidationError:
        return "the password must be 8 to 256 characters"
    return None


@ledger_app.command("reconcile")
def ledger_reconcile(
    show: Annotated[int, typer.Option("--show", help="List at most this many mismatched accounts")] = 20,
) -> None:
    """Check every account: balance == sum of its ledger, each balanceAfter chains, reserved ==
    active holds. Exits 1 on any mismatch."""
    settings = _settings()

    async def go() -> Any:
        from aihub.core.credits.reconcile import reconcile
        from aihub.kit.db import Tx, create_engine, create_sessionmaker

        # An engine, not a Runtime: the services' imports would be half of this process's memory.
        engine = create_engine(settings.model_copy(update={"db_pool_size": 1, "db_pool_overflow": 0}))
        tx = Tx(create_sessionmaker(engine)())
        try:
            if not settings.is_sqlite:
                # One consistent snapshot of accounts, ledger and holds while writes go on.
                from sqlalchemy import text

                await tx.session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            return await reconcile(tx)
        finally:
            await tx.close()
            await engine.dispose()

    try:
        report = _run(go())
    except Exception as exc:  # the CLI prints a sentence, not a stack trace
        err.print(f"[red]reconcile failed:[/red] {getattr(exc, 'message', exc)}")
        raise typer.Exit(2) from None
    _print_reconcile(report, show)
    if not report.ok:
        raise typer.Exit(1)


def _print_reconcile(report: Any, show: int) -> None:
    from rich.table import Table

    # Piped output (scripts, CI logs) gets room for full UUIDs instead of 80 columns.
    out = Console() if sys.stdout.isatty() else Console(width=160)
    summary = Table(title="ledger reconcile")
    summary.add_column("accounts", justify="right")
    summary.add_column("ledger rows", justify="right")
    summary.add_column("total balance", justify="right")
    summary.add_column("mismatches", justify="right")
    summary.add_column("result")
    summary.add_row(
        str(report.accounts),
        str(report.rows),
        str(report.total_balance),
        f"{report.mismatched:,}",
        "[green]clean[/green]" if report.ok else "[red]MISMATCH[/red]",
    )
    out.print(summary)
    if report.mismatches:
        detail = Table(title="mismatched accounts")
        for column in ("user id", "balance", "ledger sum", "reserved", "active holds", "chain breaks at"):
            detail.add_column(column)
        for check in report.mismatches[:show]:
            detail.add_row(
                str(check.user_id),
                str(check.balance),
                str(check.ledger_sum),
                str(check.reserved),
                str(check.held),
                str(check.broken_at or "-"),
            )
        out.print(detail)


@app.command()
def backup(
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the dump and its manifest")] = Path(
        "backups"
    ),
) -> None:
    """Back up the configured database: a dump (pg_dump custom format; SQLite: a file copy) and a
    manifest with row counts, ledger totals and the dump's SHA-256 (see docs/backup.md)."""
    settings = _settings()
    from aihub.ops.backup import backup as run_backup
    from aihub.ops.backup import masked

    err.print(f"backing up {masked(settings.database_url)}", soft_wrap=True)
    result = _ops_run(lambda: run_backup(settings, output))
    data = result.data
    ledger = data["ledger"]
    print(f"dump      {result.dump} ({data['dump']['bytes']:,} bytes, sha256 {data['dump']['sha256'][:16]}…)")
    print(f"manifest  {result.manifest}")
    rows, revision = sum(data["tables"].values()), ",".join(data["alembicRevisions"])
    print(f"tables    {len(data['tables'])}, {rows:,} rows; revision {revision}")
    print(
        f"ledger    {ledger['accounts']:,} accounts, total balance {ledger['totalBalance']:,}, "
        f"{ledger['transactions']:,} transactions"
    )
    print(f"took      {result.seconds:.1f} s")


@app.command()
def restore(
    source: Annotated[Path, typer.Argument(help="A dump, its manifest, or a directory of backups (the newest)")],
    target_url: Annotated[
        str | None, typer.Option("--target-url", help="Database to restore into (default AIHUB_DATABASE_URL)")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a non-empty target (drops its public schema)")
    ] = False,
    jobs: Annotated[int, typer.Option("--jobs", min=1, max=32, help="Parallel pg_restore jobs (>1: not atomic)")] = 1,
) -> None:
    """Restore a backup into an EMPTY database, then prove it: checksum first, then row counts,
    ledger totals and a ledger reconcile against the manifest. Exits 1 on any mismatch."""
    settings = _settings()
    from aihub.ops.backup import restore as run_restore

    result = _ops_run(lambda: run_restore(settings, source, target_url=target_url, force=force, jobs=jobs))
    _print_restore(result)
    if not result.ok:
        raise typer.Exit(1)


def _ops_run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a backup/restore step; a failure is one sentence and an exit code, never a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from aihub.ops.backup import BackupError

    try:
        return _run(make())
    except BackupError as exc:
        # soft_wrap: one line per message, so that scripts and logs can grep it whole.
        err.print(f"[red]{'verification failed' if exc.exit_code == 1 else 'failed'}:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except (OSError, SQLAlchemyError) as exc:
        err.print(f"[red]failed:[/red] {getattr(exc, 'orig', None) or exc}", soft_wrap=True)
        raise typer.Exit(2) from None


def _print_restore(result: Any) -> None:
    from rich.table import Table

    out = Console() if sys.stdout.isatty() else Console(width=160)
    data = result.data
    out.print(f"restored {result.manifest.name} (taken {data['createdAt']}) into {result.target}")
    table = Table(title="restore verification")
    for column in ("check", "expected", "found", "result"):
        table.add_column(column)
    bad = {what for what, _, _ in result.problems}
    for what, want, got in result.problems:
        table.add_row(what, want, got, "[red]MISMATCH[/red]")
    if "alembic revision" not in bad:
        revision = ",".join(data["alembicRevisions"])
        table.add_row("alembic revision", revision, revision, "[green]ok[/green]")
    rows = sum(data["tables"].values())
    if not any(what.startswith("rows in") for what in bad):
        table.add_row(f"rows in {len(data['tables'])} tables", f"{rows:,}", f"{rows:,}", "[green]ok[/green]")
    if not any(what.startswith("ledger") for what in bad):
        ledger = data["ledger"]
        totals = f"balance {ledger['totalBalance']:,}, {ledger['transactions']:,} transactions"
        table.add_row("ledger totals", totals, totals, "[green]ok[/green]")
    table.add_row(
        "ledger reconcile",
        f"{result.reconciled_accounts:,} accounts clean",
        f"{result.reconcile_mismatches} mismatched",
        "[green]ok[/green]" if result.reconcile_mismatches == 0 else "[red]MISMATCH[/red]",
    )
    out.print(table)
    out.print(f"restore {result.restore_seconds:.1f} s, verification {result.verify_seconds:.1f} s")
    if not result.ok:
        out.print("[red]the restored database does not match its backup[/red]")


def main() -> None:
    app()
