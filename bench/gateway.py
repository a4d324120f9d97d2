"""Gateway throughput and added latency, against nginx serving a small JSON body.

In one run, with wrk: the upstream hit directly, the gateway with every check off (public
route, no rate limit, no access log), and the gateway with the full pipeline (JWT check,
blacklist + rate limit in one Lua round trip to Redis, access log, metrics). Each gateway is a
real ``aihub serve gateway`` process (one process, uvloop). Figures are printed next to the
direct baseline of the same run; the machine is shared, so compare ratios, not absolutes.

    .venv/bin/python bench/gateway.py [--duration 10] [--redis redis://127.0.0.1:6379/13]

Needs wrk and nginx (Debian: apt-get install wrk nginx-light) and a Redis server.
"""

from __future__ import annotations

import argparse
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


def start_gateway(workdir: Path, port: int, upstream: str, env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
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
        [sys.executable, "-m", "aihub", "serve", "gateway"], env=env, stdout=log, stderr=subprocess.STDOUT
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process: per-request CPU cost holds steadier than req/s on a
    machine where other work steals the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, connections: int, duration: int, headers: dict[str, str]) -> Result:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--redis", default=os.environ.get("AIHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/13"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required")

    codec = TokenCodec.from_settings(Settings())
    token = codec.issue(sub="bench-user", role="user", ttl=3600)
    auth = {"Authorization": f"Bearer {token}"}
    redis = Redis.from_url(args.redis)
    redis.delete("rl:u:bench-user")
    scripts_before = script_calls(redis)

    with tempfile.TemporaryDirectory(prefix="aihub-bench-") as tmp:
        workdir = Path(tmp)
        routes = workdir / "routes.yaml"
        routes.write_text("routes:\n  - {prefix: /api/users, upstream: core, auth: public}\n")
        nginx_port, off_port, full_port = free_port(), free_port(), free_port()
        nginx = start_nginx(workdir, nginx_port)
        upstream = f"http://127.0.0.1:{nginx_port}"
        gateways = []
        try:
            off = start_gateway(
                workdir,
                off_port,
                upstream,
                {
                    "AIHUB_GATEWAY_ROUTES": str(routes),
                    "AIHUB_RATE_LIMIT_ENABLED": "false",
                    "AIHUB_GATEWAY_ACCESS_LOG": "false",
                },
            )
            gateways.append(off)
            full = start_gateway(
                workdir,
                full_port,
                upstream,
                {
                    "AIHUB_REDIS_URL": args.redis,
                    # A limit far above what wrk can send: the Lua script runs in full on every
                    # request (blacklist EXISTS + GCRA on Redis TIME) but never answers 429.
                    "AIHUB_RATE_LIMIT_USER": "1000000000",
                },
            )
            gateways.append(full)
            assert wait_http(f"http://127.0.0.1:{full_port}{PATH}", full, auth) == 200

            runs = {
                "direct (nginx)": (f"{upstream}{PATH}", {}, None),
                "gateway, checks off": (f"http://127.0.0.1:{off_port}{PATH}", {}, off.pid),
                "gateway, full pipeline": (f"http://127.0.0.1:{full_port}{PATH}", auth, full.pid),
            }
            print(f"wrk -t1, {args.duration}s per run; nginx 1 worker; one gateway process each (uvloop)")
            print("shared 2-core machine: wrk, nginx and the gateway compete for the same CPUs\n")
            results: dict[tuple[str, int], Result] = {}
            for connections in (50, 10):
                print(f"-- {connections} connections")
                print(f"{'target':<26}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'CPU us/req':>12}")
                for name, (url, headers, pid) in runs.items():
                    before = cpu_seconds(pid) if pid else 0.0
                    result = wrk(url, connections, args.duration, headers)
                    if pid:
                        result.cpu_us = (cpu_seconds(pid) - before) / max(1, result.requests) * 1e6
                    results[(name, connections)] = result
                    cpu = f"{result.cpu_us:>12.0f}" if result.cpu_us is not None else f"{'-':>12}"
                    print(
                        f"{name:<26}{result.rps:>10.0f}{result.p50_ms:>10.2f}{result.p99_ms:>10.2f}"
                        f"{result.errors:>8}{cpu}"
                    )
                print()
            full50 = results[("gateway, full pipeline", 50)]
            off50 = results[("gateway, checks off", 50)]
            added = results[("gateway, full pipeline", 10)].p50_ms - results[("direct (nginx)", 10)].p50_ms
            scripts = script_calls(redis) - scripts_before
            print(
                f"full pipeline @50: {full50.rps:.0f} req/s (target >= 3000), p99 {full50.p99_ms:.2f} ms (target <= 25)"
            )
            print(f"full / checks-off @50: {full50.rps / off50.rps:.0%} (target >= 50%)")
            if full50.cpu_us and off50.cpu_us:
                print(
                    f"CPU per request @50: checks off {off50.cpu_us:.0f} us, full {full50.cpu_us:.0f} us "
                    f"-> one free core could serve ~{1e6 / full50.cpu_us:.0f} req/s full, "
                    f"~{1e6 / off50.cpu_us:.0f} req/s checks off ({off50.cpu_us / full50.cpu_us:.0%})"
                )
            print(f"added p50 latency @10 (full - direct): {added:.2f} ms (target <= 1 ms)")
            full_requests = sum(results[("gateway, full pipeline", c)].rps * args.duration for c in (50, 10))
            print(f"Lua script calls in Redis during the run: {scripts} (~{full_requests:.0f} full-pipeline requests)")
        finally:
            for proc in gateways:
                stop(proc)
            stop(nginx)
            redis.close()


if __name__ == "__main__":
    main()
