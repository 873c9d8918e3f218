"""``customers import``: addresses checked, bad rows reported by line, duplicates merged, the
file streamed in chunks of a few statements each, all or nothing."""

from __future__ import annotations

import os
import string
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, select

from helpdeskd.desk import customers
from helpdeskd.desk.customers import (
    CustomerRow,
    RowProblem,
    count_rows,
    customer_address,
    import_csv,
    parse_row,
    read_rows,
)
from helpdeskd.desk.privacy import digest, salt
from helpdeskd.errors import UserError
from helpdeskd.mail.parse import is_address
from helpdeskd.store.contacts import ensure_contact
from helpdeskd.store.db import SessionMaker, create_engine, engine_of, sessionmaker
from helpdeskd.store.models import Contact, ErasedAddress


@pytest.mark.parametrize(
    "text, stored",
    [
        ("ada@customer.example", "ada@customer.example"),
        ("  Ada@Customer.Example ", "ada@customer.example"),
        ("zoë@customer.example", "zoë@customer.example"),  # internationalised (RFC 6531)
        ("a@xn--bcher-kva.example", "a@xn--bcher-kva.example"),  # kept as it was written
        ("a@Bücher.example", "a@bücher.example"),
        ("ops+alerts@acme.test", "ops+alerts@acme.test"),  # .test: the documented examples
    ],
)
def test_customer_address_accepts(text, stored):
    assert customer_address(text) == stored


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "no address"),
        ("   ", "no address"),
        ("bad@@customer.example", "invalid characters"),
        ("eve,@customer.example", "invalid characters"),
        ("nobody@", "something after the @-sign"),
        ("@customer.example", "something before the @-sign"),
        ("no-at-sign.example", "@-sign"),
        ("a..b@customer.example", "two periods"),
        ("a@customer", "period"),  # no DNS is asked: a dotless domain is never a customer's
        ("a@nowhere.invalid", "special-use"),
        ("Ada <ada@customer.example>", "display name"),
        ('"a b"@customer.example', "Quoting"),
        ("a@[192.0.2.1]", "bracketed"),
        ("x" * 64 + "@" + ".".join(["y" * 60] * 3) + ".example", "too long"),
    ],
)
def test_customer_address_refuses_with_the_reason(text, reason):
    with pytest.raises(ValueError) as caught:
        customer_address(text)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def _whole_validation(text: str) -> str:
    """customer_address as it was before each domain was checked once: the whole address
    through validate_email, every time. The reference for the property below."""
    text = text.strip()
    if not text:
        raise ValueError("no address")
    try:
        checked = validate_email(text, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    written_domain = text.rpartition("@")[2]
    domain = checked.ascii_domain if written_domain.isascii() else checked.domain
    address = f"{checked.local_part}@{domain}".lower()
    if len(address) > 320:
        raise ValueError("longer than 320 characters")
    if not is_address(address):
        raise ValueError("not an address helpdeskd can write into a mail header")
    return address


_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
_ODD = ' "\\@<>,;:()[]\té\u0301ü例\u200b\u3002＠'  # quotes, specials, Unicode, space
_LOCAL = st.one_of(
    st.lists(st.text(alphabet=_ATEXT, min_size=1, max_size=25), min_size=1, max_size=4).map(
        ".".join
    ),
    st.text(alphabet=_ATEXT + ".", max_size=70),  # dots at the ends or doubled, or none at all
    st.text(alphabet=st.sampled_from(_ATEXT + "." + _ODD), max_size=70),
    st.text(alphabet=st.sampled_from(_ATEXT + ' @.\\"é'), max_size=30).map(lambda t: f'"{t}"'),
    st.sampled_from(["Info", "POSTMASTER", "ada", "Zoë", "x" * 64, "x" * 65, "a" * 200]),
)
_LABEL = st.one_of(
    st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,30}[a-zA-Z0-9])?", fullmatch=True),
    st.text(alphabet=string.ascii_letters + string.digits + "-", max_size=64),
    st.sampled_from(["example", "EXAMPLE", "test", "TEST", "123", "a_b", "[192.0.2.1]"]),
    st.sampled_from(["invalid", "localhost", "local", "onion", "arpa"]),  # special-use
    st.sampled_from(
        ["xn--bcher-kva", "XN--BCHER-KVA", "bücher", "BÜCHER", "例え", "ｅｘａｍｐｌｅ"]
    ),
    st.sampled_from(["xn--zz", "ab--cd"]),  # not IDNA
    # Each "a" is one more あ: 3 bytes in the Unicode form against 1 in the written form.
    st.integers(0, 56).map(lambda n: "xn--l8j" + "a" * n),
)


