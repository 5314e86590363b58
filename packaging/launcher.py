"""Entry script for the PyInstaller bundle: the same `glassbox` command as the console script."""
from __future__ import annotations

import multiprocessing
import sys

if __name__ == "__main__":
    # A user's DataLoader with num_workers > 0 re-executes the frozen binary; let it do the worker's job.
    multiprocessing.freeze_support()
    from app.main import main

    sys.exit(main())
