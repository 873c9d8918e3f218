"""The status page as static files, for hosting elsewhere (``helpdeskd status-page export DIR``).

:func:`export` writes what the daemon serves (``index.html``, ``status/index.html``,
``status.json``, ``status/feed.atom``, ``status/status.css``) with relative links that work from
any static host or straight from disk, since the page matters most when the daemon's host is in
trouble.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from helpdeskd.desk.status import StatusData
from helpdeskd.web.feeds import render_atom, render_json
from helpdeskd.web.statuspage import CSS_NAME, render_css, render_html

__all__ = ["export"]


def _write(path: Path, text: str) -> None:
    """Write TEXT to PATH atomically, so a static host syncing the folder never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export(data: StatusData, folder: Path, *, templates: Path | None = None) -> list[Path]:
    """Write the status page as static files under FOLDER and return their paths.

    ``status/index.html`` (the page at ``/status/``), ``index.html`` (the same page for hosting
    FOLDER as a site of its own), ``status.json``, ``status/feed.atom`` and
    ``status/status.css``. Links between them are relative, so they work from any static host and
    from disk; the feed and JSON name the canonical ``public_url`` addresses.
    """
    folder = Path(folder)
    files = [
        (folder / "status" / "index.html", render_html(data, templates=templates, root="../")),
        (folder / "index.html", render_html(data, templates=templates, root="")),
        (folder / "status.json", render_json(data)),
        (folder / "status" / "feed.atom", render_atom(data)),
        (folder / "status" / CSS_NAME, render_css(templates=templates)),
    ]
    for path, text in files:
        _write(path, text)
    return [path for path, _ in files]
