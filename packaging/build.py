"""Build the one-folder bundle: dist/glassbox/ (run with the venv's Python, any OS).

    python packaging/build.py [--clean]

Needs PyInstaller (`pip install -e ".[package]"`). Prints the bundle's size when done.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bundle_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="empty PyInstaller's cache first")
    options = parser.parse_args(argv)
    import PyInstaller.__main__

    args = [str(ROOT / "packaging" / "glassbox.spec"), "--noconfirm", "--log-level=WARN",
            "--distpath", str(ROOT / "dist"), "--workpath", str(ROOT / "build")]
    if options.clean:
        args.append("--clean")
    PyInstaller.__main__.run(args)
    bundle = ROOT / "dist" / "glassbox"
    print(f"built {bundle} ({bundle_size_mb(bundle):.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
