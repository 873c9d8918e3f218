"""Parse the command tags an agent puts at the top of a reply (``#status solved``).

Pure: text in, ``ParsedCommands`` out; nothing here touches a ticket, the database or the network.
The caller decides policy (DESIGN.md: all-or-nothing, customers cannot use commands); this module
reports every command and every error, each with its line, so an agent on a phone can fix them all
in one go.

The command block is the lines at the top of the reply before any other text. Blank lines inside
it are allowed; the first other line ends it and starts the reply text. A command line is ``#``
directly followed by a letter: ``# text`` (a Markdown heading), ``#1``, ``##`` and quoted ``>``
lines are text, and so is every line after the block. An unknown ``#word`` in the block is an
error, never text, because a mistyped command must not reach the customer as prose.

Spellings (Zendesk mail-API names are aliases):

- ``#status open|pending|solved|closed``; the shorthands ``#open``, ``#pending``, ``#solved`` and
  ``#closed`` are accepted: no other command or alias has those names, so they are unambiguous.
- ``#assign`` / ``#assignee`` EMAIL | ``me`` | ``none``;  ``#priority low|normal|high|urgent``.
- ``#queue`` / ``#group`` NAME (one word, lower-cased).
- ``#tags`` / ``#tag`` and ``#cc``: entries signed ``+`` (add) or ``-`` (remove); unsigned adds.
  Several lines of the same list merge into one command. ``#hold`` is ``#tags +hold``: a legal
  hold, which keeps the ticket from erasure and retention until ``#tags -hold``.
- ``#note``, and ``#public false`` as its alias, make the reply internal; ``#public true`` is
  explicitly public (a no-op that conflicts with ``#note``).
- ``#template NAME`` sends a canned reply; ``#merge PREFIX-123 [force]`` merges this ticket into
  that one.

``Command.args``, normalised: status, priority, queue and template one lower-cased value; assign a
lower-cased address, ``me`` or ``none``; tags and cc signed entries, ``("+billing", "-refund")``,
lower-cased and without repeats; merge ``("HD-1040",)`` or ``("HD-1040", "force")`` with the
configured prefix; note and public none.

Phone and mail-client damage repaired on command lines only (the reply text is returned as
written): any case; NFKC (fullwidth ``＃``, U+00A0, U+2007, U+202F and other Unicode spaces);
invisible format characters (zero-width spaces, BOM, bidi marks, soft hyphens); Markdown
backslash escapes (``\\#status``, what html2text writes with ``escape_snob``); a ``:`` after the
command name; trailing ``.``, ``,``, ``;``, ``:`` and ``!``; smart or straight quotes and ``<>``
or ``[]`` around a value; typographic dashes as signs; e-mail auto-links in the forms
``bob@x.org<mailto:bob@x.org>``, ``<mailto:bob@x.org>``, ``[mailto:bob@x.org]`` and html2text's
``[bob@x.org](mailto:bob@x.org)`` (the ``mailto:`` target wins; a non-mailto link such as an iOS
data detector gives its text).

Lines are numbered from 1 as ``str.splitlines`` counts them.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, assert_never, get_args
from urllib.parse import unquote

from helpdeskd.vocab import PRIORITIES, STATES, State

CommandName = Literal[
    "status", "assign", "priority", "queue", "tags", "cc", "note", "template", "merge", "public"
]
COMMAND_NAMES: frozenset[str] = frozenset(get_args(CommandName))
# What #status may set: every state but "new", which a ticket is only ever born in.
STATUSES: tuple[State, ...] = tuple(s for s in STATES if s != "new")


@dataclass(frozen=True)
class Command:
    """One valid command, normalised (see the module docstring for each command's ``args``)."""

    name: CommandName
    args: tuple[str, ...]
    line: int  # 1-based; for a merged #tags or #cc, the first line
    source: str  # the original line, stripped


@dataclass(frozen=True)
class CommandError:
    """One invalid command line and a sentence saying what is wrong with it."""

    line: int
    source: str
    message: str


@dataclass(frozen=True)
class ParsedCommands:
    """The commands at the top of a reply, the errors among them, and the reply text after."""

    commands: tuple[Command, ...]
    errors: tuple[CommandError, ...]
    body: str

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def internal(self) -> bool:
        """Tell whether the reply is an internal note (``#note`` or ``#public false``)."""
        return self.get("note") is not None

    def get(self, name: CommandName) -> Command | None:
        """Return the command called NAME (canonical, not an alias), or None."""
        if name not in COMMAND_NAMES:
            raise ValueError(f"{name!r} is not a command name")
        return next((c for c in self.commands if c.name == name), None)


class _Invalid(Exception):
    """A command line's value is wrong; the message is shown to the agent."""


# --- line normalisation ----------------------------------------------------------------------

_COMMAND_LINE = re.compile(r"#(?P<name>[^\W\d_][\w-]*)(?P<rest>.*)", re.DOTALL)
_MD_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#!+\-.>])")
# html2text's link, `[text](href)`; the href is the truth for mailto, the text otherwise
# (iOS wraps what it recognises in x-apple-data-detectors:// links).
_MD_LINK = re.compile(r"\[(?P<text>[^\]]*)\]\((?P<href>[^)\s]*)\)")
# Outlook and iOS plain-text auto-links: `bob@x.org<mailto:bob@x.org>`, `<mailto:…>`, `[mailto:…]`.
_MAILTO_LINK = re.compile(  # possessive: no backtracking over a long hostile line
    r"(?P<sign>[+-]?)(?:(?P<shown>[^\s<>\[\],;@]*+@[^\s<>\[\],;]*+)\s*+)?"
    r"[<\[]mailto:(?P<addr>[^\s>\]]++)[>\]]",
    re.IGNORECASE,
)
_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58", "-"))
_QUOTES = "\"'`“”„‟‘’‚‛«»‹›「」"
_WRAPPERS = _QUOTES + "<>[]"
_TRAILING = ".,;:!"
_SEPARATORS = re.compile(r"[\s,;]+")
MAX_LINE = 1000  # characters; no real command line is longer, and the regexes stay cheap


def _normalise(line: str) -> str:
    """Undo what phones and mail clients do to a line; the result is only ever parsed."""
    line = unicodedata.normalize("NFKC", line)
    line = "".join(ch for ch in line if unicodedata.category(ch) != "Cf")
    return line.translate(_DASHES).strip()


def _unlink(rest: str) -> str:
    def markdown(m: re.Match[str]) -> str:
        href = m["href"]
        if href.lower().startswith("mailto:"):
            return unquote(href[len("mailto:") :].split("?", 1)[0])
        return m["text"]

    def mailto(m: re.Match[str]) -> str:
        return m["sign"] + unquote(m["addr"].split("?", 1)[0])

    return _MAILTO_LINK.sub(mailto, _MD_LINK.sub(markdown, rest))


def _clean(token: str) -> str:
    """Strip quotes, brackets and trailing punctuation from one value."""
    previous = None
    while token != previous:
        previous = token
        token = token.strip(_WRAPPERS).rstrip(_TRAILING)
    return token


def _tokens(rest: str) -> list[str]:
    rest = rest.strip()
    if rest[:1] in (":", "="):  # `#status: solved`
        rest = rest[1:]
    return [t for t in (_clean(t) for t in _SEPARATORS.split(_unlink(rest))) if t]


# --- values ----------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*"
    r"@(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W_](?:[\w-]*[^\W_])?"
)
_WORD = re.compile(r"[^\W_][\w.:-]*")  # a tag or queue name, after lower-casing
_TEMPLATE = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True)
class _Context:
    spelled: str  # the command as the agent typed it, lower-cased: "#assignee"
    prefix: str


