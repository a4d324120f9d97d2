"""The floor under ``POST /api/credits/deduct``: the same work without the framework layers.

    .venv/bin/python bench/ledger/floor.py [--seconds 10] [--clients 32] [--accounts 10000]

A bare ASGI callable on the same uvicorn server (httptools, uvloop) does what a deduction
needs and nothing more: parse the JSON body, verify the service token (TokenCodec, cached),
check the blacklist in Redis (one EXISTS), then in one asyncpg transaction the ledger's own
move statement (conditional UPDATE + ledger INSERT) and the audit append statement, COMMIT,
and a JSON answer. No FastAPI dependency injection, no SQLAlchemy session, no middleware.

It answers one question for the ledger issue: how much of a deduction's cost is the work
itself and how much the layers around it, measured side by side with `aihub serve core` in
one run (same database, same accounts, same wrk script). It is a measuring instrument, not a
second implementation: nothing in the product calls it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import os
import subprocess
import sys
import uuid
import zlib
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import uvicorn
from redis import asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_deduct as harness  # type: ignore[import-not-found]  # a sibling script, found through sys.path above

from aihub.config import Settings
from aihub.core.audit.service import AUDIT_CHAINS
from aihub.kit.jsonutil import canonical
from aihub.kit.jwt import TokenCodec

# The product's statements with asyncpg's positional parameters (same text otherwise).
MOVE = """
WITH moved AS (
    UPDATE credit_accounts SET balance = balance - $2, updated_at = $3
    WHERE user_id = $1 AND balance - reserved >= $2
    RETURNING user_id, balance, reserved
), logged AS (
    INSERT INTO credit_transactions (id, user_id, amount, type, reason, balance_after, created_at)
    SELECT $4, user_id, -$2, 'debit', 'usage', balance, $3 FROM moved RETURNING seq
)
SELECT moved.balance, moved.reserved FROM moved, logged
"""
AUDIT = """
WITH head AS (
    UPDATE audit_chain_heads
    SET prev_hash = last_hash, last_seq = last_seq + 1,
        last_hash = encode(sha256(convert_to(
            last_hash || ':' || (last_seq + 1)::text || ':' || $2::text, 'UTF8')), 'hex')
    WHERE chain = $1
    RETURNING last_seq, prev_hash, last_hash
)
INSERT INTO audit_logs (id, chain, chain_seq, actor_id, actor_type, action, entity_type, entity_id,
                        before, after, request_id, ip, created_at, prev_hash, hash, hash_version)
SELECT $3, $1, head.last_seq, $4, 'service', 'credits.debit.usage', 'credit_account', $5,
       $6::jsonb, $7::jsonb, NULL, NULL, $8, head.prev_hash, head.last_hash, 2
FROM head
"""


def make_app(pool: asyncpg.Pool, redis: aioredis.Redis, codec: TokenCodec) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await _answer(send, 404, {"code": "NOT_FOUND"})
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        claims = codec.verify(auth.partition(" ")[2])
        if await redis.exists(f"bl:{claims.jti}"):
            return await _answer(send, 401, {"code": "TOKEN_REVOKED"})
        data = orjson.loads(body)
        user_id, amount = uuid.UUID(data["userId"]), int(data["amount"])
        now = dt.datetime.now(dt.UTC)
        tid = uuid.uuid4()
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(MOVE, user_id, amount, now, tid)
            if row is None:
                return await _answer(send, 402, {"code": "INSUFFICIENT_CREDITS"})
            after = {"balance": row["balance"], "reserved": row["reserved"], "transactionId": str(tid)}
            before = {"balance": row["balance"] + amount}
            chain = zlib.crc32(f"credit_account:{user_id}".encode()) % AUDIT_CHAINS
            digest = hashlib.sha256(canonical({"after": after, "before": before, "at": now.isoformat()})).hexdigest()
            await conn.execute(
                AUDIT, chain, digest, uuid.uuid4(), claims.sub, str(user_id), orjson.dumps(before).decode(),
                orjson.dumps(after).decode(), now,
            )  # fmt: skip
        await _answer(send, 201, {"id": str(tid), "amount": -amount, "balanceAfter": row["balance"]})

    return app


async def _answer(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serve_floor(db: str, port: int, clients: int) -> None:
    pool = await asyncpg.create_pool(harness.dsn(db), min_size=clients, max_size=clients)
    redis = aioredis.from_url(harness.REDIS_URL)
    codec = TokenCodec.from_settings(Settings())
    config = uvicorn.Config(
        make_app(pool, redis, codec), host="127.0.0.1", port=port, loop="none", http="httptools",
        lifespan="off", log_level="warning", access_log=False,
    )  # fmt: skip
    await uvicorn.Server(config).serve()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # internal: run the floor app on DB:PORT
    args = parser.parse_args()
    if args.serve:
        db, port = args.serve.split(":")
        import uvloop

        uvloop.install()
        await serve_floor(db, int(port), args.clients)
        return

    db = f"aihub_floor_{os.getpid()}"
    db_url = "postgresql+asyncpg://" + harness.dsn(db).split("://", 1)[1]
    env = {
        **os.environ,
        "AIHUB_DATABASE_URL": db_url,
        "AIHUB_REDIS_URL": harness.REDIS_URL,
        "AIHUB_LOG_LEVEL": "warning",
        "AIHUB_DB_POOL_SIZE": str(args.clients + 8),
    }
    await harness.create_database(db)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([harness.AIHUB, "migrate"], env=env, check=True, capture_output=True)
        ids = await harness.seed(db, args.accounts)
        token = TokenCodec.from_settings(Settings()).issue(
            sub="bench", typ="service", role="service", scopes=["credits:deduct"], ttl=None
        )
        rates: dict[str, float] = {}
        for name in ("aihub serve core", "floor (bare ASGI + asyncpg)"):
            port = harness.free_port()
            command = (
                [harness.AIHUB, "serve", "core"]
                if name.startswith("aihub")
                else [sys.executable, __file__, "--serve", f"{db}:{port}", "--clients", str(args.clients)]
            )
            proc = subprocess.Popen(command, env={**env, "AIHUB_CORE_PORT": str(port)})
            procs.append(proc)
            url = f"http://127.0.0.1:{port}"
            await _wait(url, proc)
            await harness.http_case(db, url, ids, token, args.clients, 2)  # warm-up
            rates[name], _ = await harness.http_case(db, url, ids, token, args.clients, args.seconds)
            proc.terminate()
            proc.wait(timeout=30)
        print(f"\n=== deduct: the product vs the floor, {args.clients} clients, {args.seconds}s, spread ===")
        for name, rate in rates.items():
            print(f"{name:<32}{rate:>10.0f} deductions/s")
        product, floor = rates.values()
        print(f"the layers (FastAPI DI, SQLAlchemy session, middleware) cost {1 - product / floor:.0%} of the floor")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        await harness.drop_database(db)


async def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError("server exited during start")
            try:
                async with http.get(f"{url}/health"):
                    return  # listening (the floor app answers nothing but deductions)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


if __name__ == "__main__":
    asyncio.run(main())
