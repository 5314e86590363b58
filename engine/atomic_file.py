"""Atomic file writes: a crash or an error mid-write never leaves a half-written file.

The data goes to a hidden temporary file in the target's folder (so the final ``os.replace`` is a
rename within one file system, which is atomic), is flushed to disk, and only then replaces the
target. Until that rename, an existing file at the target is untouched. The temporary file is
created with ``open()``, not ``mkstemp``, so a new file gets the user's usual permissions (umask)
rather than 0600; a file written over keeps its own permissions, and a symbolic link at the target
keeps pointing where it did (the file it points to is the one replaced).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from typing import BinaryIO, Iterator

__all__ = ["atomic_writer", "write_atomic"]


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file handle whose contents replace ``path`` when the block ends without error.

    Raises:
        OSError: the folder is missing or not writable, the disk is full...; its message names
            ``path`` (not the temporary file).
    """
    named = os.fspath(path)
    target = os.path.realpath(named)  # (through a symbolic link: the link stays, its file is replaced)
    folder = os.path.dirname(target)
    tmp = os.path.join(folder, f".{os.path.basename(target)}.{secrets.token_hex(6)}.tmp")
    try:
        try:
            with open(tmp, "xb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileNotFoundError):  # (a new file: the umask's permissions)
                shutil.copymode(target, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write {named}: {exc.strerror or exc}") from exc
    except BaseException:
        # Never created, or already renamed; or its folder is not one (a file named as the folder):
        # the error that matters is the one being raised, not this cleanup's.
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path) as handle:
        handle.write(data)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); harmless where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