def _q(value: str, limit: int = 60) -> str:
    """Quote VALUE for a message, cut short: an agent reads these on a phone."""
    return f"'{value}'" if len(value) <= limit else f"'{value[: limit - 1]}…'"


def _one(tokens: list[str], ctx: _Context, what: str) -> str:
    if not tokens:
        raise _Invalid(f"{ctx.spelled} needs {what}")
    if len(tokens) > 1:
        raise _Invalid(f"{ctx.spelled} takes one value, not {_q(' '.join(tokens))}")
    return tokens[0]


def _none(tokens: list[str], ctx: _Context) -> None:
    if tokens:
        raise _Invalid(f"{ctx.spelled} takes no value; remove {_q(' '.join(tokens))}")


def _choice(value: str, choices: tuple[str, ...], ctx: _Context) -> str:
    if value.lower() not in choices:
        raise _Invalid(f"{ctx.spelled}: {_q(value)} is not one of {', '.join(choices)}")
    return value.lower()


def _email(value: str, ctx: _Context) -> str:
    address = value[len("mailto:") :] if value.lower().startswith("mailto:") else value
    if not _EMAIL.fullmatch(address):
        raise _Invalid(f"{ctx.spelled}: {_q(value)} is not an e-mail address")
    return address.lower()


def _signed(tokens: list[str], ctx: _Context, what: str, check: Callable[[str], str]) -> list[str]:
    if not tokens:
        raise _Invalid(f"{ctx.spelled} needs at least one {what}, e.g. +name or -name")
    entries = []
    tokens = _join_lone_signs(tokens)
    for token in tokens:
        sign, value = (token[0], _clean(token[1:])) if token[0] in "+-" else ("+", token)
        if not value:
            raise _Invalid(f"{ctx.spelled}: {_q(token)} has a sign but no {what}")
        entries.append(sign + check(value))
    return entries


