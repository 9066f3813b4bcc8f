"""Facts about the two servers' code, for the claims about simplicity and shared state.

The one place that counts the servers' lines: ``make compare`` prints
:func:`source_lines` beside its simplicity claim, ``make claims`` the whole
:func:`facts`.

Not measurements of a run: counted from the source of ``threaded_server/``
and ``async_server/`` (every ``.py`` file of each package; both run on the
same ``common/`` core, which is not counted), with :mod:`ast`, so the report
can print them next to each verdict and label them as what they are.

- ``lines``: non-blank lines (and ``files``: per file);
- ``primitives``: calls of a concurrency primitive, by name: functions and
  classes of ``threading``, ``asyncio``, ``select``, ``selectors``, ``queue``
  and ``concurrent.futures`` (``threading.Lock()``, ``asyncio.create_task()``,
  ...; not type hints, constants or exceptions), plus every ``await``,
  ``async for`` and ``async with``;
- ``locks``: lock objects the code creates (``threading.Lock``/``RLock``,
  ``asyncio.Lock``), with the file and attribute of each;
- ``lock_sections``: ``with``/``async with`` blocks on a lock (an expression
  whose name ends in ``lock``): the critical sections a reader must check;
- ``lock_order_rules``: lock-order rules the code documents, one per
  "then" in a sentence starting "Locks, in the only order they are ever taken:".
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

PACKAGES = {"threaded": "threaded_server", "async": "async_server"}
CONCURRENCY_MODULES = frozenset({"threading", "asyncio", "select", "selectors", "queue"})
LOCK_TYPES = frozenset({"threading.Lock", "threading.RLock", "asyncio.Lock"})
ORDER_RULE = re.compile(r"Locks, in the only order they are ever taken:(.*?)\.\s", re.DOTALL)


def facts(root: Path) -> dict:
    """The code facts of each server package under ``root``."""
    return {kind: package_facts(root / package) for kind, package in PACKAGES.items()}


def source_lines(root: Path) -> dict[str, int]:
    """Non-blank lines of Python in each server package under ``root``, by kind."""
    return {
        kind: sum(nonblank_lines(path.read_text()) for path in (root / package).glob("*.py"))
        for kind, package in PACKAGES.items()
    }


def nonblank_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def package_facts(package: Path) -> dict:
    files: dict[str, int] = {}
    primitives: Counter[str] = Counter()
    locks: list[str] = []
    rules: list[str] = []
    sections = 0
    for path in sorted(package.glob("*.py")):
        text = path.read_text()
        files[path.name] = nonblank_lines(text)
        tree = ast.parse(text)
        for node in ast.walk(tree):
            name = _qualified(node.func) if isinstance(node, ast.Call) else None
            if name:
                primitives[name] += 1
            elif isinstance(node, ast.Await):
                primitives["await"] += 1
            elif isinstance(node, ast.AsyncFor):
                primitives["async for"] += 1
            elif isinstance(node, ast.AsyncWith):
                primitives["async with"] += 1
            if isinstance(node, ast.With | ast.AsyncWith):
                sections += sum(
                    1 for item in node.items
                    if ast.unparse(item.context_expr).lower().endswith("lock")
                )  # fmt: skip
            created = isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
            if created and _qualified(node.value.func) in LOCK_TYPES:
                target = ast.unparse(node.targets[0])
                locks.append(f"{path.name}: {target} ({_qualified(node.value.func)})")
        for match in ORDER_RULE.finditer(text):
            sentence = " ".join(match.group(1).split())
            rules += [f"{path.name}: {sentence}"] * sentence.count(", then")
    return {
        "lines": sum(files.values()),
        "files": files,
        "primitive_uses": sum(primitives.values()),
        "primitives": dict(primitives.most_common()),
        "locks": locks,
        "lock_sections": sections,
        "lock_order_rules": rules,
    }


def _qualified(node: ast.AST) -> str | None:
    """``module.name`` for an attribute of a concurrency module (``concurrent.futures`` too)."""
    if not isinstance(node, ast.Attribute):
        return None
    base = node.value
    if isinstance(base, ast.Name) and base.id in CONCURRENCY_MODULES:
        return f"{base.id}.{node.attr}"
    if (
        isinstance(base, ast.Attribute)
        and isinstance(base.value, ast.Name)
        and f"{base.value.id}.{base.attr}" == "concurrent.futures"
    ):
        return f"concurrent.futures.{node.attr}"
    return None
