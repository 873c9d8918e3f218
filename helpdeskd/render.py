"""Render templates into whole mails: header lines, a blank line, then the text body.

Templates are Jinja2 with StrictUndefined. Only ``*.html.j2`` is autoescaped (the stock
``select_autoescape(['html'])`` would not match that suffix). Customer-supplied text is passed
as data, never compiled as template source, and rendered header values never carry CR or LF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from helpdeskd.config import DEFAULT_TEMPLATES
from helpdeskd.errors import TemplateError

_HEADER = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):[ \t]*(.*)$")
ALLOWED_HEADERS = frozenset({"subject", "cc", "reply-to", "x-priority", "importance"})


@dataclass(frozen=True)
class RenderedMail:
    headers: tuple[tuple[str, str], ...]
    text: str
    html: str | None = None

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def subject(self) -> str:
        return self.header("Subject") or ""


def one_line(value: str) -> str:
    """Fold VALUE to a single header-safe line (no CR, LF or other control characters)."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", value).strip()


def _autoescape(name: str | None) -> bool:
    return bool(name and name.endswith(".html.j2"))


class Renderer:
    """Render mail templates from a folder, falling back to the shipped defaults."""

    def __init__(self, folder: Path | None = None) -> None:
        folders = [str(folder)] if folder else []
        if str(DEFAULT_TEMPLATES) not in folders:
            folders.append(str(DEFAULT_TEMPLATES))
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(folders),
            undefined=jinja2.StrictUndefined,
            autoescape=_autoescape,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["one_line"] = one_line

    def exists(self, name: str) -> bool:
        try:
            self.env.get_template(name)
        except jinja2.TemplateNotFound:
            return False
        return True

    def check(self, name: str) -> None:
        """Compile template NAME, raising TemplateError with its file and line on failure."""
        try:
            self.env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{exc.filename or name}:{exc.lineno}: {exc.message}") from None
        except jinja2.TemplateNotFound:
            raise TemplateError(f"template {name} not found") from None

    def render(self, name: str, context: dict[str, Any]) -> RenderedMail:
        """Render template NAME (``ack.txt.j2``) and its ``.html.j2`` sibling, if any."""
        try:
            text = self.env.get_template(name).render(context)
        except jinja2.TemplateNotFound:
            raise TemplateError(f"template {name} not found") from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"{name}: {exc.message}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{exc.filename or name}:{exc.lineno}: {exc.message}") from None
        headers, body = split_headers(text, name)
        html: str | None = None
        if name.endswith(".txt.j2"):
            html_name = name[: -len(".txt.j2")] + ".html.j2"
            if self.exists(html_name):
                html = self.env.get_template(html_name).render(context)
        return RenderedMail(headers=headers, text=body, html=html)


def split_headers(text: str, name: str) -> tuple[tuple[tuple[str, str], ...], str]:
    """Split rendered TEXT into (headers, body) at the first blank line."""
    head, sep, body = text.partition("\n\n")
    if not sep:
        raise TemplateError(f"{name}: a template starts with header lines, then a blank line")
    headers: list[tuple[str, str]] = []
    for line in head.splitlines():
        if not line.strip():
            continue
        match = _HEADER.match(line)
        if not match:
            raise TemplateError(f"{name}: not a header line: {line[:60]!r}")
        key = match.group(1)
        if key.lower() not in ALLOWED_HEADERS:
            raise TemplateError(f"{name}: header {key} may not be set by a template")
        headers.append((key, one_line(match.group(2))))
    if not any(key.lower() == "subject" for key, _ in headers):
        raise TemplateError(f"{name}: the template sets no Subject: header")
    return tuple(headers), body.lstrip("\n")
