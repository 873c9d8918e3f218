"""Command tags at the top of an agent's reply (DESIGN.md "Agents by email"): every command and
alias, what phones and mail clients do to them, HTML-only replies through html2text, the boundary
between the command block and the reply text, and the errors an agent is told about."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from email.message import EmailMessage

import html2text
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpdeskd.mail.parse import parse_message
from helpdeskd.triage.commands import (
    MAX_LINE,
    Command,
    CommandError,
    ParsedCommands,
    describe,
    parse_commands,
)

Expected = tuple[str, tuple[str, ...]]


def html_to_text(html: str) -> str:
    """Convert HTML the way helpdeskd does (parsing._html_to_text)."""
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    converter.ignore_emphasis = True
    converter.unicode_snob = True
    return str(converter.handle(html)).strip()


def only(text: str, *, prefix: str = "HD") -> Expected:
    """Parse TEXT, which must hold exactly one valid command, and return its name and args."""
    parsed = parse_commands(text, ticket_prefix=prefix)
    assert parsed.errors == (), parsed.errors
    assert len(parsed.commands) == 1, parsed.commands
    return parsed.commands[0].name, parsed.commands[0].args


def names(parsed: ParsedCommands) -> list[Expected]:
    return [(c.name, c.args) for c in parsed.commands]


# --- every command and alias -----------------------------------------------------------------

COMMANDS = [
    ("#status open", ("status", ("open",))),
    ("#status pending", ("status", ("pending",))),
    ("#status solved", ("status", ("solved",))),
    ("#status closed", ("status", ("closed",))),
    ("#open", ("status", ("open",))),
    ("#pending", ("status", ("pending",))),
    ("#solved", ("status", ("solved",))),
    ("#closed", ("status", ("closed",))),
    ("#assign alice@acme.test", ("assign", ("alice@acme.test",))),
    ("#assign Alice@ACME.test", ("assign", ("alice@acme.test",))),
    ("#assign me", ("assign", ("me",))),
    ("#assign ME", ("assign", ("me",))),
    ("#assign none", ("assign", ("none",))),
    ("#assignee alice@acme.test", ("assign", ("alice@acme.test",))),
    ("#assignee me", ("assign", ("me",))),
    ("#assign o'brien+vip@sub.acme.test", ("assign", ("o'brien+vip@sub.acme.test",))),
    ("#priority low", ("priority", ("low",))),
    ("#priority normal", ("priority", ("normal",))),
    ("#priority high", ("priority", ("high",))),
    ("#priority urgent", ("priority", ("urgent",))),
    ("#queue billing", ("queue", ("billing",))),
    ("#queue second-line", ("queue", ("second-line",))),
    ("#group billing", ("queue", ("billing",))),
    ("#group Billing", ("queue", ("billing",))),
    ("#tags +billing -refund", ("tags", ("+billing", "-refund"))),
    ("#tags billing", ("tags", ("+billing",))),
    ("#tags billing refund", ("tags", ("+billing", "+refund"))),
    ("#tags billing, -refund", ("tags", ("+billing", "-refund"))),
    ("#tags +billing +billing", ("tags", ("+billing",))),
    ("#tags +Plan:Pro +eu-west.1", ("tags", ("+plan:pro", "+eu-west.1"))),
    ("#tag vip", ("tags", ("+vip",))),
    ("#tag -vip", ("tags", ("-vip",))),
    ("#cc +bob@example.org -carol@example.org", ("cc", ("+bob@example.org", "-carol@example.org"))),
    ("#cc bob@x.org", ("cc", ("+bob@x.org",))),
    ("#cc bob@x.org, carol@y.org", ("cc", ("+bob@x.org", "+carol@y.org"))),
    ("#cc bob@x.org; carol@y.org", ("cc", ("+bob@x.org", "+carol@y.org"))),
    ("#cc Bob@X.org bob@x.org", ("cc", ("+bob@x.org",))),
    ("#note", ("note", ())),
    ("#public false", ("note", ())),
    ("#public False", ("note", ())),
    ("#public true", ("public", ())),
    ("#template refund", ("template", ("refund",))),
    ("#template refund_policy-2", ("template", ("refund_policy-2",))),
    ("#template Refund", ("template", ("refund",))),
    ("#merge HD-1040", ("merge", ("HD-1040",))),
    ("#merge HD-1040 force", ("merge", ("HD-1040", "force"))),
    ("#merge hd-1040 FORCE", ("merge", ("HD-1040", "force"))),
]


@pytest.mark.parametrize(("text", "expected"), COMMANDS, ids=[t for t, _ in COMMANDS])
def test_command(text: str, expected: Expected) -> None:
    assert only(text) == expected


@pytest.mark.parametrize(
    ("text", "prefix", "expected"),
    [
        ("#merge ACME-7", "ACME", ("merge", ("ACME-7",))),
        ("#merge acme-7 force", "ACME", ("merge", ("ACME-7", "force"))),
        ("#merge T.X-7", "T.X", ("merge", ("T.X-7",))),  # the prefix is literal, not a regex
    ],
)
def test_merge_uses_the_ticket_prefix(text: str, prefix: str, expected: Expected) -> None:
    assert only(text, prefix=prefix) == expected


def test_merge_refuses_another_prefix() -> None:
    parsed = parse_commands("#merge HD-7", ticket_prefix="ACME")
    assert [e.message for e in parsed.errors] == ["#merge: 'HD-7' is not a ticket like ACME-1040"]
    assert parse_commands("#merge TAX-7", ticket_prefix="T.X").errors


# --- what phones and mail clients do ---------------------------------------------------------

MANGLED = [
    # case, trailing punctuation
    ("#Status Solved", ("status", ("solved",))),
    ("#STATUS SOLVED", ("status", ("solved",))),
    ("#status solved.", ("status", ("solved",))),
    ("#status solved,", ("status", ("solved",))),
    ("#status solved!", ("status", ("solved",))),
    ("#solved.", ("status", ("solved",))),
    ("#note.", ("note", ())),
    ("#assign alice@acme.test.", ("assign", ("alice@acme.test",))),
    ("#tags +billing, -refund.", ("tags", ("+billing", "-refund"))),
    ("#merge HD-1040.", ("merge", ("HD-1040",))),
    ("#merge HD-1040, force.", ("merge", ("HD-1040", "force"))),
    ("#status: solved", ("status", ("solved",))),
    # Unicode spaces, tabs, invisible characters, fullwidth forms
    ("#status\u00a0solved", ("status", ("solved",))),
    ("#status\u2007solved", ("status", ("solved",))),
    ("#status\u202fsolved", ("status", ("solved",))),
    ("#status\u3000solved", ("status", ("solved",))),
    ("#status\tsolved", ("status", ("solved",))),
    ("#status   solved   ", ("status", ("solved",))),
    ("  \t#status solved", ("status", ("solved",))),
    ("\u00a0#status solved\u00a0", ("status", ("solved",))),
    ("\u200b#status solved", ("status", ("solved",))),
    ("\ufeff#status solved", ("status", ("solved",))),
    ("\u200e#status sol\u00adved\u200f", ("status", ("solved",))),
    ("＃ｓｔａｔｕｓ　ｓｏｌｖｅｄ", ("status", ("solved",))),
    # smart and straight quotes, brackets
    ("#status “solved”", ("status", ("solved",))),
    ("#assign ‘me’", ("assign", ("me",))),
    ('#assign "me"', ("assign", ("me",))),
    ("#template «refund»", ("template", ("refund",))),
    ("#queue 'billing'.", ("queue", ("billing",))),
    ("#merge [HD-1040]", ("merge", ("HD-1040",))),
    # typographic dashes (iOS smart punctuation, Word) as signs and in refs
    ("#tags –refund", ("tags", ("-refund",))),
    ("#tags —refund", ("tags", ("-refund",))),
    ("#tags −refund", ("tags", ("-refund",))),
    ("#tags + billing - refund", ("tags", ("+billing", "-refund"))),
    ("#merge HD‑1040", ("merge", ("HD-1040",))),
    ("#merge HD–1040", ("merge", ("HD-1040",))),
    # auto-linked addresses
    ("#assign bob@x.org<mailto:bob@x.org>", ("assign", ("bob@x.org",))),
    ("#assign bob@x.org <mailto:bob@x.org>", ("assign", ("bob@x.org",))),
    ("#assign <mailto:bob@x.org>", ("assign", ("bob@x.org",))),
    ("#assign [mailto:bob@x.org]", ("assign", ("bob@x.org",))),
    ("#assign bob@x.org [mailto:bob@x.org]", ("assign", ("bob@x.org",))),
    ("#assign <MAILTO:Bob@X.org>", ("assign", ("bob@x.org",))),
    ("#assign <bob@x.org>", ("assign", ("bob@x.org",))),
    ("#assign mailto:bob@x.org", ("assign", ("bob@x.org",))),
    ("#assign [bob@x.org](mailto:bob@x.org)", ("assign", ("bob@x.org",))),
    ("#assign [Bob Smith](mailto:bob@x.org?subject=Hi)", ("assign", ("bob@x.org",))),
    ("#assign [bob@x.org](mailto:bob%40x.org)", ("assign", ("bob@x.org",))),
    ("#assign [bob@x.org](x-apple-data-detectors://0)", ("assign", ("bob@x.org",))),
    (
        "#cc +bob@x.org<mailto:bob@x.org> -carol@y.org<mailto:carol@y.org>",
        ("cc", ("+bob@x.org", "-carol@y.org")),
    ),
    ("#cc bob@x.org<mailto:bob@x.org>, dan@z.org", ("cc", ("+bob@x.org", "+dan@z.org"))),
    ("#cc -<mailto:carol@y.org>", ("cc", ("-carol@y.org",))),
    ("#cc -[carol@y.org](mailto:carol@y.org)", ("cc", ("-carol@y.org",))),
    (
        "#cc +[Bob](mailto:bob@x.org) -[Carol](mailto:carol@y.org)",
        ("cc", ("+bob@x.org", "-carol@y.org")),
    ),
    ("#cc -<carol@y.org>", ("cc", ("-carol@y.org",))),
    # html2text's Markdown escapes (escape_snob) and a backslash an agent typed
    ("\\#status solved", ("status", ("solved",))),
    ("\\#template refund\\_policy", ("template", ("refund_policy",))),
    ("#tags \\+billing \\-refund", ("tags", ("+billing", "-refund"))),
]


@pytest.mark.parametrize(("text", "expected"), MANGLED, ids=[ascii(t) for t, _ in MANGLED])
def test_phone_proof(text: str, expected: Expected) -> None:
    assert only(text) == expected


def test_source_is_the_original_line_stripped() -> None:
    parsed = parse_commands("  #Status\u00a0Solved.  \nThanks")
    assert parsed.commands == (
        Command(name="status", args=("solved",), line=1, source="#Status\u00a0Solved."),
    )


# --- where the command block ends ------------------------------------------------------------

BOUNDARY = [
    # (text, commands, body)
    ("#status solved\n#assign me\n\nHi Bob,\nfixed.", ["status", "assign"], "Hi Bob,\nfixed."),
    ("#status solved\n\n\n#assign me\n\n\nHello", ["status", "assign"], "Hello"),
    ("\n\n#status solved\nHello", ["status"], "Hello"),
    ("#status solved\n  \n\u00a0\n\u200b\n\tHello", ["status"], "\tHello"),
    ("#status solved\n#note", ["status", "note"], ""),
    ("#status solved\n\n", ["status"], ""),
    ("", [], ""),
    ("\n \n", [], ""),
    ("Hello\n", [], "Hello\n"),
    ("\n\nHello", [], "Hello"),
    # `# text` with a space is text (a Markdown heading, a numbered "# 1"), and ends the block
    ("# status solved", [], "# status solved"),
    ("#status solved\n# assign me\nHi", ["status"], "# assign me\nHi"),
    ("#\n#status solved", [], "#\n#status solved"),
    ("##status solved", [], "##status solved"),
    ("#1 priority is uptime", [], "#1 priority is uptime"),
    ("# #status solved", [], "# #status solved"),  # html2text's <h1>
    # a hashtag inside text, and commands after text, are text
    ("Thanks! #blessed\n#status solved", [], "Thanks! #blessed\n#status solved"),
    ("#status solved\nThanks #blessed", ["status"], "Thanks #blessed"),
    ("Hi\n#status solved", [], "Hi\n#status solved"),
    ("#status solved\nHi\n\n#assign me\n", ["status"], "Hi\n\n#assign me\n"),
    # quoted lines are not commands
    ("> #status solved\n#assign me", [], "> #status solved\n#assign me"),
    (">#status solved", [], ">#status solved"),
    ("#status solved\n> #assign me", ["status"], "> #assign me"),
    # the body is returned as written, line endings included
    ("#status solved\r\n\r\nHello\r\nBye\r\n", ["status"], "Hello\r\nBye\r\n"),
    ("#status solved\n  indented reply", ["status"], "  indented reply"),
    ("#status solved\u2028#assign me\u2028Hi", ["status", "assign"], "Hi"),
]


@pytest.mark.parametrize(
    ("text", "commands", "body"), BOUNDARY, ids=[ascii(t)[:40] for t, _, _ in BOUNDARY]
)
def test_block_boundary(text: str, commands: list[str], body: str) -> None:
    parsed = parse_commands(text)
    assert parsed.errors == ()
    assert [c.name for c in parsed.commands] == commands
    assert parsed.body == body


def test_line_numbers_count_blank_lines() -> None:
    parsed = parse_commands("\n#status solved\n\n\n#assign me\nHi")
    assert [(c.name, c.line) for c in parsed.commands] == [("status", 2), ("assign", 5)]


# --- errors ----------------------------------------------------------------------------------

ERRORS = [
    ("#status slved", "#status: 'slved' is not one of open, pending, solved, closed"),
    ("#status new", "#status: 'new' is not one of open, pending, solved, closed"),
    ("#status", "#status needs one of open, pending, solved, closed"),
    ("#status open closed", "#status takes one value, not 'open closed'"),
    ("#solved now", "#solved takes no value; remove 'now'"),
    ("#priority asap", "#priority: 'asap' is not one of low, normal, high, urgent"),
    ("#assign alice", "#assign: 'alice' is not an e-mail address, me or none"),
    ("#assign bob@", "#assign: 'bob@' is not an e-mail address, me or none"),
    ("#assign bob@x", "#assign: 'bob@x' is not an e-mail address, me or none"),
    ("#assign bob@@x.org", "#assign: 'bob@@x.org' is not an e-mail address, me or none"),
    ("#assign", "#assign needs an e-mail address, me or none"),
    ("#assignee nobody", "#assignee: 'nobody' is not an e-mail address, me or none"),
    (
        "#assign alice@acme.test bob@x.org",
        "#assign takes one value, not 'alice@acme.test bob@x.org'",
    ),
    ("#cc bob", "#cc: 'bob' is not an e-mail address"),
    ("#cc +bob@x.org -carol", "#cc: 'carol' is not an e-mail address"),
    ("#cc me", "#cc: 'me' is not an e-mail address"),
    ("#cc", "#cc needs at least one address, e.g. +name or -name"),
    ("#cc +", "#cc: '+' has a sign but no address"),
    ("#tags", "#tags needs at least one tag, e.g. +name or -name"),
    ("#tags +bad!tag", "#tags: 'bad!tag' is not a tag (letters, digits, - _ . :)"),
    ("#tag +_x", "#tag: '_x' is not a tag (letters, digits, - _ . :)"),
    ("#queue", "#queue needs a queue name"),
    ("#queue second line", "#queue takes one value, not 'second line'"),
    ("#group bill/ing", "#group: 'bill/ing' is not a queue name (one word: letters, digits, -)"),
    ("#note please call", "#note takes no value; write the note below the command lines"),
    ("#public", "#public needs true or false"),
    ("#public maybe", "#public: 'maybe' is not one of true, false"),
    ("#template", "#template needs a template name"),
    (
        "#template ../../etc/passwd",
        "#template: '../../etc/passwd' is not a template name (letters, digits, - _)",
    ),
    (
        "#template refund.txt.j2",
        "#template: 'refund.txt.j2' is not a template name (letters, digits, - _)",
    ),
    ("#template _x", "#template: '_x' is not a template name (letters, digits, - _)"),
    ("#template a b", "#template takes one value, not 'a b'"),
    ("#merge", "#merge needs a ticket, e.g. #merge HD-1040"),
    ("#merge 1040", "#merge: '1040' is not a ticket like HD-1040"),
    ("#merge HD1040", "#merge: 'HD1040' is not a ticket like HD-1040"),
    ("#merge XY-1040", "#merge: 'XY-1040' is not a ticket like HD-1040"),
    ("#merge HD-10a", "#merge: 'HD-10a' is not a ticket like HD-1040"),
    (
        "#merge HD-1040 now",
        "#merge: write #merge HD-1040 or #merge HD-1040 force, not 'HD-1040 now'",
    ),
    (
        "#merge HD-1 force HD-2",
        "#merge: write #merge HD-1 or #merge HD-1 force, not 'HD-1 force HD-2'",
    ),
    ("#staus solved", "#staus is not a command; did you mean #status?"),
    ("#asign me", "#asign is not a command; did you mean #assign?"),
    ("#solve", "#solve is not a command; did you mean #solved?"),
    ("#Priorty high", "#priorty is not a command; did you mean #priority?"),
    (
        "#hashtag",
        "#hashtag is not a command; commands are #assign, #cc, #merge, #note, #priority, #queue,"
        " #status, #tags, #template",
    ),
    (
        "#HD-1040 is related",
        "#hd-1040 is not a command; commands are #assign, #cc, #merge, #note, #priority, #queue,"
        " #status, #tags, #template",
    ),
    ("#tgas +a", "#tgas is not a command; did you mean #tags?"),
    ("#status solved #assign me", "#status: put #assign on a line of its own"),
    ("#assign me, #Solved", "#assign: put #solved on a line of its own"),
    ("#status solved.\u00a0#note", "#status: put #note on a line of its own"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS, ids=[t for t, _ in ERRORS])
def test_error(text: str, message: str) -> None:
    parsed = parse_commands(text + "\n\nHello")
    assert parsed.errors == (CommandError(line=1, source=text.strip(), message=message),)
    assert not parsed.ok
    assert parsed.commands == ()
    assert parsed.body == "Hello"


def test_every_error_is_reported_with_its_line() -> None:
    text = "#status slved\n\n#priority asap\n#assign me\n#foo\n#cc bob\n\nHello\n#bar"
    parsed = parse_commands(text)
    assert [(e.line, e.source) for e in parsed.errors] == [
        (1, "#status slved"),
        (3, "#priority asap"),
        (5, "#foo"),
        (6, "#cc bob"),
    ]
    assert names(parsed) == [("assign", ("me",))]  # valid ones are still reported
    assert parsed.body == "Hello\n#bar"


def test_a_line_too_long_for_a_command_is_an_error() -> None:
    line = "#cc " + "a@" * MAX_LINE
    parsed = parse_commands(line + "\n#status solved")
    assert [e.message for e in parsed.errors] == [
        f"the line is too long for a command ({len(line)} > {MAX_LINE} characters)"
    ]
    assert names(parsed) == [("status", ("solved",))]


def test_long_values_are_cut_short_in_messages() -> None:
    parsed = parse_commands("#status " + "x" * 500)
    (error,) = parsed.errors
    assert len(error.message) < 120
    assert "x…'" in error.message


# --- repeated and conflicting commands -------------------------------------------------------

CONFLICTS = [
    (
        "#status open\n#status solved",
        2,
        "#status conflicts with '#status open' on line 1; keep only one",
    ),
    ("#solved\n#status open", 2, "#status conflicts with '#solved' on line 1; keep only one"),
    ("#note\n\n#public true", 3, "#public conflicts with '#note' on line 1; keep only one"),
    (
        "#public true\n#public false",
        2,
        "#public conflicts with '#public true' on line 1; keep only one",
    ),
    (
        "#assign me\n#assignee bob@x.org",
        2,
        "#assignee conflicts with '#assign me' on line 1; keep only one",
    ),
    (
        "#priority high\n#priority low",
        2,
        "#priority conflicts with '#priority high' on line 1; keep only one",
    ),
    ("#queue a\n#group b", 2, "#group conflicts with '#queue a' on line 1; keep only one"),
    (
        "#template a\n#template b",
        2,
        "#template conflicts with '#template a' on line 1; keep only one",
    ),
    (
        "#merge HD-1\n#merge HD-1 force",
        2,
        "#merge conflicts with '#merge HD-1' on line 1; keep only one",
    ),
    ("#merge HD-1\n#merge HD-2", 2, "#merge conflicts with '#merge HD-1' on line 1; keep only one"),
    ("#tags +a -a", 1, "#tags both adds and removes 'a'; keep only one"),
    ("#tags +a\n#tag -A", 2, "#tag removes 'a' but line 1 adds it; keep only one"),
    ("#tags -a\n#tags a", 2, "#tags adds 'a' but line 1 removes it; keep only one"),
    (
        "#cc bob@x.org\n#cc -Bob@X.org",
        2,
        "#cc removes 'bob@x.org' but line 1 adds it; keep only one",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), CONFLICTS, ids=[t for t, _, _ in CONFLICTS])
def test_conflict(text: str, line: int, message: str) -> None:
    parsed = parse_commands(text)
    assert [(e.line, e.message) for e in parsed.errors] == [(line, message)]


REPEATS = [
    ("#status solved\n#status solved", [("status", ("solved",))]),
    ("#status solved\n#Solved.", [("status", ("solved",))]),
    ("#note\n#public false", [("note", ())]),
    ("#public true\n#public true", [("public", ())]),
    ("#assign me\n#assignee ME", [("assign", ("me",))]),
    ("#queue billing\n#group Billing", [("queue", ("billing",))]),
    ("#merge HD-1 force\n#merge hd-1 force", [("merge", ("HD-1", "force"))]),
    # list commands over several lines merge into one, in order, without repeats
    (
        "#tags +a\n#status open\n#tag +b -c\n#tags a",
        [("tags", ("+a", "+b", "-c")), ("status", ("open",))],
    ),
    ("#cc a@x.org\n#cc -b@y.org, A@x.org", [("cc", ("+a@x.org", "-b@y.org"))]),
]


@pytest.mark.parametrize(("text", "expected"), REPEATS, ids=[t for t, _ in REPEATS])
def test_repeats_are_harmless(text: str, expected: list[Expected]) -> None:
    parsed = parse_commands(text)
    assert parsed.errors == ()
    assert names(parsed) == expected


def test_merged_list_keeps_its_first_line() -> None:
    parsed = parse_commands("#tags +a\n\n#tags +b")
    assert parsed.commands == (Command(name="tags", args=("+a", "+b"), line=1, source="#tags +a"),)


# --- HTML-only replies through html2text -----------------------------------------------------

HTML2TEXT = [
    # what html2text 2025.4.15 makes of '#' lines: left alone, no escaping
    ("<p>#status solved</p>", "#status solved"),
    ("<div>#assign me</div>", "#assign me"),
    ("<p># status solved</p>", "# status solved"),
    ("<p>#status&nbsp;solved</p>", "#status\u00a0solved"),
    ("<p>#status solved<br>#assign me</p>", "#status solved  \n#assign me"),
    ("<div>#status solved</div><div>#assign me</div>", "#status solved\n\n#assign me"),
    ("<p>#cc <a href='mailto:bob@x.org'>bob@x.org</a></p>", "#cc [bob@x.org](mailto:bob@x.org)"),
    ("<blockquote>#status solved</blockquote>", "> #status solved"),
    ("<h1>#status solved</h1>", "# #status solved"),
    ("<pre>#status solved\n#assign me</pre>", "#status solved\n    #assign me"),
    # ... only a line that would read as a Markdown list gets a backslash
    ("<p>+billing</p><p>-refund</p>", "+billing\n\n-refund"),
    ("<p>+ billing</p><p>- refund</p><p>1. x</p>", "\\+ billing\n\n\\- refund\n\n1\\. x"),
]


@pytest.mark.parametrize(("html", "text"), HTML2TEXT, ids=[h for h, _ in HTML2TEXT])
def test_what_html2text_does_to_hash_lines(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_html2text_escape_snob_escapes_the_hash() -> None:
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.escape_snob = True
    text = str(converter.handle("<p>#template refund_policy</p><p>#status solved</p>")).strip()
    assert text == "\\#template refund\\_policy\n\n\\#status solved"
    assert names(parse_commands(text)) == [
        ("template", ("refund_policy",)),
        ("status", ("solved",)),
    ]


HTML = [
    ("<p>#status solved</p><p>Thanks!</p>", [("status", ("solved",))], "Thanks!"),
    ("<div>#assign me</div><div><br></div><div>On it.</div>", [("assign", ("me",))], "On it."),
    (
        "<div>#Status Solved.<br>#assign <a href='mailto:Bob@X.org'>Bob@X.org</a>"
        "<br><br>Done</div>",
        [("status", ("solved",)), ("assign", ("bob@x.org",))],
        "Done",
    ),
    (
        "<p>#cc -<a href='mailto:carol@y.org'>Carol</a>"
        " <a href='mailto:bob@x.org'>bob@x.org</a></p>",
        [("cc", ("-carol@y.org", "+bob@x.org"))],
        "",
    ),
    (
        "<p>#assign <a href='x-apple-data-detectors://1'>alice@acme.test</a></p><p>Hi</p>",
        [("assign", ("alice@acme.test",))],
        "Hi",
    ),
    (
        "<p class=MsoNormal>#status&nbsp;pending<o:p></o:p></p>"
        "<p class=MsoNormal>#priority&nbsp;urgent.<o:p></o:p></p>"
        "<p class=MsoNormal><o:p>&nbsp;</o:p></p><p class=MsoNormal>Looking now.<o:p></o:p></p>",
        [("status", ("pending",)), ("priority", ("urgent",))],
        "Looking now.",
    ),
    ("<p>#tags +billing -refund</p>", [("tags", ("+billing", "-refund"))], ""),
    ("<p>#merge HD-1040 force</p>", [("merge", ("HD-1040", "force"))], ""),
    ("<p>#template refund_policy</p>", [("template", ("refund_policy",))], ""),
    ("<div>#note</div><div>Called them.</div>", [("note", ())], "Called them."),
    ("<p>&#8203;#status solved</p>", [("status", ("solved",))], ""),
    ("<pre>#status solved\n#assign me</pre>", [("status", ("solved",)), ("assign", ("me",))], ""),
    ("<p># status solved</p>", [], "# status solved"),
    ("<blockquote>#status solved</blockquote>", [], "> #status solved"),
    ("<h2>#status solved</h2>", [], "## #status solved"),
    ("<p>Hi</p><p>#status solved</p>", [], "Hi\n\n#status solved"),
]


@pytest.mark.parametrize(("html", "expected", "body"), HTML, ids=[h[:50] for h, _, _ in HTML])
def test_html_only_reply(html: str, expected: list[Expected], body: str) -> None:
    parsed = parse_commands(html_to_text(html))
    assert parsed.errors == ()
    assert names(parsed) == expected
    assert parsed.body == body


def _html_mail(html: str) -> bytes:
    message = EmailMessage()
    message["From"] = "Alice <alice@acme.test>"
    message["To"] = "support+HD-1042@acme.test"
    message["Subject"] = "Re: [HD-1042] Backups failing"
    message["Message-ID"] = "<reply-1@mail.acme.test>"
    message.set_content(html, subtype="html")
    return message.as_bytes()


GMAIL = (
    '<div dir="ltr">#Status Solved.<br>#assign <a href="mailto:bob@x.org">bob@x.org</a><br><br>'
    "Hi Bob, fixed.<br></div><br>"
    '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Jan 6, 2025 at 10:00 AM'
    " Bob &lt;bob@x.org&gt; wrote:<br></div>"
    '<blockquote class="gmail_quote">#status open<br>Backups fail.</blockquote></div>'
)
OUTLOOK = (
    "<html><body><p class=MsoNormal>#status&nbsp;solved<o:p></o:p></p>"
    '<p class=MsoNormal>#cc <a href="mailto:carol@y.org">carol@y.org</a><o:p></o:p></p>'
    "<p class=MsoNormal><o:p>&nbsp;</o:p></p><p class=MsoNormal>Thanks<o:p></o:p></p>"
    '<div><div style="border:none;border-top:solid #E1E1E1 1.0pt"><p class=MsoNormal>'
    "<b>From:</b> Bob<br><b>Sent:</b> Monday<br><b>Subject:</b> Backups</p></div></div>"
    "<p>#status open</p></body></html>"
)


@pytest.mark.parametrize(
    ("html", "expected", "body"),
    [
        (GMAIL, [("status", ("solved",)), ("assign", ("bob@x.org",))], "Hi Bob, fixed."),
        (OUTLOOK, [("status", ("solved",)), ("cc", ("+carol@y.org",))], "Thanks"),
    ],
    ids=["gmail", "outlook"],
)
def test_html_only_mail_through_parse_message(
    html: str, expected: list[Expected], body: str
) -> None:
    """The text helpdeskd extracts from an HTML-only reply (quoted history removed) parses."""
    parsed = parse_commands(parse_message(_html_mail(html)).text)
    assert parsed.errors == ()
    assert names(parsed) == expected
    assert parsed.body == body


# --- the result object and receipts ----------------------------------------------------------


def test_parsed_commands_api() -> None:
    parsed = parse_commands("#status solved\n#public false\nInternal: refund approved")
    assert parsed.ok
    assert parsed.internal
    assert parsed.get("status") == Command("status", ("solved",), 1, "#status solved")
    assert parsed.get("assign") is None
    with pytest.raises(ValueError, match="not a command name"):
        parsed.get("assignee")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.body = ""  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "internal"),
    [("#note", True), ("#public false", True), ("#public true", False), ("#status solved", False)],
)
def test_internal(text: str, internal: bool) -> None:
    assert parse_commands(text).internal is internal


def test_not_ok_when_any_error() -> None:
    parsed = parse_commands("#status solved\n#note\n#foo")
    assert not parsed.ok
    assert parsed.internal  # still reported: the caller keeps the reply as an internal draft


DESCRIBE = [
    ("#status solved", "status → solved"),
    ("#solved", "status → solved"),
    ("#assign alice@acme.test", "assigned to alice@acme.test"),
    ("#assign me", "assigned to you"),
    ("#assign none", "unassigned"),
    ("#priority urgent", "priority → urgent"),
    ("#group billing", "queue → billing"),
    ("#tags +billing -refund", "tags +billing −refund"),
    ("#cc +bob@example.org -carol@example.org", "cc +bob@example.org −carol@example.org"),
    ("#note", "internal note: nothing sent to the customer"),
    ("#public true", "public reply"),
    ("#template refund", "canned reply refund"),
    ("#merge HD-1040", "merged into HD-1040"),
    ("#merge HD-1040 force", "merged into HD-1040 (forced: different requesters)"),
]


@pytest.mark.parametrize(("text", "line"), DESCRIBE, ids=[t for t, _ in DESCRIBE])
def test_describe(text: str, line: str) -> None:
    (command,) = parse_commands(text).commands
    assert describe(command) == line


# --- any text at all -------------------------------------------------------------------------

LINE = st.one_of(
    st.sampled_from(
        ["#status solved", "#cc bob@x.org<mailto:bob@x.org>", "#foo", "", "  ", "> #note", "Hi"]
    ),
    st.text(alphabet=st.sampled_from("#@<>[]()+-.,:; \u00a0\u200bab\\mailto"), max_size=40),
    st.text(max_size=40),
)


@settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(LINE, max_size=8).map("\n".join))
def test_any_text_parses(text: str) -> None:
    parsed = parse_commands(text)
    assert text.endswith(parsed.body)
    assert parsed.ok == (not parsed.errors)
    lines = text.splitlines()
    for line, source in [(c.line, c.source) for c in parsed.commands] + [
        (e.line, e.source) for e in parsed.errors
    ]:
        assert lines[line - 1].strip() == source
    for command in parsed.commands:
        assert describe(command)


def test_hold_is_a_legal_hold_tag() -> None:
    parsed = parse_commands("#hold\n#tags +billing\nKeep it.")
    assert [(c.name, c.args) for c in parsed.commands] == [("tags", ("+hold", "+billing"))]
    [error] = parse_commands("#hold please\n").errors
    assert error.message == "#hold takes no value; lift a hold with #tags -hold"
