"""Attachments: Outlook's TNEF (winmail.dat) unpacked, and bytes kept content-addressed."""

from __future__ import annotations

import hashlib
import mimetypes
import os
import tempfile
from pathlib import Path

from tnefparse import TNEF

TNEF_TYPES = ("application/ms-tnef", "application/vnd.ms-tnef")


def is_tnef(name: str, content_type: str) -> bool:
    return content_type.lower() in TNEF_TYPES or name.lower() == "winmail.dat"


def expand_tnef(data: bytes) -> tuple[list[tuple[str, str, bytes]], str]:
    """Return the files inside a TNEF blob as (name, type, bytes), and its plain-text body.

    An unreadable blob gives nothing: the caller keeps it as the attachment it arrived as.
    """
    try:
        tnef = TNEF(data)
    except Exception:  # tnefparse raises assorted errors on damaged blobs
        return [], ""
    files = []
    for item in tnef.attachments:
        try:
            name = item.long_filename() or item.name or "attachment"
        except Exception:
            name = getattr(item, "name", "") or "attachment"
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        payload = item.data if isinstance(item.data, bytes) else b""
        guessed = mimetypes.guess_type(str(name))[0] or "application/octet-stream"
        files.append((str(name).strip("\x00") or "attachment", guessed, payload))
    body = getattr(tnef, "body", None) or b""
    text = body.decode("cp1252", "replace") if isinstance(body, bytes) else str(body)
    return files, text.strip("\x00").strip()


def store(folder: Path, data: bytes) -> Path:
    """Keep DATA at FOLDER/ab/abcdef… (its SHA-256); the same bytes are stored once.

    The raw message is the durable copy; these files are derived from it and can be made
    again, so they are written without fsync.
    """
    digest = hashlib.sha256(data).hexdigest()
    path = folder / digest[:2] / digest
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return path
