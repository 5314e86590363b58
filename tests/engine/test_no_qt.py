"""The engine never imports Qt, pyqtgraph, app or widgets: it runs on display-less servers."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import engine


def test_importing_every_engine_module_loads_no_qt() -> None:
    modules = sorted(m.name for m in pkgutil.walk_packages(engine.__path__, "engine."))
    assert "engine.probe" in modules and "engine.report" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'app', 'widgets'))\n"
        "print('BAD', bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "BAD []"


def test_no_engine_source_mentions_qt_imports() -> None:
    root = Path(engine.__file__).parent
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                first = stripped.split()[1].split(".")[0]
                assert first not in ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "app", "widgets"), f"{path}: {line}"
