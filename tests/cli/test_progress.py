"""``cli.progress``: plain lines off a terminal, a rich bar on one; stdout stays where it goes."""

from __future__ import annotations

import io
import re

import pytest

from helpdeskd.cli.progress import progress


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr on a console does."""

    def isatty(self) -> bool:
        return True


def test_plain_lines_count_with_percentage_and_rate_and_end_with_done():
    out = io.StringIO()
    with progress("importing customers", 10, stream=out, every=0) as advance:
        advance(3)
        advance(4)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"importing customers: 3/10 \(30%\)(, \d+/s)?", lines[0]), lines
    assert re.fullmatch(r"importing customers: 7/10 \(70%\)(, \d+/s)?", lines[1]), lines
    assert re.fullmatch(r"importing customers: 7/10 \(70%\)(, \d+/s)?, done", lines[2]), lines


def test_quick_work_prints_no_plain_line_at_all():
    out = io.StringIO()
    with progress("ingesting", None, stream=out, every=3600) as advance:
        for _ in range(5):
            advance(50)
    assert out.getvalue() == ""  # the command's own stderr stays as it was


def test_the_environment_sets_how_often_and_a_total_of_none_counts(monkeypatch):
    monkeypatch.setenv("HELPDESKD_PROGRESS_EVERY", "0")
    out = io.StringIO()
    with progress("ingesting", None, stream=out) as advance:
        advance(50)
        advance(7)
    lines = out.getvalue().splitlines()
    assert [re.sub(r", \d+/s", "", line) for line in lines] == [
        "ingesting: 50",
        "ingesting: 57",
        "ingesting: 57, done",
    ]
    monkeypatch.setenv("HELPDESKD_PROGRESS_EVERY", "soon")  # not a number: the default 5 s
    out = io.StringIO()
    with progress("ingesting", None, stream=out) as advance:
        advance(1)
    assert out.getvalue() == ""


def test_work_that_fails_is_not_said_to_be_done():
    out = io.StringIO()
    with pytest.raises(RuntimeError), progress("ingesting", 4, stream=out, every=0) as advance:
        advance(1)
        raise RuntimeError("broken")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("ingesting: 1/4 (25%)")
    assert not any(line.endswith("done") for line in lines)


def test_a_terminal_gets_a_bar_with_the_label_and_the_count(capsys):
    out = Terminal()
    with progress("importing customers", 10, stream=out) as advance:
        advance(3)
        print("a line of the command's answer")  # stdout is not a terminal here: it stays put
        advance(4)
    drawn = out.getvalue()
    assert "importing customers" in drawn and "7/10" in drawn and "70%" in drawn
    assert "\x1b[" in drawn  # drawn with the terminal's control sequences, not plain lines
    assert "a line of the command's answer" not in drawn
    assert capsys.readouterr().out == "a line of the command's answer\n"


def test_a_terminal_bar_without_a_total_counts():
    out = Terminal()
    with progress("ingesting", None, stream=out) as advance:
        advance(50)
        advance(7)
    assert "ingesting" in out.getvalue() and "57" in out.getvalue()
