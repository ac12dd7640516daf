"""Who imports whom among the project's packages, from the source alone (no import is executed).

    python scripts/import_graph.py             # the package graph, one "a -> b, c" line per package
    python scripts/import_graph.py --check     # exit 1 unless the routing core's boundaries hold

The boundaries: router.core (the routing policy and the fleet state) imports nothing from aiohttp,
discovery or bench, nor from the router's edges (only router.core itself, allocator and
router.errors); bench.sim imports the core (its lora-router strategy runs the router's own decisions).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("router", "allocator", "discovery", "bench")
CORE = "router.core"
CORE_MAY_IMPORT = ("router.core", "router.errors", "allocator")
CORE_MUST_NOT = ("aiohttp", "discovery", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, absolute, at any depth of the file (function-level imports count)."""
    package = module_name(path).rpartition(".")[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                yield f"{base}.{node.module}" if node.module else base
            elif node.module:
                yield node.module


def graph() -> dict[str, set[str]]:
    """module -> the modules it imports."""
    return {module_name(p): set(imports(p)) for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(edges.items()):
        if not within(module, (CORE,)):
            continue
        for target in sorted(targets):
            if within(target, CORE_MUST_NOT) or (within(target, PACKAGES) and not within(target, CORE_MAY_IMPORT)):
                found.append(f"{module} imports {target}")
    sim = {t for m, ts in edges.items() if within(m, ("bench.sim",)) for t in ts}
    if not any(within(t, (CORE,)) for t in sim):
        found.append("bench.sim does not import router.core")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the core's boundaries are crossed")
    args = parser.parse_args()
    edges = graph()
    if args.check:
        problems = violations(edges)
        for problem in problems:
            print(problem)
        print("router.core boundaries hold" if not problems else f"{len(problems)} boundary violation(s)")
        return 1 if problems else 0
    for module, targets in sorted(edges.items()):
        inside = sorted(t for t in targets if within(t, PACKAGES))
        if inside:
            print(f"{module} -> {', '.join(inside)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
