"""Read mail from files for ``helpdeskd ingest``: single .eml files, mbox files and Maildirs."""

from __future__ import annotations

import mailbox
import os
from collections.abc import Iterator
from pathlib import Path

from helpdeskd.errors import UserError
from helpdeskd.triage.received import Incoming


def _is_maildir(path: Path) -> bool:
    return path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir()


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def read_sources(paths: list[Path]) -> Iterator[Incoming]:
    """Yield every message under PATHS; the key is (file path, position in the file)."""
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such file or directory")
        yield from _read(path.resolve())


def _read(path: Path) -> Iterator[Incoming]:
    if _is_maildir(path):
        box = mailbox.Maildir(path, create=False)
        for key in sorted(box.keys()):
            with box.get_file(key) as handle:
                raw = handle.read()
            yield Incoming(source=f"maildir:{path}/{key}", uid=1, raw=raw, size=len(raw))
        return
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if child.name.startswith("."):
                continue
            yield from _read(child)
        return
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: not readable")
    if _is_mbox(path):
        # mailbox.mbox keeps the "From " line out of the message and un-escapes ">From ".
        mbox = mailbox.mbox(path, create=False)
        try:
            for index, message in enumerate(mbox, 1):
                raw = message.as_bytes()
                yield Incoming(source=f"file:{path}", uid=index, raw=raw, size=len(raw))
        finally:
            mbox.close()  # it holds the file open (read-write where it may) until then
        return
    raw = path.read_bytes()
    yield Incoming(source=f"file:{path}", uid=1, raw=raw, size=len(raw))
