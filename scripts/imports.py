#!/usr/bin/env python3
"""The import graph of src/aihub between domains: every arrow, the cycles, the upward arrows.

    python3 scripts/imports.py            # exit 1 on a cycle or an upward arrow, naming them
    python3 scripts/imports.py --graph    # also print every arrow of the domain graph
    python3 scripts/imports.py --arrows   # ... and every module import behind each arrow

A domain is a folder of its own (``aihub.core.credits``, ``aihub.auth.identity``, ``aihub.kit``)
or a top-level module (``aihub.config``). Layers, lowest first: a domain may import its own
layer and the ones below, never one above. Imports inside functions count too (they are
still dependencies); ``if TYPE_CHECKING:`` imports do not.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
# Lowest first. A domain not named here sits with its parent's layer.
LAYERS: list[set[str]] = [
    {"aihub", "aihub.py"},  # the package's own __init__ (version) and nothing else
    {"aihub.config", "aihub.keys"},
    {"aihub.kit"},
    {"aihub.models"},
    {
        "aihub.core.audit",
        "aihub.core.rbac",
        "aihub.core.webhooks",
        "aihub.core.sessions",
    },
    {"aihub.core.apikeys", "aihub.core.users", "aihub.core.credits", "aihub.core.pricing"},
    {"aihub.core.notifications", "aihub.core.usage"},
    {"aihub.core.ledger"},  # the engine every money move goes through, and those moves' HTTP edge
    {
        "aihub.core.promos",
        "aihub.core.payments",
        "aihub.core.sora",
        "aihub.core.authorizations",
        "aihub.core.reports",
    },
    {"aihub.core", "aihub.auth", "aihub.console", "aihub.gateway"},
    {"aihub.auth.identity"},  # email verification, password reset, Google sign-in: on auth's sessions
    {"aihub.auth.app", "aihub.core.jobs"},
    {"aihub.ops", "aihub.migrations"},
    {"aihub.cli", "aihub.__main__"},
]


# The modules that put a service together from its domains (its FastAPI app, the jobs its
# worker runs): above every
# domain they compose, as ``aihub.core`` (core's app, admin and jobs) is above core's domains.
COMPOSERS = {"aihub.auth.app", "aihub.core.jobs"}


def domain_of(module: str) -> str:
    if module in COMPOSERS:
        return module
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] in ("core", "auth") and (ROOT / "/".join(parts[:3])).is_dir():
        return ".".join(parts[:3])
    if len(parts) >= 2:
        return ".".join(parts[:2])
    return module


def layer_of(domain: str) -> int:
    for index, layer in enumerate(LAYERS):
        if domain in layer:
            return index
    raise SystemExit(f"scripts/imports.py: domain {domain} has no layer; add it to LAYERS")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("aihub"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("aihub"):
                # `from aihub.core import deps` names a module; `from aihub.kit.db import Tx` a symbol.
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    as_path = ROOT / candidate.replace(".", "/")
                    found.add(candidate if as_path.is_dir() or as_path.with_suffix(".py").exists() else base)
    return found


def graph() -> dict[tuple[str, str], list[tuple[str, str]]]:
    arrows: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for path in sorted((ROOT / "aihub").rglob("*.py")):
        module = module_name(path)
        for target in imports_of(path, module):
            a, b = domain_of(module), domain_of(target)
            if a != b:
                arrows[(a, b)].append((module, target))
    return arrows


def cycles(arrows: dict[tuple[str, str], list[tuple[str, str]]]) -> list[list[str]]:
    """Strongly connected components of more than one domain (Tarjan)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for a, b in arrows:
        edges[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(set(edges) | {b for targets in edges.values() for b in targets}):
        if node not in index:
            visit(node)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", action="store_true", help="print every arrow between domains")
    parser.add_argument("--arrows", action="store_true", help="with each arrow, the module imports behind it")
    args = parser.parse_args()
    arrows = graph()
    upward = [(a, b) for a, b in arrows if layer_of(b) > layer_of(a)]
    loops = cycles(arrows)
    print(f"{len(arrows)} arrows between {len({d for pair in arrows for d in pair})} domains")
    for (a, b), behind in sorted(arrows.items()):
        mark = "  UPWARD" if (a, b) in upward else ""
        if not (mark or args.graph or args.arrows):
            continue
        print(f"  {a} -> {b}{mark}")
        if args.arrows or mark:
            for module, target in sorted(set(behind)):
                print(f"      {module} imports {target}")
    for loop in loops:
        print("cycle: " + " <-> ".join(loop))
    print(f"upward arrows: {len(upward)}, cycles: {len(loops)}")
    return 1 if upward or loops else 0


if __name__ == "__main__":
    sys.exit(main())
