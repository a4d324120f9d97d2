#!/usr/bin/env python3
"""Set up and run aihub with nothing but Python 3.11+.

    python3 scripts/dev.py run     # create .venv if needed, install, start every service (embedded)
    python3 scripts/dev.py test    # create .venv if needed, install with test tools, run the suite

The virtual environment is rebuilt only when pyproject.toml changes (a stamp holds its hash).
Extra arguments go to the command: `dev.py run core`, `dev.py test -k users`.
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


def _fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_env() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"aihub needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print("creating .venv ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, upgrade_deps=False).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    print("installing aihub and its dependencies into .venv ...", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(_fingerprint())


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test"):
        sys.exit(__doc__)
    ensure_env()
    verb, extra = sys.argv[1], sys.argv[2:]
    if verb == "run":
        command = [str(BIN / "aihub"), "serve", *extra]
    else:
        command = [str(BIN / "python"), "-m", "pytest", *extra]
    os.chdir(ROOT) if verb == "test" else None
    if os.name == "nt":  # no exec on Windows: run and pass the exit code on
        sys.exit(subprocess.call(command))
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