@st.composite
def _addresses(draw: st.DrawFn) -> str:
    """Addresses of every shape, many just under, at or over the 254 bytes email-validator
    allows, ASCII or not, some broken (no @-sign, several, a display name, whitespace), and
    some any text at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(alphabet=_ATEXT + "." + _ODD, max_size=80))
    local = draw(_LOCAL)
    separator = draw(st.sampled_from([".", ".", ".", "\u3002"]))
    top = draw(st.sampled_from(["example", "test", "COM"]) | _LABEL)
    domain = separator.join([*draw(st.lists(_LABEL, max_size=3)), top])
    if draw(st.booleans()):  # padded to a length near the limit: the local part, then labels
        missing = draw(st.integers(248, 258)) - len(local) - 1 - len(domain)
        longer = draw(st.integers(0, max(missing, 0)))
        local = "l" * longer + local
        missing -= longer
        while missing >= 2:
            label = "p" * min(63, missing - 1)
            domain = f"{label}.{domain}"
            missing -= len(label) + 1
    shape = draw(
        st.sampled_from(
            ("{l}@{d}",) * 12
            + (" {l}@{d}\t", "{l}", "{l}@", "{l}@@{d}", "{l}@{d}@{d}", "N <{l}@{d}>")
        )
    )
    address = shape.format(l=local, d=domain)
    return address.upper() if draw(st.integers(0, 9)) == 0 else address


def _outcome(check: Callable[[str], str], text: str) -> tuple[str, str]:
    try:
        return "address", check(text)
    except ValueError as exc:
        return "refused", str(exc)


_IDN = "xn--l8j" + "a" * 20 + ".example"  # 35 characters, 71 bytes in Unicode (21 あ)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(text=_addresses())
@example("l" * 237 + "@customer.example")  # 254 characters: the longest there may be
@example("l" * 238 + "@customer.example")
@example("l" * 182 + "@" + _IDN)  # 254 bytes in Unicode
@example("l" * 183 + "@" + _IDN)
@example(".ada@customer.example")  # stray dots: refused here, though is_address takes them
@example("ada.@customer.example")
@example("a..da@customer.example")
def test_customer_address_is_what_the_whole_validation_gives(text: str) -> None:
    """Checking each domain once changes nothing: the same address, or the same reason."""
    assert _outcome(customer_address, text) == _outcome(_whole_validation, text)


def test_parse_row_checks_status_and_column_sizes():
    row = parse_row(2, {"email": "Ada@X.example", "name": " Ada ", "status": "Deprovisioned"})
    assert row == CustomerRow(2, "ada@x.example", "Ada", None, None, None, "deprovisioned")
    with pytest.raises(ValueError, match="status must be active or deprovisioned, not 'paused'"):
        parse_row(3, {"email": "a@x.example", "status": "paused"})
    with pytest.raises(ValueError, match="plan is longer than 100 characters"):
        parse_row(4, {"email": "a@x.example", "plan": "p" * 101})
    with pytest.raises(ValueError, match=r"^'a@@x.example' is not a valid address: "):
        parse_row(5, {"email": "a@@x.example"})


def test_a_later_row_fills_in_what_it_gives():
    first = CustomerRow(2, "a@x.example", "Ada", "basic", "app-1", None, None)
    later = CustomerRow(7, "a@x.example", None, "premium", None, "addon-9", "deprovisioned")
    assert first.merged(later) == CustomerRow(
        2, "a@x.example", "Ada", "premium", "app-1", "addon-9", "deprovisioned"
    )


def _items(path: Path) -> list[tuple[int, str]]:
    return [
        (i.line, i.email if isinstance(i, CustomerRow) else i.text.split(":")[0])
        for i in read_rows(path)
    ]


def test_read_rows_yields_each_row_checked_in_file_order(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(
        "email,name,plan\n"
        "ada@x.example,Ada,basic\n"
        "\n"  # a blank line: skipped, and counted
        "bad@@x.example,Bad,basic\n"
        '"cy@x.example","Cy\nthe second",basic\n'  # a cell over two lines
        "ADA@X.example,,premium\n"  # merged by the import, which remembers every address
        "bob@x.example,Bob,basic,extra\n"
        "dan@x.example\n"  # fewer cells than columns: the rest are empty
    )
    assert _items(path) == [
        (2, "ada@x.example"),
        (4, "'bad@@x.example' is not a valid address"),
        (6, "cy@x.example"),
        (7, "ada@x.example"),
        (8, "more cells than the header line has columns"),
        (9, "dan@x.example"),
    ]
    assert count_rows(path) == 6  # the progress bar's total: the records, not the lines


@pytest.mark.parametrize(
    "content, error",
    [
        ("name,plan\nAda,basic\n", "lacks the column 'email'"),
        ("", "lacks the column 'email'"),
        ("email,colour\na@x.example,red\n", "unknown column 'colour'"),
        (
            "email,name\na@x.example,\nb@x.example," + "n" * 200_000 + "\n",
            "c.csv: not CSV: field larger than field limit (131072) (line 3)",
        ),
    ],
)
def test_a_file_that_is_not_a_customer_list_is_one_line(tmp_path, content, error):
    path = tmp_path / "c.csv"
    path.write_text(content)
    with pytest.raises(UserError) as caught:
        list(read_rows(path))
    assert error in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes("email,name\nzo\xeb@x.example,Zo\xeb\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        list(read_rows(path))
    assert count_rows(path) is None  # the import says what is wrong


def test_a_file_that_cannot_be_read_twice_is_not_counted(tmp_path):
    fifo = tmp_path / "c.csv"
    os.mkfifo(fifo)  # `customers import <(export-customers)`: counting would eat it
    assert count_rows(fifo) is None
    assert count_rows(tmp_path / "missing.csv") is None


@pytest.fixture
async def sessions(make_config) -> AsyncIterator[SessionMaker]:
    engine = create_engine(make_config().database.url)
    try:
        yield sessionmaker(engine)
    finally:
        await engine.dispose()


async def _contacts(sessions: SessionMaker) -> dict[str, tuple[object, ...]]:
    async with sessions() as session:
        return {
            c.email: (c.name, c.plan, c.app, c.addon_id, c.status)
            for c in await session.scalars(select(Contact))
        }


async def test_import_adds_updates_and_keeps_what_it_does_not_own(sessions, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("email,name,plan,app\nada@x.example,Ada,basic,ada-api\n")
    async with sessions.begin() as session:
        # A correspondent before they were a customer: their row is updated, not doubled.
        bob = await ensure_contact(session, "Bob@X.example", "Bob from his mail")
        # A complaint and bounces that the import must not wash away.
        bob.suppressed, bob.undeliverable, bob.bounce_count = True, True, 3
        report = await import_csv(session, path)
    assert (report.created, report.updated) == (1, 0)
    path.write_text(
        "email,name,plan,app,status\n"
        "ADA@x.example,,premium,,\n"
        "bob@x.example,,basic,bob-web,deprovisioned\n"
    )
    async with sessions.begin() as session:
        report = await import_csv(session, path)
    assert (report.created, report.updated, report.bad, report.merged) == (0, 2, (), ())
    assert await _contacts(sessions) == {
        # No name in the row keeps the one known; an empty plan or app clears it.
        "ada@x.example": ("Ada", "premium", None, None, "active"),
        "bob@x.example": ("Bob from his mail", "basic", "bob-web", None, "deprovisioned"),
    }
    async with sessions() as session:
        bob = await session.scalar(select(Contact).where(Contact.email == "bob@x.example"))
    assert bob is not None
    assert (bob.suppressed, bob.undeliverable, bob.bounce_count) == (True, True, 3)


async def test_a_file_read_in_chunks_merges_repeats_and_reports_in_line_order(
    sessions, tmp_path, monkeypatch
):
    monkeypatch.setattr(customers, "CHUNK", 3)  # lines 2-4, 5-7, 8-10, 11-12
    async with sessions.begin() as session:
        key = await salt(session, create=True)
        assert key is not None
        session.add(ErasedAddress(digest=digest(key, "eve@x.example"), pseudonym="erased-1@x"))
    path = tmp_path / "c.csv"
    path.write_text(
        "email,name,plan,app,addon_id,status\n"
        "ada@x.example,Ada,basic,,,\n"
        "eve@x.example,Eve,basic,,,\n"  # erased on request
        "bob@x.example,Bob,basic,bob-app,,\n"
        "ADA@X.example,,premium,,,deprovisioned\n"  # an address of an earlier chunk
        "cy@x.example,Cy,,,,\n"
        "cy@x.example,,gold,,,\n"  # a repeat within its chunk
        "nobody@,,,,,\n"
        "ada@x.example,,,ada-app,,\n"  # and again: an empty cell keeps what line 5 gave
        "EVE@x.example,Eve,,,,\n"
        "bob@x.example,,,,addon-9,\n"
        "dan@x.example,Dan,,,,,extra\n"
    )
    problems: list[RowProblem] = []
    advanced: list[int] = []
    async with sessions.begin() as session:
        report = await import_csv(session, path, problems=problems.append, advance=advanced.append)
    assert advanced == [3, 3, 3, 2]  # rows of the file, good or not
    repeat = "{} repeats line {} (addresses are not case-sensitive): merged into one customer"
    assert [(p.line, p.left_out, p.text) for p in problems] == [
        (3, True, "an address erased on request: not imported"),
        (5, False, repeat.format("ada@x.example", 2)),
        (7, False, repeat.format("cy@x.example", 6)),
        (8, True, "'nobody@' is not a valid address: There must be something after the @-sign."),
        (9, False, repeat.format("ada@x.example", 2)),
        (10, False, repeat.format("eve@x.example", 3)),
        (11, False, repeat.format("bob@x.example", 4)),
        (12, True, "more cells than the header line has columns"),
    ]
    assert (report.bad, report.merged) == ((), ())  # handed on as they came, not kept
    assert (report.created, report.updated, report.bad_rows, report.merged_rows) == (3, 0, 3, 5)
    assert await _contacts(sessions) == {
        "ada@x.example": ("Ada", "premium", "ada-app", None, "deprovisioned"),
        "bob@x.example": ("Bob", "basic", "bob-app", "addon-9", "active"),
        "cy@x.example": ("Cy", "gold", None, None, "active"),
    }


async def test_a_few_statements_a_chunk_and_a_file_broken_half_way_stores_nothing(
    sessions, tmp_path
):
    path = tmp_path / "c.csv"
    rows = "".join(f"customer{i}@x{i % 7}.example,{{plan}}\n" for i in range(1200))
    path.write_text("email,plan\n" + rows.format(plan="basic"))
    statements: list[str] = []
    engine = engine_of(sessions)

    def record(_conn, _cursor, statement, _params, _context, _many):  # type: ignore[no-untyped-def]
        statements.append(" ".join(statement.split()[:3]))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    reports = []
    for _ in range(2):  # all new, then all there
        statements.clear()
        async with sessions.begin() as session:
            reports.append(await import_csv(session, path))
        # 1,200 rows are 3 chunks: one upsert and one count of contacts each.
        assert statements.count("INSERT INTO contacts") == 3, statements
        assert statements.count("SELECT count(*) AS") == 3, statements
        assert len(statements) < 30, statements
    assert [(r.created, r.updated) for r in reports] == [(1200, 0), (0, 1200)]

    # Broken after two chunks were stored in the transaction: the whole import rolls back.
    path.write_text("email,plan\n" + rows.format(plan="premium") + "x@x.example," + "n" * 200_000)
    with pytest.raises(UserError, match=r"not CSV: field larger than field limit .* \(line 1202\)"):
        async with sessions.begin() as session:
            await import_csv(session, path)
    assert set((await _contacts(sessions)).values()) == {(None, "basic", None, None, "active")}
    path.write_text("email\nada@x.example\n")  # and the next one starts clean
    async with sessions.begin() as session:
        assert (await import_csv(session, path)).created == 1