def _join_lone_signs(tokens: list[str]) -> list[str]:
    """Join `+ billing` (a sign autocorrect cut off) into `+billing`."""
    joined: list[str] = []
    for token in tokens:
        if joined and joined[-1] in ("+", "-"):
            joined[-1] += token
        else:
            joined.append(token)
    return joined


_Parsed = tuple[CommandName, tuple[str, ...]]


def _status(tokens: list[str], ctx: _Context) -> _Parsed:
    value = _one(tokens, ctx, "one of " + ", ".join(STATUSES))
    return "status", (_choice(value, STATUSES, ctx),)


def _status_shorthand(status: str) -> Callable[[list[str], _Context], _Parsed]:
    def parse(tokens: list[str], ctx: _Context) -> _Parsed:
        _none(tokens, ctx)
        return "status", (status,)

    return parse


def _assign(tokens: list[str], ctx: _Context) -> _Parsed:
    value = _one(tokens, ctx, "an e-mail address, me or none")
    if value.lower() in ("me", "none"):
        return "assign", (value.lower(),)
    try:
        return "assign", (_email(value, ctx),)
    except _Invalid:
        raise _Invalid(f"{ctx.spelled}: {_q(value)} is not an e-mail address, me or none") from None


def _priority(tokens: list[str], ctx: _Context) -> _Parsed:
    value = _one(tokens, ctx, "one of " + ", ".join(PRIORITIES))
    return "priority", (_choice(value, PRIORITIES, ctx),)


def _queue(tokens: list[str], ctx: _Context) -> _Parsed:
    value = _one(tokens, ctx, "a queue name")
    if not _WORD.fullmatch(value.lower()) or len(value) > 100:
        raise _Invalid(
            f"{ctx.spelled}: {_q(value)} is not a queue name (one word: letters, digits, -)"
        )
    return "queue", (value.lower(),)


def _tags(tokens: list[str], ctx: _Context) -> _Parsed:
    def tag(value: str) -> str:
        if not _WORD.fullmatch(value.lower()):
            raise _Invalid(f"{ctx.spelled}: {_q(value)} is not a tag (letters, digits, - _ . :)")
        return value.lower()

    return "tags", tuple(_signed(tokens, ctx, "tag", tag))


def _hold(tokens: list[str], ctx: _Context) -> _Parsed:
    if tokens:
        raise _Invalid(f"{ctx.spelled} takes no value; lift a hold with #tags -hold")
    return "tags", ("+hold",)


def _cc(tokens: list[str], ctx: _Context) -> _Parsed:
    return "cc", tuple(_signed(tokens, ctx, "address", lambda v: _email(v, ctx)))


