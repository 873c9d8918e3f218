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
import markupsafe

from helpdeskd.config.settings import DEFAULT_TEMPLATES
from helpdeskd.errors import TemplateError

_HEADER = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):[ \t]*(.*)$")
# While rendering, line breaks inside a value become these private-use characters, so that a
# value (a subject, a name) can never start a header line of its own; the body gets the line
# breaks back, header values fold them to spaces.
_VALUE_BREAKS = {"\r": "\ue00d", "\n": "\ue00a"}


def _restore_breaks(text: str) -> str:
    """Undo _VALUE_BREAKS in TEXT (str.replace: str.translate with a table is ~20x slower)."""
    return text.replace("\ue00d", "\r").replace("\ue00a", "\n")


# Also every other character str.splitlines() breaks at: the email package refuses those.
_NOT_IN_LINE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029\ue00a\ue00d]+")
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
    return _NOT_IN_LINE.sub(" ", value).strip()


def _mark_breaks(value: Any) -> Any:
    """Jinja ``finalize``: hide the line breaks of a rendered value (see _VALUE_BREAKS)."""
    if not isinstance(value, str):
        return value
    marked = value.replace("\r", _VALUE_BREAKS["\r"]).replace("\n", _VALUE_BREAKS["\n"])
    return markupsafe.Markup(marked) if isinstance(value, markupsafe.Markup) else marked


def _autoescape(name: str | None) -> bool:
    return bool(name and name.endswith(".html.j2"))


class Renderer:
    """Render mail templates from a folder, falling back to the shipped defaults."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
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
            finalize=_mark_breaks,
            # Templates change by a reload (SIGHUP), which validates them and makes a new
            # Renderer: no stat of the file on every mail, and no half-edited file goes live.
            auto_reload=False,
        )
        self.env.filters["one_line"] = one_line
        self._html: dict[str, str | None] = {}  # NAME.txt.j2 -> its NAME.html.j2, if any
        self._templates: dict[str, jinja2.Template] = {}

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
        text = self._render(name, context)
        headers, body = split_headers(text, name)
        html: str | None = None
        html_name = self._html_sibling(name)
        if html_name is not None:
            html = _restore_breaks(self._render(html_name, context))
        return RenderedMail(headers=headers, text=_restore_breaks(body), html=html)

    def _html_sibling(self, name: str) -> str | None:
        """The HTML alternative of text template NAME, or None; looked up once (a template
        that is not there is not cached by Jinja, and looking for it raises each time)."""
        if name not in self._html:
            sibling = name[: -len(".txt.j2")] + ".html.j2" if name.endswith(".txt.j2") else None
            try:
                if sibling is not None:
                    self.env.get_template(sibling)
            except jinja2.TemplateNotFound:
                sibling = None
            except jinja2.TemplateError:
                pass  # _render reports it, with its file and line
            self._html[name] = sibling
        return self._html[name]

    def _template(self, name: str) -> jinja2.Template:
        """Template NAME, loaded once.

        Its globals become a plain dict: Jinja keeps them as a ChainMap over the environment's
        and copies them into every render's context, key by key in Python (a fifth of the time
        of a short render). Nothing changes the globals once a Renderer is made.
        """
        template = self._templates.get(name)
        if template is None:
            template = self.env.get_template(name)
            template.globals = dict(template.globals)
            self._templates[name] = template
        return template

    def _render(self, name: str, context: dict[str, Any]) -> str:
        """Render template NAME, raising TemplateError (naming NAME) on any Jinja error."""
        try:
            return self._template(name).render(context)
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"template {exc.name} not found") from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"{name}: {exc.message}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{exc.filename or name}:{exc.lineno}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{name}: {exc}") from None


def split_headers(text: str, name: str) -> tuple[tuple[tuple[str, str], ...], str]:
    """Split rendered TEXT into (headers, body) at the first blank line."""
    head, sep, body = text.partition("\n\n")
    if not sep:
        raise TemplateError(f"{name}: a template starts with header lines, then a blank line")
    headers: list[tuple[str, str]] = []
    for line in head.split("\n"):  # only the template's own line breaks, not U+2028 & co.
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
