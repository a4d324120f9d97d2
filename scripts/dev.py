#!/usr/bin/env python3
"""Set up and run aihub with nothing but Python 3.11+.

    python3 scripts/dev.py run     # create .venv if needed, install, start every service (embedded)
    python3 scripts/dev.py test    # create .venv if needed, install with test tools, run the suite
    python3 scripts/dev.py lint    # ruff, ruff format --check, mypy and the import layers (what CI runs)

The virtual environment is rebuilt only when pyproject.toml changes (a stamp holds its hash).
Extra arguments go to the command: `dev.py run core`, `dev.py test -k users`; `dev.py lint PATH…`
limits the ruff steps to those paths (mypy always checks src, tests, bench and scripts).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".aihub-install-stamp"
# What `lint` checks with ruff (lint rules and formatting) unless paths are given.
LINT_PATHS = ("src", "tests", "bench", "scripts")


def _fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_env() -> None:
    # This script runs under whatever python3 the machine has, so the check is not dead code.
    if sys.version_info < (3, 11):  # noqa: UP036
        sys.exit(f"aihub needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print("creating .venv ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, upgrade_deps=False).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    print("installing aihub and its dependencies into .venv ...", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "-e", f"{ROOT}[dev]"], check=True)  # noqa: S603 - our own venv's pip
    STAMP.write_text(_fingerprint())


def lint(paths: list[str]) -> int:
    """Every check runs even when an earlier one fails, so one run shows all the problems."""
    targets = paths or list(LINT_PATHS)
    steps = [
        ("ruff check", [str(BIN / "ruff"), "check", *targets]),
        ("ruff format --check", [str(BIN / "ruff"), "format", "--check", *targets]),
        ("mypy", [str(BIN / "mypy")]),
        # Tests, benches and scripts are not packages of their own: their folders are the bases.
        ("mypy tests bench scripts", [str(BIN / "mypy"), "--explicit-package-bases", "tests", "bench", "scripts"]),
        # Domains import downward only, and no two domains import each other (issue 14 §2).
        ("import layers", [str(BIN / "python"), str(ROOT / "scripts" / "imports.py")]),
    ]
    failed = []
    for name, command in steps:
        print(f"--- {name}", file=sys.stderr, flush=True)
        if subprocess.call(command, cwd=ROOT) != 0:  # noqa: S603 - fixed commands from our own venv
            failed.append(name)
    if failed:
        print(f"lint failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test", "lint"):
        sys.exit(__doc__)
    ensure_env()
    verb, extra = sys.argv[1], sys.argv[2:]
    if verb == "lint":
        sys.exit(lint(extra))
    if verb == "run":
        command = [str(BIN / "aihub"), "serve", *extra]
    else:
        command = [str(BIN / "python"), "-m", "pytest", *extra]
    os.chdir(ROOT) if verb == "test" else None
    if os.name == "nt":  # no exec on Windows: run and pass the exit code on
        sys.exit(subprocess.call(command))  # noqa: S603 - our own venv's tools
    os.execv(command[0], command)  # noqa: S606 - replaces this process with the venv's tool


if __name__ == "__main__":
    main()
