"""`python tools/code_sizes.py [--top N]`: the largest modules and functions of clic/ and harness/, as a table.

Issue 28 asks for modules of at most ~400 lines and functions of at most ~60; this prints the largest of each
so a change can show its before and after (tools/code_sizes_before.md and code_sizes_after.md: the tidy).
``tests/harness/test_code_sizes.py`` keeps the limits.
Counts physical lines (a module's whole file; a function from its ``def`` to its last line, decorators excluded).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("clic", "harness")


def module_sizes() -> list[tuple[int, str]]:
    """(lines, path) for every module of the packages."""
    sizes = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            sizes.append((len(path.read_text().splitlines()), str(path.relative_to(ROOT))))
    return sizes


def function_sizes() -> list[tuple[int, str]]:
    """(lines, path:qualified name) for every function and method of the packages."""
    sizes = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            sizes.extend(_functions(tree, str(path.relative_to(ROOT)), ""))
    return sizes


def _functions(node: ast.AST, path: str, prefix: str) -> list[tuple[int, str]]:
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                found.append((child.end_lineno - child.lineno + 1, f"{path}:{name}"))
            found.extend(_functions(child, path, name + "."))
    return found


def table(title: str, rows: list[tuple[int, str]], top: int) -> str:
    lines = [f"| {title} | lines |", "| --- | ---: |"]
    lines += [f"| `{name}` | {count} |" for count, name in sorted(rows, reverse=True)[:top]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10, help="rows per table (default 10)")
    args = parser.parse_args()
    modules, functions = module_sizes(), function_sizes()
    print(table("module", modules, args.top))
    print()
    print(table("function", functions, args.top))
    print()
    print(
        f"modules over 400 lines: {sum(n > 400 for n, _ in modules)}; "
        f"functions over 60 lines: {sum(n > 60 for n, _ in functions)}"
    )


if __name__ == "__main__":
    main()
