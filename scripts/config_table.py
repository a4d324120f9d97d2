#!/usr/bin/env python3
"""The README's configuration table, generated from the Settings class.

    .venv/bin/python scripts/config_table.py            # print the markdown table
    .venv/bin/python scripts/config_table.py --check    # exit 1 when README.md's table differs
    .venv/bin/python scripts/config_table.py --write    # rewrite README.md's table in place

Each row comes from one field of ``aihub.config.Settings``: the variable name (prefix
``AIHUB_``), its default, and the field's ``description``. A field without a description is
an error, so a new setting cannot land undocumented. The table sits in README.md between the
two marker comments below; everything else in the README is left alone.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START = "<!-- config-table:start (scripts/config_table.py --write; edit src/aihub/config.py) -->"
END = "<!-- config-table:end -->"
PREFIX = "AIHUB_"


def _settings_class() -> Any:
    try:
        from aihub.config import Settings
    except ImportError:  # run with the system python from a fresh clone: use the source tree
        sys.path.insert(0, str(ROOT / "src"))
        from aihub.config import Settings
    return Settings


def render_default(value: Any, doc_default: str | None = None) -> str:
    """A default as an operator types it in an environment file."""
    if doc_default is not None:
        return doc_default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value == "":
        return "empty"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows() -> list[tuple[str, str, str]]:
    settings = _settings_class()
    result = []
    for name, field in settings.model_fields.items():
        if not field.description:
            raise SystemExit(f"setting {name} has no description: add Field(description=...) in src/aihub/config.py")
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        doc_default = extra.get("doc_default")
        default = render_default(field.default, str(doc_default) if doc_default is not None else None)
        result.append((f"`{PREFIX}{name.upper()}`", default, field.description))
    return result


def render() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| {_cell(name)} | {_cell(default)} | {_cell(meaning)} |" for name, default, meaning in rows()]
    return "\n".join(lines) + "\n"


def readme_table(text: str) -> str:
    """The table currently between the markers of README.md."""
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no configuration table markers ({START} … {END})")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def with_table(text: str, table: str) -> str:
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{START}\n{table}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when README.md's table is out of date")
    mode.add_argument("--write", action="store_true", help="rewrite README.md's table")
    args = parser.parse_args(argv)
    table = render()
    if not (args.check or args.write):
        sys.stdout.write(table)
        return 0
    text = README.read_text(encoding="utf-8")
    current = readme_table(text)
    if args.write:
        if current != table:
            README.write_text(with_table(text, table), encoding="utf-8")
        return 0
    if current == table:
        return 0
    diff = difflib.unified_diff(current.splitlines(), table.splitlines(), "README.md", "Settings", lineterm="", n=0)
    sys.stderr.write("README.md's configuration table differs from src/aihub/config.py:\n")
    sys.stderr.write("\n".join(diff) + "\n")
    sys.stderr.write("run: .venv/bin/python scripts/config_table.py --write\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
