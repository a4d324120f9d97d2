"""Auth figures: login requests/s through a real `aihub serve auth` process on PostgreSQL + Redis,
and the cost of one token verification (TokenCodec.verify) for HS256, RS256 and EdDSA.

    .venv/bin/python bench/auth.py [--seconds 10] [--concurrency 16] [--users 64]

Figures are printed with a baseline measured in the same run (argon2 alone for logins,
HS256 for verification), so they compare across machines. Other work on the same box makes
absolute numbers noisy: run it twice and read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import asyncpg
import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from aihub.keys import load_signing_key
from aihub.kit import passwords
from aihub.kit.jwt import TokenCodec

PG_ADMIN = os.environ.get("AIHUB_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("AIHUB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
PASSWORD = "bench-password-123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def pg(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def argon2_baseline(rounds: int = 20) -> float:
    """Seconds per argon2 verification on one core: the floor of every login."""
    stored = passwords._HASHER.hash(PASSWORD)
    started = time.perf_counter()
    for _ in range(rounds):
        passwords._HASHER.verify(stored, PASSWORD)
    return (time.perf_counter() - started) / rounds


def argon2_parallel(seconds: float, threads: int) -> float:
    """Verifications/s with every core busy, now: the ceiling that login/s is compared against."""
    stored = passwords._HASHER.hash(PASSWORD)
    deadline = time.perf_counter() + seconds

    def work() -> int:
        done = 0
        while time.perf_counter() < deadline:
            passwords._HASHER.verify(stored, PASSWORD)
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda _: work(), range(threads)))
    return total / (time.perf_counter() - started)


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if proc.poll() is not None:
                raise SystemExit(f"auth exited with {proc.returncode}")
            try:
                async with http.get(f"{url}/health/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("auth did not become ready")


async def login_load(url: str, seconds: float, concurrency: int, users: int) -> tuple[int, int, float]:
    emails = [f"bench-{uuid.uuid4().hex[:10]}@example.com" for _ in range(users)]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        for email in emails:
            async with http.post(f"{url}/register", json={"email": email, "password": PASSWORD}) as r:
                assert r.status == 201, await r.text()
        ok = failed = 0
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()

        async def worker(index: int) -> None:
            nonlocal ok, failed
            i = index
            while time.perf_counter() < deadline:
                # Each worker owns its users, so no account sees parallel logins (the lockout counts them).
                body = {"email": emails[i % users], "password": PASSWORD}
                async with http.post(f"{url}/login", json=body) as r:
                    await r.read()
                    if r.status == 200:
                        ok += 1
                    else:
                        failed += 1
                i += concurrency

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return ok, failed, time.perf_counter() - started


async def refresh_load(url: str, seconds: float, concurrency: int) -> tuple[int, int, float]:
    """The same HTTP, database and audit path as login, minus argon2: what argon2 costs us."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        chains = []
        for _ in range(concurrency):
            email = f"bench-r-{uuid.uuid4().hex[:10]}@example.com"
            async with http.post(f"{url}/register", json={"email": email, "password": PASSWORD}) as r:
                assert r.status == 201
            async with http.post(f"{url}/login", json={"email": email, "password": PASSWORD}) as r:
                chains.append((await r.json())["refreshToken"])
        ok = failed = 0
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()

        async def worker(index: int) -> None:
            nonlocal ok, failed
            while time.perf_counter() < deadline:
                async with http.post(f"{url}/refresh", json={"refreshToken": chains[index]}) as r:
                    body = await r.json()
                    if r.status != 200:
                        failed += 1
                        return
                    ok += 1
                    chains[index] = body["refreshToken"]

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return ok, failed, time.perf_counter() - started


def verify_cost(codec: TokenCodec, rounds: int) -> tuple[float, float]:
    """(first verification of a token, a repeat of it) in µs: the codec caches verified tokens."""
    tokens = [
        codec.issue(sub=str(uuid.uuid4()), role="user", roles=["user"], email="a@example.com") for _ in range(rounds)
    ]
    started = time.perf_counter()
    for token in tokens:
        codec.verify(token)
    cold = (time.perf_counter() - started) / rounds * 1e6
    started = time.perf_counter()
    for _ in range(rounds):
        codec.verify(tokens[0])
    return cold, (time.perf_counter() - started) / rounds * 1e6