def _note(tokens: list[str], ctx: _Context) -> _Parsed:
    if tokens:
        raise _Invalid(f"{ctx.spelled} takes no value; write the note below the command lines")
    return "note", ()


def _public(tokens: list[str], ctx: _Context) -> _Parsed:
    value = _one(tokens, ctx, "true or false")
    if _choice(value, ("true", "false"), ctx) == "false":
        return "note", ()
    return "public", ()


def _template(tokens: list[str], ctx: _Context) -> _Parsed:
    value = _one(tokens, ctx, "a template name")
    if not _TEMPLATE.fullmatch(value.lower()):
        raise _Invalid(f"{ctx.spelled}: {_q(value)} is not a template name (letters, digits, - _)")
    return "template", (value.lower(),)


def _merge(tokens: list[str], ctx: _Context) -> _Parsed:
    example = f"{ctx.prefix}-1040"
    if not tokens:
        raise _Invalid(f"{ctx.spelled} needs a ticket, e.g. {ctx.spelled} {example}")
    ref = re.fullmatch(rf"{re.escape(ctx.prefix)}-(\d+)", tokens[0], re.IGNORECASE)
    if ref is None:
        raise _Invalid(f"{ctx.spelled}: {_q(tokens[0])} is not a ticket like {example}")
    target = f"{ctx.prefix}-{ref[1]}"
    if len(tokens) == 1:
        return "merge", (target,)
    if len(tokens) == 2 and tokens[1].lower() == "force":
        return "merge", (target, "force")
    raise _Invalid(
        f"{ctx.spelled}: write {ctx.spelled} {target} or {ctx.spelled} {target} force,"
        f" not {_q(' '.join(tokens))}"
    )


# Every accepted spelling, to its parser; aliases are plain entries, not a lookup scheme.
_SPELLINGS: dict[str, Callable[[list[str], _Context], _Parsed]] = {
    "status": _status,
    **{status: _status_shorthand(status) for status in STATUSES},
    "assign": _assign,
    "assignee": _assign,
    "priority": _priority,
    "queue": _queue,
    "group": _queue,
    "tags": _tags,
    "tag": _tags,
    "hold": _hold,
    "cc": _cc,
    "note": _note,
    "public": _public,
    "template": _template,
    "merge": _merge,
}
_LISTS: frozenset[str] = frozenset({"tags", "cc"})
# Commands that set the same thing: #note and #public true cannot both hold.
_SLOT: dict[str, str] = {"public": "note"}


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, _SPELLINGS, n=1, cutoff=0.7)  # not #hashtag → #tag
    hint = (
        f"did you mean #{close[0]}?"
        if close
        else "commands are " + ", ".join(f"#{c}" for c in sorted(COMMAND_NAMES - {"public"}))
    )
    return f"#{name} is not a command; {hint}"


# --- the block -------------------------------------------------------------------------------


class _Block:
    """Collect commands line by line: merge lists, drop exact repeats, report conflicts."""

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.errors: list[CommandError] = []
        self.entries: dict[str, dict[str, tuple[str, int]]] = {n: {} for n in _LISTS}

    def error(self, line: int, source: str, message: str) -> None:
        self.errors.append(CommandError(line=line, source=source, message=message))

    def add(self, command: Command, spelled: str) -> None:
        if command.name in _LISTS:
            self._add_list(command, spelled)
            return
        slot = _SLOT.get(command.name, command.name)
        for earlier in self.commands:
            if _SLOT.get(earlier.name, earlier.name) != slot:
                continue
            if (earlier.name, earlier.args) != (command.name, command.args):
                self.error(
                    command.line,
                    command.source,
                    f"{spelled} conflicts with {_q(earlier.source)} on line {earlier.line};"
                    " keep only one",
                )
            return  # an exact repeat (#solved after #status solved) is harmless
        self.commands.append(command)

    def _add_list(self, command: Command, spelled: str) -> None:
        seen = self.entries[command.name]
        fresh = []
        for entry in command.args:
            sign, value = entry[0], entry[1:]
            if value in seen:
                other_sign, other_line = seen[value]
                if other_sign != sign:
                    if other_line == command.line:
                        message = f"{spelled} both adds and removes {_q(value)}"
                    else:
                        verb, other = ("adds", "removes") if sign == "+" else ("removes", "adds")
                        message = f"{spelled} {verb} {_q(value)} but line {other_line} {other} it"
                    self.error(command.line, command.source, message + "; keep only one")
                continue
            seen[value] = (sign, command.line)
            fresh.append(entry)
        for i, earlier in enumerate(self.commands):
            if earlier.name == command.name:
                self.commands[i] = Command(
                    earlier.name, earlier.args + tuple(fresh), earlier.line, earlier.source
                )
                return
        self.commands.append(Command(command.name, tuple(fresh), command.line, command.source))


