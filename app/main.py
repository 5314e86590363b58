"""The `glassbox` command: the desktop app by default, `glassbox report` headless.

Nothing heavy is imported at module level: `glassbox report` must never load Qt, and the GUI
must show its window before torch has finished loading.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["main"]

VERSION = "0.1.0"


def _gui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glassbox",
        description="See inside a neural network while it trains. "
                    "Run `glassbox report --help` for the headless report.")
    parser.add_argument("--version", action="version", version=f"glassbox {VERSION}")
    parser.add_argument("run", nargs="?", metavar="RUN.glassbox",
                        help="a run file to open (saved with File ▸ Save run or `glassbox report --save`)")
    parser.add_argument("--scenario", metavar="NAME", help="built-in scenario to open (default: spirals-mlp)")
    parser.add_argument("--model", metavar="FILE.py:FUNC", help="open your own model instead")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--smoke-test", type=int, metavar="N",
                        help="open every view, train N steps at full speed, step through one step's "
                             "phases, print one JSON line of timings and exit")
    parser.add_argument("--paused", action="store_true", help="open without starting training")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "report":
        from engine.report import main as report_main

        return report_main(args[1:])
    options = _gui_parser().parse_args(args)
    from app.application import run_app

    return run_app(options)


if __name__ == "__main__":
    sys.exit(main())