def _codec(pem: bytes | None) -> TokenCodec:
    return TokenCodec(
        secret="x" * 48,
        issuer="aihub-auth",
        audience="aihub",
        leeway=10,
        access_ttl=900,
        signing_key=None if pem is None else load_signing_key(pem.decode()),
        accept_hs256=pem is None,
    )


def codecs() -> dict[str, TokenCodec]:
    encoding, fmt = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    return {
        "HS256": _codec(None),
        "RS256 (2048)": _codec(rsa_key.private_bytes(encoding, fmt, serialization.NoEncryption())),
        "EdDSA": _codec(ed_key.private_bytes(encoding, fmt, serialization.NoEncryption())),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--verify-rounds", type=int, default=20_000)
    args = parser.parse_args()

    h = passwords._HASHER
    print(f"cpus: {os.cpu_count()} (shared with other work on this machine: figures are noisy)")
    print(f"argon2id: time_cost={h.time_cost} memory_cost={h.memory_cost} KiB parallelism={h.parallelism}")
    one = argon2_baseline()
    print(f"argon2 verify, one thread: {one * 1000:.1f} ms")
    before = argon2_parallel(min(5.0, args.seconds), args.concurrency)
    print(f"argon2 alone, {args.concurrency} threads, before the run: {before:.1f} verifications/s")

    db = f"aihub_bench_auth_{os.getpid()}"
    asyncio.run(pg(f"CREATE DATABASE {db}"))
    port = free_port()
    env = {
        **os.environ,
        "AIHUB_DATABASE_URL": PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{db}",
        "AIHUB_REDIS_URL": REDIS_URL,
        "AIHUB_AUTH_PORT": str(port),
        "AIHUB_LOG_LEVEL": "warning",
    }
    aihub = str(Path(sys.executable).with_name("aihub"))
    proc = subprocess.Popen([aihub, "serve", "auth"], env=env, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(wait_ready(url, proc))
        ok, failed, elapsed = asyncio.run(login_load(url, args.seconds, args.concurrency, args.users))
        rate = ok / elapsed
        after = argon2_parallel(min(5.0, args.seconds), args.concurrency)
        print(f"argon2 alone, {args.concurrency} threads, after the run:  {after:.1f} verifications/s")
        ceiling = (before + after) / 2
        print(
            f"login through HTTP, {args.concurrency} concurrent: {rate:.1f} logins/s "
            f"({ok} ok, {failed} failed in {elapsed:.1f} s) = {rate / ceiling:.2f} x argon2 alone"
        )
        r_ok, r_failed, r_elapsed = asyncio.run(refresh_load(url, args.seconds, args.concurrency))
        print(
            f"refresh through HTTP (no argon2), {args.concurrency} concurrent: "
            f"{r_ok / r_elapsed:.1f} refreshes/s "
            f"({r_ok} ok, {r_failed} failed) = {r_ok / r_elapsed / rate:.1f} x login"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
        asyncio.run(pg(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))

    table = codecs()
    token = table["HS256"].issue(sub="u", role="user")
    started = time.perf_counter()
    for _ in range(args.verify_rounds):
        pyjwt.decode(token, "x" * 48, algorithms=["HS256"], audience="aihub", issuer="aihub-auth")
    raw = (time.perf_counter() - started) / args.verify_rounds * 1e6
    print(f"bare PyJWT decode HS256        {raw:8.1f} µs (no kid lookup, no claim checks)")
    baseline = None
    for name, codec in table.items():
        cold, cached = verify_cost(codec, args.verify_rounds if name != "RS256 (2048)" else args.verify_rounds // 2)
        baseline = baseline or cold
        print(
            f"TokenCodec.verify {name:13s} {cold:8.1f} µs first time ({cold / baseline:.2f} x HS256), "
            f"{cached:5.1f} µs when cached"
        )


if __name__ == "__main__":
    main()
