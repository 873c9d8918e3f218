"""Keep bytes on disk, content-addressed and durable (oversize mail)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def spool(folder: Path, data: bytes) -> Path:
    """Write DATA to FOLDER/<sha256>.eml durably (file and directory fsynced); return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{hashlib.sha256(data).hexdigest()}.eml"
    if final.exists():
        return final
    fd, partial = tempfile.mkstemp(dir=folder, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, final)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    sync_directory(folder)
    return final


def sync_directory(folder: Path) -> None:
    """fsync FOLDER itself, so that a rename into it survives a crash."""
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
