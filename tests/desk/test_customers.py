"""``customers import``: addresses checked, bad rows reported by line, duplicates merged."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from helpdeskd.desk.customers import (
    CustomerRow,
    customer_address,
    import_csv,
    parse_row,
    read_customers,
)
from helpdeskd.errors import UserError
from helpdeskd.store.contacts import ensure_contact
from helpdeskd.store.models import Contact
from tests.harness import Desk


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


def test_read_customers_reports_lines_and_keeps_the_good_rows(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(
        "email,name,plan\n"
        "ada@x.example,Ada,basic\n"
        "\n"  # a blank line: skipped, and counted
        "bad@@x.example,Bad,basic\n"
        '"cy@x.example","Cy\nthe second",basic\n'  # a cell over two lines
        "ADA@X.example,,premium\n"
        "bob@x.example,Bob,basic,extra\n"
        "dan@x.example\n"  # fewer cells than columns: the rest are empty
    )
    rows, bad, merged = read_customers(path)
    assert [(r.line, r.email, r.name, r.plan) for r in rows] == [
        (2, "ada@x.example", "Ada", "premium"),
        (6, "cy@x.example", "Cy\nthe second", "basic"),
        (9, "dan@x.example", None, None),
    ]
    assert [(p.line, p.text.split(":")[0]) for p in bad] == [
        (4, "'bad@@x.example' is not a valid address"),
        (8, "more cells than the header line has columns"),
    ]
    assert [p.line for p in merged] == [7]
    assert "repeats line 2" in merged[0].text


@pytest.mark.parametrize(
    "content, error",
    [
        ("name,plan\nAda,basic\n", "lacks the column 'email'"),
        ("", "lacks the column 'email'"),
        ("email,colour\na@x.example,red\n", "unknown column 'colour'"),
        ("email,name\na@x.example," + "n" * 200_000 + "\n", "c.csv: not CSV: field larger"),
    ],
)
def test_a_file_that_is_not_a_customer_list_is_one_line(tmp_path, content, error):
    path = tmp_path / "c.csv"
    path.write_text(content)
    with pytest.raises(UserError) as caught:
        read_customers(path)
    assert error in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes("email,name\nzo\xeb@x.example,Zo\xeb\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_customers(path)


async def test_import_adds_updates_and_keeps_what_a_row_leaves_out(make_config, tmp_path):
    config = make_config()
    path = tmp_path / "c.csv"
    path.write_text("email,name,plan,app\nada@x.example,Ada,basic,ada-api\n")
    async with Desk(config) as desk:
        async with desk.sessions.begin() as session:
            # A correspondent before they were a customer: their row is updated, not doubled.
            await ensure_contact(session, "Bob@X.example", "Bob from his mail")
            report = await import_csv(session, path)
        assert (report.created, report.updated) == (1, 0)
        path.write_text(
            "email,name,plan,app,status\n"
            "ADA@x.example,,premium,,\n"
            "bob@x.example,,basic,bob-web,deprovisioned\n"
        )
        async with desk.sessions.begin() as session:
            report = await import_csv(session, path)
        assert (report.created, report.updated, report.bad, report.merged) == (0, 2, (), ())
        async with desk.sessions() as session:
            contacts = {
                c.email: (c.name, c.plan, c.app, c.status, c.undeliverable)
                for c in await session.scalars(select(Contact))
            }
    assert contacts == {
        # No name in the row keeps the one known; an empty plan or app clears it.
        "ada@x.example": ("Ada", "premium", None, "active", False),
        "bob@x.example": ("Bob from his mail", "basic", "bob-web", "deprovisioned", False),
    }


async def test_import_of_thousands_takes_one_statement_per_chunk(make_config, tmp_path):
    config = make_config()
    path = tmp_path / "c.csv"
    path.write_text(
        "email,plan\n" + "".join(f"customer{i}@x{i % 7}.example,basic\n" for i in range(1200))
    )
    async with Desk(config) as desk:
        async with desk.sessions.begin() as session:
            first = await import_csv(session, Path(path))
        async with desk.sessions.begin() as session:
            again = await import_csv(session, Path(path))
    assert (first.created, first.updated, again.created, again.updated) == (1200, 0, 0, 1200)
