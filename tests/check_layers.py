"""Import-layer check (ARCHITECTURE.md): dependencies flow one way.

- drivers/ imports nothing of ours;
- edge/ imports drivers (ABCs) but never sync/ or kiosk_ui/, except the composition root
  (edge/app.py, edge/cli.py), which wires every package together;
- sync/ and kiosk_ui/ call edge's services, never drivers/; kiosk_ui/ never imports sync/.
Run as a script (exit 1 on a violation) or through pytest.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"edge", "drivers", "sync", "kiosk_ui"}
FORBIDDEN = {
    "drivers": {"edge", "sync", "kiosk_ui"},
    "edge": {"sync", "kiosk_ui"},
    "sync": {"drivers", "kiosk_ui"},
    "kiosk_ui": {"drivers", "sync"},
}
COMPOSITION_ROOT = {
    Path("edge/app.py"),
    Path("edge/cli.py"),
    Path("edge/cli_provision.py"),
    Path("edge/demo.py"),
    Path("edge/cloud.py"),
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & OURS


def violations() -> list[str]:
    found = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel in COMPOSITION_ROOT:
                continue
            for name in sorted(imported_packages(path) & banned):
                found.append(f"{rel}: imports {name} (not allowed from {package}/)")
    return found


def test_import_layers() -> None:
    assert violations() == []


if __name__ == "__main__":
    problems = violations()
    for p in problems:
        print(p)
    print(f"import layers: {'ok' if not problems else f'{len(problems)} violation(s)'}")
    sys.exit(1 if problems else 0)
