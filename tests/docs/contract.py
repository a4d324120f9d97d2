"""Read docs/api.md by its two conventions (see "How this page is kept true" in that file).

- An operation is a table row whose first cell is an HTTP method and whose second cell is a
  path in backticks: ``| GET | `/api/users/{user_id}` | … |``.
- An error code is a table row, under the heading ``## Error codes``, whose first cell is an
  UPPER_SNAKE code in backticks; its second cell holds the HTTP status(es), ``job`` or ``4xx``.

Cells are split on ``|``; the page writes alternatives with ``｜`` so a cell never holds one.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_PATH_CELL = re.compile(r"^`(/[^`\s]*)`$")
_CODE_CELL = re.compile(r"^`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*)`$")
_CITED = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|UNAUTHORIZED|FORBIDDEN|CONFLICT)`")
_PARAM = re.compile(r"\{[^}/]+\}")

Operation = tuple[str, str]  # (METHOD, path with parameters normalised to {})


def normalise(path: str) -> str:
    """Path parameters compare by position, not name (``{id}`` and ``{user_id}`` are one)."""
    return _PARAM.sub("{}", path)


def parse_status(cell: str) -> frozenset[int | None]:
    """``409, job`` → {409, None}; ``job`` and ``4xx`` mean no single HTTP status (None)."""
    statuses: set[int | None] = {int(n) for n in re.findall(r"\b[1-5]\d\d\b", cell)}
    if re.search(r"\bjob\b|\b4xx\b", cell):
        statuses.add(None)
    return frozenset(statuses)


@dataclass
class ApiDoc:
    operations: dict[Operation, int] = field(default_factory=dict)  # → line number
    duplicates: list[str] = field(default_factory=list)
    codes: dict[str, frozenset[int | None]] = field(default_factory=dict)
    # Codes named in an operation row's cells, with the line that names them.
    cited: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))


def _cells(line: str) -> list[str] | None:
    stripped = line.strip()
    if not (stripped.startswith("|") and stripped.endswith("|")):
        return None
    return [cell.strip() for cell in stripped[1:-1].split("|")]


def parse(text: str) -> ApiDoc:
    doc = ApiDoc()
    section = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("## "):
            section = line[3:].strip().lower()
            continue
        cells = _cells(line)
        if not cells or len(cells) < 2:
            continue
        path = _PATH_CELL.match(cells[1])
        if cells[0] in METHODS and path:
            op = (cells[0], normalise(path.group(1)))
            if op in doc.operations:
                doc.duplicates.append(f"{op[0]} {path.group(1)} (lines {doc.operations[op]} and {number})")
            doc.operations.setdefault(op, number)
            for cell in cells[2:]:
                for code in _CITED.findall(cell):
                    if not code.startswith("AIHUB_"):  # settings are named in backticks too
                        doc.cited[code].append(number)
            continue
        code = _CODE_CELL.match(cells[0])
        if section == "error codes" and code:
            if code.group(1) in doc.codes:
                doc.duplicates.append(f"error code {code.group(1)} (line {number})")
            doc.codes[code.group(1)] = parse_status(cells[1])
    return doc


def load() -> ApiDoc:
    return parse(API_MD.read_text(encoding="utf-8"))
