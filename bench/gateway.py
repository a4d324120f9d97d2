"""Gateway throughput and added latency, against nginx serving a small JSON body (issue 16).

In one run, with ``wrk -t2``, at 50 and at 10 connections, every target proxying to the same
nginx upstream:

- nginx direct (the upstream alone);
- the stack's floor: a ~20-line aiohttp server + aiohttp client proxy on uvloop (FLOOR below),
  i.e. what aiohttp itself can do, with none of aihub's work;
- ``aihub serve gateway`` with every check off (public route, no rate limit, no access log);
- ``aihub serve gateway`` with the full pipeline (user JWT, blacklist + rate limit in one Lua
  call to Redis, access log, metrics), with 1 worker and with 2 (``--workers 2``).

Each row shows req/s, p50/p99, errors, the gateway's CPU per request, and req/s and p50 as
ratios to the floor of the same run; the targets are checked at the end. The machine is
shared, so the load average is printed with the figures: compare ratios, not absolutes.

    flock /tmp/aihub-bench.lock .venv/bin/python bench/gateway.py [--duration 10] [--redis URL]

Needs wrk and nginx (Debian: apt-get install wrk nginx-light) and a Redis server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from aihub.config import Settings
from aihub.kit.jwt import TokenCodec

PATH = "/api/users/me"
BODY = '{"id":"bench","email":"bench@example.com","roles":["user"]}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], headers: dict[str, str] | None = None) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode}")
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=1) as resp:
                return int(resp.status)
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer")


def start_nginx(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 '{BODY}'; }}
    }}
}}
"""
    )
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(workdir)], stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


# The stack's floor: aiohttp's server and client and nothing else (uvloop, keep-alive pool).
FLOOR = """
import sys, asyncio, aiohttp, uvloop
from aiohttp import web
UPSTREAM = sys.argv[2]
async def handle(request):
    data = await request.read() if request.body_exists else None
    async with request.app["session"].request(
        request.method, UPSTREAM + request.raw_path, headers=request.headers, data=data
    ) as upstream:
        body = await upstream.read()
        return web.Response(body=body, status=upstream.status,
                            headers={"Content-Type": upstream.headers.get("Content-Type", "")})
async def session(app):
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    yield
    await app["session"].close()
app = web.Application()
app.cleanup_ctx.append(session)
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=uvloop.new_event_loop())
"""


def start_floor(workdir: Path, port: int, upstream: str) -> subprocess.Popen[bytes]:
    script = workdir / "floor.py"
    script.write_text(FLOOR)
    proc = subprocess.Popen([sys.executable, str(script), str(port), upstream])
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


