"""Atomic writes: the target is replaced whole or not at all, keeps its permissions, and a
symbolic link at it keeps pointing where it did."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.atomic_file import write_atomic


def test_a_file_written_over_keeps_its_permissions_and_a_new_one_gets_the_umasks(tmp_path: Path) -> None:
    old = tmp_path / "run.glassbox"
    old.write_bytes(b"before")
    old.chmod(0o640)
    write_atomic(old, b"after")
    assert old.read_bytes() == b"after" and stat.S_IMODE(old.stat().st_mode) == 0o640
    mask = os.umask(0o022)
    os.umask(mask)
    new = tmp_path / "new.glassbox"
    write_atomic(new, b"x")
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.glassbox", "run.glassbox"]  # (no temporary left)


def test_a_symbolic_link_at_the_target_still_points_to_its_file_which_is_replaced(tmp_path: Path) -> None:
    real = tmp_path / "kept" / "run.glassbox"
    real.parent.mkdir()
    real.write_bytes(b"before")
    link = tmp_path / "latest.glassbox"
    link.symlink_to(real)
    write_atomic(link, b"after")
    assert link.is_symlink() and Path(os.readlink(link)) == real
    assert real.read_bytes() == b"after" == link.read_bytes()
    assert sorted(p.name for p in real.parent.iterdir()) == ["run.glassbox"]


def test_an_error_names_the_path_asked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cannot write .*missing/x.csv: No such file or directory"):
        write_atomic(tmp_path / "missing" / "x.csv", b"x")