def _parse_line(match: re.Match[str], ctx_prefix: str) -> tuple[str, _Parsed]:
    """Parse one matched command line; raise _Invalid with the message for the agent."""
    name = match["name"].lower()
    parser = _SPELLINGS.get(name)
    if parser is None:
        raise _Invalid(_unknown(name))
    ctx = _Context(spelled=f"#{name}", prefix=ctx_prefix)
    tokens = _tokens(match["rest"])
    for token in tokens:  # `#status solved #assign me`: a phone joined two lines
        other = _COMMAND_LINE.fullmatch(token)
        if other and other["name"].lower() in _SPELLINGS:
            raise _Invalid(f"{ctx.spelled}: put #{other['name'].lower()} on a line of its own")
    return ctx.spelled, parser(tokens, ctx)


def _command_line(line: str) -> re.Match[str] | None:
    """Match LINE, normalised, if it is a command line (known command or not)."""
    return _COMMAND_LINE.fullmatch(_MD_ESCAPE.sub(r"\1", _normalise(line)))


def parse_commands(text: str, *, ticket_prefix: str = "HD") -> ParsedCommands:
    """Parse the command block at the top of TEXT (a reply's extracted text) and split off the body.

    TICKET_PREFIX is the configured ticket prefix, which ``#merge`` refs must carry.
    """
    lines = text.splitlines(keepends=True)
    block = _Block()
    end = len(lines)
    for index, raw in enumerate(lines):
        if not _normalise(raw):
            continue
        match = _command_line(raw)
        if match is None:
            end = index
            break
        number, source = index + 1, raw.strip()
        if len(source) > MAX_LINE:
            block.error(
                number,
                source,
                f"the line is too long for a command ({len(source)} > {MAX_LINE} characters)",
            )
            continue
        try:
            spelled, (name, args) = _parse_line(match, ticket_prefix)
        except _Invalid as exc:
            block.error(number, source, str(exc))
            continue
        block.add(Command(name=name, args=args, line=number, source=source), spelled)
    return ParsedCommands(
        commands=tuple(c for c in block.commands if c.args or c.name not in _LISTS),
        errors=tuple(sorted(block.errors, key=lambda e: e.line)),
        body="".join(lines[end:]),
    )


# --- receipts --------------------------------------------------------------------------------


def _signs(args: tuple[str, ...]) -> str:
    return " ".join(("−" + a[1:]) if a.startswith("-") else a for a in args)


def describe(command: Command) -> str:
    """Say in one line what COMMAND does, for the receipt sent back to the agent."""
    args = command.args
    match command.name:
        case "status" | "priority" | "queue":
            return f"{command.name} → {args[0]}"
        case "assign":
            if args[0] == "me":
                return "assigned to you"
            return "unassigned" if args[0] == "none" else f"assigned to {args[0]}"
        case "tags" | "cc":
            return f"{command.name} {_signs(args)}"
        case "note":
            return "internal note: nothing sent to the customer"
        case "public":
            return "public reply"
        case "template":
            return f"canned reply {args[0]}"
        case "merge":
            forced = " (forced: different requesters)" if args[1:] == ("force",) else ""
            return f"merged into {args[0]}{forced}"
    assert_never(command.name)