def start_gateway(
    workdir: Path, port: int, upstream: str, env_extra: dict[str, str], workers: int = 1
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIHUB_")}
    env.update(
        {
            "AIHUB_ENV": "development",
            "AIHUB_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/unused.db",
            "AIHUB_GATEWAY_PORT": str(port),
            "AIHUB_AUTH_URL": upstream,
            "AIHUB_CORE_URL": upstream,
            "AIHUB_MCP_URL": upstream,
            "AIHUB_LOG_LEVEL": "info",
            **env_extra,
        }
    )
    # Logs go to a file: the access log is part of the measured pipeline, and a failed start
    # is diagnosable.
    log = open(workdir / f"gateway-{port}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "aihub", "serve", "gateway", "--workers", str(workers)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
    except SystemExit:
        print((workdir / f"gateway-{port}.log").read_text()[-3000:])
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    cpu_us: float | None = None  # gateway CPU time per request (user + system)


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                pids += _tree(int(child))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (the workers): per-request CPU cost
    holds steadier than req/s on a machine where other work steals the cores."""
    total = 0.0
    for one in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, connections: int, duration: int, headers: dict[str, str]) -> Result:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    return Result(rps, _ms(*p50.groups()), _ms(*p99.groups()), errors, requests)  # type: ignore[union-attr]


def script_calls(redis: Redis) -> int:
    """EVALSHA + EVAL calls Redis has served: proof that the full pipeline ran the script."""
    stats = redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


TARGETS = (
    "nginx direct",
    "floor (aiohttp proxy)",
    "aihub checks off",
    "aihub full, 1 worker",
    "aihub full, 2 workers",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--redis", default=os.environ.get("AIHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/13"))
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per target, interleaved; the best is shown (a shared machine)"
    )
    parser.add_argument("--only", default="", help="targets to run, separated by | (default: all)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required")

    codec = TokenCodec.from_settings(Settings())
    token = codec.issue(sub="bench-user", role="user", ttl=3600)
    auth = {"Authorization": f"Bearer {token}"}
    redis = Redis.from_url(args.redis)
    redis.delete("rl:u:bench-user")
    scripts_before = script_calls(redis)
    wanted = [t for t in TARGETS if not args.only or any(w.strip() in t for w in args.only.split("|"))]

    with tempfile.TemporaryDirectory(prefix="aihub-bench-") as tmp:
        workdir = Path(tmp)
        routes = workdir / "routes.yaml"
        routes.write_text("routes:\n  - {prefix: /api/users, upstream: core, auth: public}\n")
        nginx_port = free_port()
        nginx = start_nginx(workdir, nginx_port)
        upstream = f"http://127.0.0.1:{nginx_port}"
        full_env = {
            "AIHUB_REDIS_URL": args.redis,
            # A limit far above what wrk can send: the Lua script runs in full on every
            # request (blacklist EXISTS + GCRA on Redis TIME) but never answers 429.
            "AIHUB_RATE_LIMIT_USER": "1000000000",
        }
        off_env = {
            "AIHUB_GATEWAY_ROUTES": str(routes),
            "AIHUB_RATE_LIMIT_ENABLED": "false",
            "AIHUB_GATEWAY_ACCESS_LOG": "false",
        }
        procs: list[subprocess.Popen[bytes]] = []
        runs: dict[str, tuple[str, dict[str, str], int | None]] = {"nginx direct": (upstream + PATH, {}, None)}
        try:
            for name in wanted:
                port = free_port()
                if name.startswith("floor"):
                    proc = start_floor(workdir, port, upstream)
                elif name == "aihub checks off":
                    proc = start_gateway(workdir, port, upstream, off_env)
                elif name.startswith("aihub full"):
                    proc = start_gateway(workdir, port, upstream, full_env, workers=2 if "2 workers" in name else 1)
                    assert wait_http(f"http://127.0.0.1:{port}{PATH}", proc, auth) == 200
                else:
                    continue
                procs.append(proc)
                runs[name] = (f"http://127.0.0.1:{port}{PATH}", auth if name.startswith("aihub full") else {}, proc.pid)
            print(
                f"wrk -t2, {args.duration}s per run, best of {args.repeat} interleaved runs per target; "
                "nginx 1 worker; uvloop everywhere"
            )
            print(f"{os.cpu_count()} CPUs shared by wrk, nginx and the proxy; load average before: {load_average()}\n")
            results: dict[tuple[str, int], Result] = {}
            for connections in (50, 10):
                print(f"-- {connections} connections")
                print(
                    f"{'target':<24}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'CPU us/req':>12}"
                    f"{'x floor':>9}{'p50 x fl':>10}"
                )
                for turn in range(args.repeat):
                    for name in runs:
                        url, headers, pid = runs[name]
                        before = cpu_seconds(pid) if pid else 0.0
                        result = wrk(url, connections, args.duration, headers)
                        if pid:
                            result.cpu_us = (cpu_seconds(pid) - before) / max(1, result.requests) * 1e6
                        best = results.get((name, connections))
                        if turn == 0 or best is None or result.rps > best.rps:
                            result.errors += best.errors if best is not None and turn else 0
                            results[(name, connections)] = result
                        elif best is not None:
                            best.errors += result.errors  # every run's errors count
                for name in runs:
                    result = results[(name, connections)]
                    floor = results.get(("floor (aiohttp proxy)", connections))
                    cpu = f"{result.cpu_us:>12.0f}" if result.cpu_us is not None else f"{'-':>12}"
                    ratio = f"{result.rps / floor.rps:>9.2f}{result.p50_ms / floor.p50_ms:>10.2f}" if floor else ""
                    print(
                        f"{name:<24}{result.rps:>9.0f}{result.p50_ms:>9.2f}{result.p99_ms:>9.2f}"
                        f"{result.errors:>8}{cpu}{ratio}"
                    )
                print(f"load average after: {load_average()}\n")
            report(results, script_calls(redis) - scripts_before)
        finally:
            for proc in procs:
                stop(proc)
            stop(nginx)
            redis.close()


def report(results: dict[tuple[str, int], Result], scripts: int) -> None:
    """The issue's targets, each against the floor of the same run."""
    floor50, floor10 = results.get(("floor (aiohttp proxy)", 50)), results.get(("floor (aiohttp proxy)", 10))
    checks = [
        ("aihub full, 1 worker", 50, "req/s", 0.7),
        ("aihub checks off", 50, "req/s", 0.9),
        ("aihub full, 1 worker", 10, "p50", 1.5),
    ]
    for name, connections, what, bound in checks:
        result, floor = results.get((name, connections)), floor50 if connections == 50 else floor10
        if result is None or floor is None:
            continue
        if what == "req/s":
            ratio, ok = result.rps / floor.rps, result.rps >= bound * floor.rps
            print(f"{name} @{connections}: {ratio:.2f} x floor req/s (target >= {bound}) {'OK' if ok else 'MISSED'}")
        else:
            ratio, ok = result.p50_ms / floor.p50_ms, result.p50_ms <= bound * floor.p50_ms
            print(f"{name} @{connections}: p50 {ratio:.2f} x floor's (target <= {bound}) {'OK' if ok else 'MISSED'}")
    one, two = results.get(("aihub full, 1 worker", 50)), results.get(("aihub full, 2 workers", 50))
    if one and two:
        print(f"2 workers / 1 worker @50: {two.rps / one.rps:.2f} (2 cores shared with wrk and nginx)")
    errors = sum(r.errors for r in results.values())
    print(f"errors in all runs: {errors} (target 0)")
    print(f"Lua script calls in Redis during the run: {scripts} (the full pipeline ran the script)")


if __name__ == "__main__":
    main()
