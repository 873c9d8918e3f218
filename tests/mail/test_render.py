"""Template rendering (DESIGN.md "Templates"): StrictUndefined, autoescape only for .html.j2,
customer text as data, one-line header values, refused headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdeskd.errors import TemplateError
from helpdeskd.mail.render import ALLOWED_HEADERS, Renderer, one_line, split_headers

CONTEXT = {
    "service": {"name": "Acme Postgres add-on", "support_address": "support@acme.test"},
    "ticket": {
        "ref": "HD-1042",
        "subject": "Database down",
        "state": "open",
        "priority": "normal",
        "queue": None,
        "assignee": None,
        "message_count": 1,
    },
    "requester": {"name": "Jane Doe", "email": "jane@example.org"},
    "message": {"text": "My database is down.", "from": "jane@example.org"},
}


def _renderer(tmp_path: Path, files: dict[str, str]) -> Renderer:
    for name, source in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return Renderer(tmp_path)


def _with(**changes: object) -> dict[str, object]:
    context: dict[str, object] = {k: dict(v) for k, v in CONTEXT.items()}
    for dotted, value in changes.items():
        outer, inner = dotted.split("__")
        context[outer][inner] = value  # type: ignore[index]
    return context


@pytest.mark.parametrize(
    ("files", "name"),
    [
        ({"t.txt.j2": "Subject: {{ ticket.subjet }}\n\nbody\n"}, "t.txt.j2"),  # typo in a key
        ({"t.txt.j2": "Subject: x\n\n{{ nothing }}\n"}, "t.txt.j2"),  # undefined name
        ({"t.txt.j2": "Subject: x\n\n{{ requester.name.first }}\n"}, "t.txt.j2"),
        ({"t.txt.j2": "Subject: x\n\n{% for m in missing %}{% endfor %}\n"}, "t.txt.j2"),
        # The HTML alternative fails the same way, as a TemplateError.
        (
            {"t.txt.j2": "Subject: x\n\nfine\n", "t.html.j2": "<p>{{ ticket.nope }}</p>"},
            "t.txt.j2",
        ),
        ({"t.txt.j2": "Subject: x\n\n{% if %}\n"}, "t.txt.j2"),  # syntax error
        (
            {"t.txt.j2": "Subject: x\n\nfine\n", "t.html.j2": "<p>{% if %}</p>"},
            "t.txt.j2",
        ),
        ({"t.txt.j2": "Subject: x\n\n{% include 'nope.txt.j2' %}\n"}, "t.txt.j2"),
        ({}, "missing.txt.j2"),
    ],
)
def test_template_errors_raise_template_error(
    tmp_path: Path, files: dict[str, str], name: str
) -> None:
    with pytest.raises(TemplateError):
        _renderer(tmp_path, files).render(name, CONTEXT)


def test_html_sibling_is_autoescaped_and_text_is_not(tmp_path: Path) -> None:
    renderer = _renderer(
        tmp_path,
        {
            "r.txt.j2": "Subject: {{ ticket.subject }}\n\n{{ message.text }}\n",
            "r.html.j2": "<p>{{ message.text }}</p>",
        },
    )
    text = "<script>alert('x')</script> & <b>bold</b>"
    mail = renderer.render("r.txt.j2", _with(message__text=text))
    assert mail.text == text + "\n"
    assert mail.html is not None
    assert "<script>" not in mail.html and "<b>" not in mail.html
    assert "&lt;script&gt;" in mail.html and "&amp;" in mail.html
    assert mail.html.startswith("<p>")  # the template's own markup is kept


def test_html_sibling_is_optional(tmp_path: Path) -> None:
    renderer = _renderer(tmp_path, {"r.txt.j2": "Subject: x\n\nbody\n"})
    assert renderer.render("r.txt.j2", CONTEXT).html is None


@pytest.mark.parametrize(
    "text",
    [
        "{{ 7*7 }}",
        "{% for x in range(3) %}{{ x }}{% endfor %}",
        "{{ service.__class__ }}",
        "{# comment #}",
        "{{ config.items() }}",
    ],
)
def test_customer_text_is_data_not_template_source(tmp_path: Path, text: str) -> None:
    renderer = _renderer(
        tmp_path,
        {
            "r.txt.j2": "Subject: Re: {{ ticket.subject }}\n\nYou wrote: {{ message.text }}\n",
            "r.html.j2": "<p>{{ message.text }}</p>",
        },
    )
    mail = renderer.render("r.txt.j2", _with(message__text=text, ticket__subject=text))
    assert mail.text == f"You wrote: {text}\n"
    assert mail.subject == f"Re: {text}"
    assert "49" not in mail.text or "49" in text


INJECTIONS = [
    "Hello\r\nBcc: evil@example.net",
    "Hello\nBcc: evil@example.net",
    "Hello\rBcc: evil@example.net",
    "Hello\nCc: evil@example.net",  # Cc is a header templates may set: it must not appear
    "Hello\n\nInjected body line",
    "Hello\x00\x0b\x0c\x1b\x7fthere",
    "\nReply-To: evil@example.net",
    "Hello\u2028Cc: evil@example.net",  # str.splitlines() breaks here too
    "Hello\x85Cc: evil@example.net",
    "Hello\x0bCc: evil@example.net",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_header_values_are_one_line(tmp_path: Path, value: str) -> None:
    """Even a template that forgets the one_line filter cannot be made to add a header."""
    renderer = _renderer(
        tmp_path,
        {
            "r.txt.j2": "Subject: Re: {{ ticket.subject }}\n"
            "Reply-To: {{ service.support_address }}\n\nHi {{ requester.name }},\n"
            "{{ message.text }}\n"
        },
    )
    context = _with(ticket__subject=value, requester__name=value, message__text=value)
    mail = renderer.render("r.txt.j2", context)
    assert [key for key, _ in mail.headers] == ["Subject", "Reply-To"]
    assert mail.header("Reply-To") == "support@acme.test"
    for _, header_value in mail.headers:
        assert not any(ord(c) < 32 or ord(c) == 127 for c in header_value)
    assert mail.subject == one_line("Re: " + value)
    assert "evil" not in (mail.header("Reply-To") or "")
    # The body keeps the value's own line breaks: it is text, not headers.
    assert mail.text.endswith(value + "\n")


def test_line_breaks_in_body_values_survive(tmp_path: Path) -> None:
    renderer = _renderer(
        tmp_path,
        {
            "r.txt.j2": "Subject: {{ ticket.subject | one_line }}\n\n{{ message.text }}\n",
            "r.html.j2": "<pre>{{ message.text }}</pre>",
        },
    )
    text = "line one\nline two\n\nparagraph two"
    mail = renderer.render("r.txt.j2", _with(message__text=text))
    assert mail.text == text + "\n"
    assert mail.html == f"<pre>{text}</pre>"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("Hello, no headers at all\n", "blank line"),
        ("Subject: x\nBody right after without a blank line\n", "blank line"),
        ("Cc: bob@example.org\n\nbody\n", "Subject"),
        ("\n\nbody\n", "Subject"),
        ("Subject: x\nBcc: hidden@example.net\n\nbody\n", "Bcc"),
        ("Subject: x\nFrom: ceo@acme.test\n\nbody\n", "From"),
        ("Subject: x\nTo: everyone@example.org\n\nbody\n", "To"),
        ("Subject: x\nMessage-ID: <x@y>\n\nbody\n", "Message-ID"),
        ("Subject: x\nContent-Type: text/html\n\nbody\n", "Content-Type"),
        ("Subject: x\nnot a header line\n\nbody\n", "not a header"),
    ],
)
def test_bad_header_blocks_are_refused(tmp_path: Path, source: str, message: str) -> None:
    renderer = _renderer(tmp_path, {"r.txt.j2": source})
    with pytest.raises(TemplateError, match=message):
        renderer.render("r.txt.j2", CONTEXT)


@pytest.mark.parametrize(
    ("text", "headers", "body"),
    [
        ("Subject: x\n\nbody\n", (("Subject", "x"),), "body\n"),
        ("Subject:x\n\nbody", (("Subject", "x"),), "body"),
        ("subject: x\nCc: a@b.c\n\n\n\nbody", (("subject", "x"), ("Cc", "a@b.c")), "body"),
        ("Subject: x\nImportance: high\nX-Priority: 1\n\nb", None, "b"),
    ],
)
def test_split_headers(text: str, headers: tuple[tuple[str, str], ...] | None, body: str) -> None:
    got_headers, got_body = split_headers(text, "t")
    if headers is not None:
        assert got_headers == headers
    assert {k.lower() for k, _ in got_headers} <= ALLOWED_HEADERS
    assert got_body == body


@pytest.mark.parametrize("name", ["ack.txt.j2", "agent_notification.txt.j2"])
def test_shipped_templates_render_with_hostile_values(name: str) -> None:
    hostile = "Hello\r\nBcc: evil@example.net"
    context = _with(ticket__subject=hostile, requester__name=hostile, message__text=hostile)
    mail = Renderer().render(name, context)
    assert mail.subject and "\n" not in mail.subject and "\r" not in mail.subject
    assert {k.lower() for k, _ in mail.headers} <= ALLOWED_HEADERS


def test_ack_never_quotes_the_customer() -> None:
    """DESIGN: never quote the customer's text back in an acknowledgement (backscatter)."""
    mail = Renderer().render("ack.txt.j2", _with(message__text="BUY CHEAP PILLS at spam.test"))
    assert "spam.test" not in mail.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a\r\nb", "a b"),
        ("a\n\n\nb", "a b"),
        ("  padded\t", "padded"),
        ("tab\tinside", "tab inside"),
        ("ünïcödé stays", "ünïcödé stays"),
        ("\x00\x1f\x7f", ""),
    ],
)
def test_one_line(value: str, expected: str) -> None:
    assert one_line(value) == expected
