"""Notices with working unsubscribe, end to end over real SMTP, HTTP and databases."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.policy
import functools
import os
import re
import signal
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import text

from helpdeskd.clock import system_clock
from helpdeskd.errors import UserError
from helpdeskd.outbox.sender import OutboxSender
from helpdeskd.store.db import engine_of
from helpdeskd.web.unsubscribe import UnsubscribePages
from tests.harness import Desk, cli, cli_json
from tests.mailgen import customer_mail
from tests.servers.smtp import free_port

CSV = """email,name,plan,app,addon_id,status
ada@customer.example,Ada,premium,ada-api,addon-1,active
bob@customer.example,Bob,basic,bob-web,addon-2,active
cy@customer.example,Cy,basic,cy-old,addon-3,deprovisioned
"""


@pytest.fixture
def config(make_config, smtp_sink, tmp_path):
    config = make_config(smtp=smtp_sink)
    source = Path(config.source)
    source.write_text(
        source.read_text() + '\n[notices]\npostal_address = "Acme Inc., 1 Main St, Springfield"\n'
    )
    customers = tmp_path / "customers.csv"
    customers.write_text(CSV)
    assert cli(config, "customers", "import", str(customers)).stdout.startswith("3 customers added")
    from helpdeskd.config.load import load_config

    return load_config(source)


def sent_to(sink, address):
    return [d.message for d in sink.deliveries if address in d.recipients]


def link(message) -> str:
    [url] = re.findall(r"<(https?://[^>]+)>", message["List-Unsubscribe"])
    return url


def test_customers_import_and_list(config):
    rows = cli_json(config, "customers", "list")
    assert [(r["email"], r["status"], r["plan"]) for r in rows] == [
        ("ada@customer.example", "active", "premium"),
        ("bob@customer.example", "active", "basic"),
        ("cy@customer.example", "deprovisioned", "basic"),
    ]


def test_optional_notice_without_unsubscribe_link_is_refused(config, tmp_path):
    folder = tmp_path / "templates" / "notices"
    folder.mkdir(parents=True)
    (folder / "bare.txt.j2").write_text("Subject: News\n\nNo way out of this list.\n")
    source = Path(config.source)
    text = source.read_text().replace(
        "[paths]\n", f'[paths]\ntemplates = "{tmp_path / "templates"}"\n'
    )
    source.write_text(text)
    proc = cli(config, "notice", "send", "feature_update", "--template", "bare", check=False)
    assert proc.returncode == 1
    assert "unsubscribe" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert cli_json(config, "notice", "list") == []
    assert cli_json(config, "outbox", "list") == []


@contextlib.asynccontextmanager
async def serving_pages(config: Any, desk: Desk) -> AsyncIterator[Callable[[str], str]]:
    """Serve the unsubscribe and preferences pages on loopback; yield a function that turns a
    public link into one that reaches them."""
    port = free_port()
    app = web.Application()
    app.add_routes(UnsubscribePages(config, desk.sessions).routes())
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield lambda link: link.replace(config.service.public_url, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


async def test_one_click_opt_out_then_optional_skips_and_critical_reaches(config, smtp_sink):
    sent = cli(
        config,
        "notice",
        "send",
        "feature_update",
        "--template",
        "feature_update",
        "--var",
        "message=Connection pooling is here.",
    )
    assert "queued 2 of 3" in sent.stdout and "1 deprovisioned" in sent.stdout
    async with Desk(config) as desk:
        await desk.send_all()
        [ada] = sent_to(smtp_sink, "ada@customer.example")
        assert sent_to(smtp_sink, "cy@customer.example") == []
        assert ada["From"].addresses[0].addr_spec == "notices@acme.test"
        assert ada["Reply-To"].addresses[0].addr_spec == "support@acme.test"
        assert ada["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "mailto:unsubscribe+" in ada["List-Unsubscribe"]
        assert "feature-update.notices.acme.test" in ada["List-Id"]
        body = ada.get_content()
        assert link(ada) in body and "Acme Inc., 1 Main St" in body

        async with serving_pages(config, desk) as local, aiohttp.ClientSession() as http:
            url = local(link(ada))
            async with http.get(url) as response:  # a link scanner: changes nothing
                assert response.status == 200 and "<form" in await response.text()
            assert (
                cli_json(config, "contacts", "show", "ada@customer.example")["preferences"][
                    "feature_update"
                ]
                == "subscribed"
            )
            for _ in range(2):  # RFC 8058 one-click, twice: idempotent
                async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as response:
                    assert response.status == 200
                    assert "You are unsubscribed" in await response.text()
            forged = url[:-3] + ("aaa" if not url.endswith("aaa") else "bbb")
            async with http.post(forged, data={"List-Unsubscribe": "One-Click"}) as response:
                assert response.status == 400
        prefs = cli_json(config, "contacts", "show", "ada@customer.example")["preferences"]
        assert prefs["feature_update"].startswith("opted out (one-click")
        assert prefs["maintenance"] == "always (critical)"

        again = cli(config, "notice", "send", "feature_update", "--template", "feature_update")
        assert "queued 1 of 3" in again.stdout and "1 opted out" in again.stdout
        critical = cli(
            config,
            "notice",
            "send",
            "incident",
            "--template",
            "incident",
            "--var",
            "title=Database outage",
            "--var",
            "status=investigating",
            "--var",
            "message=We are on it.",
            "--var",
            "status_url=https://status.acme.test",
        )
        assert "queued 2 of 3" in critical.stdout
        await desk.send_all()
    ada_mails = sent_to(smtp_sink, "ada@customer.example")
    assert [m["Subject"] for m in ada_mails][-1].endswith("Database outage")
    assert ada_mails[-1]["List-Unsubscribe"] is None  # critical: no opting out
    assert len(ada_mails) == 2
    rows = cli_json(config, "notice", "list")
    assert [(r["category"], r["sent"], r["skipped"]) for r in rows] == [
        ("feature_update", 2, 1),
        ("feature_update", 1, 2),
        ("incident", 2, 1),
    ]


async def test_suppression_is_checked_again_at_send_time(config, smtp_sink):
    cli(config, "notice", "send", "survey", "--template", "survey")
    async with Desk(config) as desk:
        # Bob opts out by mail (the mailto: link) after the notice was queued.
        rows = cli_json(config, "outbox", "list")
        assert len(rows) == 2
        from sqlalchemy import select

        from helpdeskd.desk.notices import unsubscribe_mailto
        from helpdeskd.store.models import Contact

        async with desk.sessions() as session:
            bob = await session.scalar(
                select(Contact).where(Contact.email == "bob@customer.example")
            )
        mailto = unsubscribe_mailto(config, bob.id, "survey")
        [outcome] = await desk.ingest(
            [customer_mail(1, sender="bob@customer.example", to=mailto, subject="unsubscribe")]
        )
        assert outcome.outcome == "unsubscribe" and "opted out of survey" in outcome.reason
        from helpdeskd.desk import notices

        await OutboxSender(desk.sessions, config.smtp, recheck=notices.recheck).drain(10)
    assert sent_to(smtp_sink, "bob@customer.example") == []
    assert len(sent_to(smtp_sink, "ada@customer.example")) == 1
    [row] = cli_json(config, "notice", "list")
    assert (row["sent"], row["skipped"]) == (1, 2)  # Cy deprovisioned, Bob opted out


async def test_an_opt_out_while_the_batch_goes_out_is_honoured(config, smtp_sink):
    """The sender reads a batch of due rows at once; a notice's opt-outs are looked up again
    just before each of its mails goes, not only when the batch was read."""
    from sqlalchemy import select

    from helpdeskd.desk import notices
    from helpdeskd.store.models import Contact

    cli(config, "notice", "send", "survey", "--template", "survey")  # Ada and Bob
    rows = sorted(cli_json(config, "outbox", "list"), key=lambda r: r["id"])
    first, second = (r["recipients"][0]["address"] for r in rows)
    smtp_sink.handler.delay = 1.0  # each mail takes a second at the relay
    await asyncio.sleep(0.2)  # both rows are due now
    async with Desk(config) as desk:
        # one connection: the mails go one after the other (with more they leave together)
        smtp = dataclasses.replace(config.smtp, connections=1)
        sender = OutboxSender(desk.sessions, smtp, recheck=notices.recheck)
        sending = asyncio.create_task(sender.run_once())
        await asyncio.sleep(0.3)  # the batch is read; the first mail is at the relay
        assert not sending.done()
        async with desk.sessions() as session, session.begin():  # no lock held while SMTP talks
            contact = await session.scalar(select(Contact).where(Contact.email == second))
            assert await notices.opt_out(session, contact, "survey", via="test")
        assert await sending == 2
        await sender.close()
    assert [d.recipients for d in smtp_sink.deliveries] == [[first]]
    states = {r["recipients"][0]["address"]: r["state"] for r in cli_json(config, "outbox", "list")}
    assert states == {first: "sent", second: "skipped"}


async def test_the_daemons_outbox_dkim_signs_notices_including_list_headers(config, smtp_sink):
    import dkim

    from helpdeskd.config.load import load_config
    from helpdeskd.desk import notices
    from tests.config.support import rsa_key_pair
    from tests.outbox.test_dkim import _dns

    key = rsa_key_pair()
    key_file = Path(config.source).parent / "dkim.pem"
    key_file.write_text(key.pem)
    source = Path(config.source)
    source.write_text(
        source.read_text() + f'\n[dkim]\ndomain = "acme.test"\nselector = "s1"\n'
        f'key_file = "{key_file}"\n'
    )
    config = load_config(source)
    cli(config, "notice", "send", "feature_update", "--template", "feature_update")
    async with Desk(config) as desk:
        sender = OutboxSender(desk.sessions, config.smtp, recheck=notices.recheck, dkim=config.dkim)
        await sender.drain(20)
    [delivery] = [d for d in smtp_sink.deliveries if "ada@customer.example" in d.recipients]
    assert delivery.data.startswith(b"DKIM-Signature:")
    assert dkim.verify(delivery.data, dnsfunc=_dns(key, b"s1._domainkey.acme.test."))
    signed = delivery.data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    h = re.search(rb"\bh=([^;]+)", signed).group(1).replace(b" ", b"").lower()
    assert b"list-unsubscribe" in h and b"list-unsubscribe-post" in h


async def test_preferences_page_shows_and_saves_every_optional_category(config):
    from sqlalchemy import select

    from helpdeskd.desk.noticemail import preferences_url
    from helpdeskd.store.models import Contact

    async with Desk(config) as desk:
        async with desk.sessions() as session:
            ada = await session.scalar(
                select(Contact).where(Contact.email == "ada@customer.example")
            )
        async with serving_pages(config, desk) as local, aiohttp.ClientSession() as http:
            url = local(preferences_url(config, ada.id))
            async with http.get(url) as response:
                page = await response.text()
            assert response.status == 200
            assert 'value="feature_update"' in page and 'value="survey"' in page
            assert "maintenance" in page  # named as always sent, not offered
            async with http.post(url, data={"subscribe": "survey"}) as response:
                assert response.status == 200 and "Saved." in await response.text()
            async with http.get(url.replace("-*.", "-survey.")) as response:
                assert response.status == 400  # a token for one category is not this page
    prefs = cli_json(config, "contacts", "show", "ada@customer.example")["preferences"]
    assert prefs["survey"] == "subscribed" and prefs["feature_update"].startswith("opted out (web")


@pytest.mark.parametrize(
    "opted, category, covered, reason",
    [
        (set(), "survey", False, None),
        ({"feature_update"}, "survey", False, None),
        ({"survey"}, "survey", True, "opted out of survey"),
        ({"*"}, "survey", True, "opted out of all optional notices"),
        ({"*"}, "a_category_added_later", True, "opted out of all optional notices"),
        ({"*", "survey"}, "survey", True, "opted out of survey"),
    ],
)
def test_an_opt_out_of_all_categories_covers_each(opted, category, covered, reason):
    from helpdeskd.desk.notices import covers, opt_out_reason
    from helpdeskd.mail.tokens import ALL_CATEGORIES

    assert ALL_CATEGORIES == "*"
    assert covers(opted, category) is covered
    if covered:
        assert opt_out_reason(opted, category) == reason


# --- large notices: chunks, one transaction ---------------------------------------------------

SEND_AT = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
# (email, name, plan, status, undeliverable, suppressed, opted out of), in the order of their ids.
PEOPLE = [
    ("ada@customer.example", "Ada", "premium", "active", False, False, None),
    ("bob@customer.example", "Bob", "basic", "active", False, False, "feature_update"),
    ("cy@customer.example", "Cy", "basic", "active", False, False, "*"),
    ("dee@customer.example", "Dee", "basic", "active", False, False, None),
    ("old@@customer.example", "Old", "basic", "active", False, False, None),  # unaddressable
    ("eve@customer.example", "Eve", "basic", "active", True, False, None),  # hard-bounced
    ("fay@customer.example", "Fay", "basic", "active", False, True, None),  # complained
    ("gus@customer.example", "Gus", "basic", "deprovisioned", False, False, None),
    ("hal@customer.example", "Hal", "doomed", "active", False, False, None),
    ("ivy@customer.example", "", "basic", "active", False, False, None),
    ("zed@elsewhere.example", "Zed", None, None, False, False, None),  # a correspondent
]
INCIDENT_VARS = {"title": "Outage", "status": "identified", "message": "-", "status_url": "-"}


@pytest.fixture
async def crowd(make_config, tmp_path):
    """A config whose notices are paced 4 a second, and its database with PEOPLE in it."""
    from sqlalchemy import select

    from helpdeskd.config.load import load_config
    from helpdeskd.desk.notices import opt_out
    from helpdeskd.store.db import create_engine, sessionmaker
    from helpdeskd.store.models import Contact

    templates = tmp_path / "templates"
    (templates / "notices").mkdir(parents=True)
    # Fails for the one customer on the "doomed" plan: a template that breaks for one recipient.
    (templates / "notices" / "fragile.txt.j2").write_text(
        "Subject: News\n\nHello {{ recipient.name }},\n"
        '{% if recipient.plan == "doomed" %}{{ no_such_variable }}{% endif %}\n'
        '{% include "notices/_footer.txt.j2" %}\n'
    )
    config = make_config(templates=templates)
    source = Path(config.source)
    source.write_text(source.read_text() + '\n[notices]\npostal_address = "Acme Inc., 1 Main St"\n')
    config = load_config(source)
    engine = create_engine(config.database.url)
    sessions = sessionmaker(engine)
    async with sessions.begin() as session:
        for email, name, plan, status, undeliverable, complained, _ in PEOPLE:
            session.add(
                Contact(
                    email=email,
                    name=name,
                    plan=plan,
                    status=status,
                    undeliverable=undeliverable,
                    suppressed=complained,
                )
            )
            await session.flush()  # ids in PEOPLE's order
        for email, *_, category in PEOPLE:
            if category is not None:
                contact = await session.scalar(select(Contact).where(Contact.email == email))
                await opt_out(session, contact, category, via="test")
    try:
        yield config, sessions
    finally:
        await engine.dispose()


async def _queue(
    way,
    config,
    sessions,
    *,
    category,
    template,
    extra=None,
    dry_run=False,
    renderers=0,
    progress=None,
):
    """Queue a notice the WAY named, two recipients a chunk, rendered in this process or by
    RENDERERS processes (as a large notice is), its steps shown to PROGRESS (if given)."""
    from helpdeskd.desk.noticequeue import no_progress, queue_notice, send_notice
    from helpdeskd.desk.notices import Audience
    from helpdeskd.mail.render import Renderer

    renderer = Renderer(config.paths.templates)
    if way == "notice send":
        return await send_notice(
            sessions,
            config,
            renderer,
            category=category,
            template=template,
            audience=Audience(),
            send_at=SEND_AT,
            extra=extra,
            dry_run=dry_run,
            progress=progress or no_progress,
            chunk=2,
            renderers=renderers,
        )
    async with sessions.begin() as session:
        return await queue_notice(
            session,
            config,
            renderer,
            category=category,
            template=template,
            audience=Audience(),
            now=system_clock(),
            send_at=SEND_AT,
            extra=extra,
            dry_run=dry_run,
            progress=progress or no_progress,
            chunk=2,
            renderers=renderers,
        )


async def _stored(sessions) -> dict[str, int]:
    from sqlalchemy import func, select

    from helpdeskd.store.models import Event, Notice, Outbox, OutboxRecipient

    async with sessions() as session:
        return {
            model.__tablename__: await session.scalar(select(func.count()).select_from(model))
            for model in (Notice, Outbox, OutboxRecipient, Event)
        }


@pytest.mark.parametrize("renderers", [0, 2])
@pytest.mark.parametrize("way", ["notice send", "queue_notice"])
async def test_a_notice_of_many_chunks_is_queued_whole_paced_and_suppressed(crowd, way, renderers):
    from sqlalchemy import select

    from helpdeskd.desk.notices import unsubscribe_url
    from helpdeskd.store.models import Contact, Event, Notice, Outbox

    config, sessions = crowd
    before = await _stored(sessions)
    queue = functools.partial(_queue, way, config, sessions, renderers=renderers)
    dry = await queue(category="feature_update", template="feature_update", dry_run=True)
    assert await _stored(sessions) == before  # a dry run stores nothing
    report = await queue(category="feature_update", template="feature_update")
    critical = await queue(category="incident", template="incident", extra=INCIDENT_VARS)
    # Ten customers (the correspondent is none) in five chunks of two; opt-outs on both sides
    # of the first chunk boundary, the unaddressable one and the suppressed ones further on.
    assert (dry.recipients, dry.queued, dry.failed, dry.skipped, dry.notice_id) == (
        report.recipients,
        report.queued,
        report.failed,
        report.skipped,
        None,
    )
    assert (report.recipients, report.queued, report.failed) == (10, 4, 1)
    assert report.skipped["opted out"] == 2 and report.skipped["complained (ARF)"] == 1
    assert report.skipped["deprovisioned"] == 1 and sum(report.skipped.values()) == 5
    assert (critical.recipients, critical.queued, critical.failed) == (10, 7, 1)
    assert sum(critical.skipped.values()) == 2  # hard-bounced and deprovisioned only
    expected = {
        report.notice_id: ["ada", "dee", "hal", "ivy"],
        critical.notice_id: ["ada", "bob", "cy", "dee", "fay", "hal", "ivy"],
    }
    async with sessions() as session:
        ids = {c.email: c.id for c in await session.scalars(select(Contact))}
        for notice_id, names in expected.items():
            notice = await session.get(Notice, notice_id)
            rows = list(
                await session.scalars(
                    select(Outbox).where(Outbox.notice_id == notice_id).order_by(Outbox.id)
                )
            )
            pending = [row for row in rows if row.state == "pending"]
            [failed] = [row for row in rows if row.state == "failed"]
            addresses = [f"{name}@customer.example" for name in names]
            assert [r.recipients[0].address for r in pending] == addresses
            # Every row is due at the start: the outbox paces the class, in the rows' order.
            assert [r.next_attempt_at for r in pending] == [SEND_AT] * len(names)
            for row, address in zip(pending, addresses, strict=True):
                mail = email.message_from_bytes(row.data, policy=email.policy.default)
                assert mail["To"] == address and mail["Message-ID"] == row.message_id
                assert mail["Date"].datetime == SEND_AT
                if notice.critical:
                    assert mail["List-Unsubscribe"] is None
                else:  # each recipient's own link, in the header and in the text
                    url = unsubscribe_url(config, ids[address], "feature_update")
                    assert mail["List-Unsubscribe"].startswith(f"<{url}>, <mailto:unsubscribe+")
                    assert url in mail.get_content()
            assert failed.recipients[0].address == "old@@customer.example"
            assert failed.recipients[0].state == "failed" and failed.data == b""
            told = report if notice_id == report.notice_id else critical
            assert (notice.skipped, notice.subject) == (sum(told.skipped.values()), told.subject)
        events = list(await session.scalars(select(Event).where(Event.type == "notice_queued")))
        assert [(e.detail["queued"], e.detail["failed"]) for e in events] == [(4, 1), (7, 1)]
        bad = select(Event).where(Event.type == "delivery_failed")
        assert [e.detail["recipient"] for e in await session.scalars(bad)] == [
            "old@@customer.example"
        ] * 2


async def test_the_send_time_recheck_names_each_skipped_contact_with_its_reason(crowd):
    """What the sender asks before a notice's mail goes (notices.recheck): every reason, for
    an optional category and a critical one, from the same decision as at queue time."""
    from helpdeskd.desk.notices import recheck

    _config, sessions = crowd
    addresses = [person[0] for person in PEOPLE] + ["nobody@customer.example"]
    async with sessions() as session:
        assert await recheck(session, "feature_update", False, addresses) == {
            "bob@customer.example": "opted out of feature_update",
            "cy@customer.example": "opted out of all optional notices",
            "eve@customer.example": "suspended for bouncing",
            "fay@customer.example": "complained (ARF)",
            "gus@customer.example": "deprovisioned",
        }
        assert await recheck(session, "incident", True, addresses) == {
            "eve@customer.example": "suspended for bouncing",
            "gus@customer.example": "deprovisioned",
        }


@pytest.mark.parametrize("renderers", [0, 2])
@pytest.mark.parametrize("way", ["notice send", "queue_notice"])
async def test_a_notice_that_fails_midway_queues_nothing(crowd, way, renderers):
    from sqlalchemy import event
    from sqlalchemy.exc import DBAPIError

    from helpdeskd.errors import TemplateError

    config, sessions = crowd
    before = await _stored(sessions)
    queue = functools.partial(_queue, way, config, sessions, renderers=renderers)

    # A template that fails for Hal, in the fifth chunk of two.
    with pytest.raises(TemplateError, match=r"no_such_variable.*hal@customer\.example"):
        await queue(category="feature_update", template="fragile")
    assert await _stored(sessions) == before

    # The database refuses Hal's row, after the rows of the chunks before his were inserted.
    inserts: list[str] = []

    def seen(_conn, _cursor, statement, *_args):
        if statement.startswith("INSERT INTO outbox_recipients"):
            inserts.append(statement)

    engine = engine_of(sessions)
    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    async with sessions.begin() as session:
        if engine.dialect.name == "postgresql":
            await session.execute(
                text(
                    "CREATE FUNCTION refuse_hal() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.address = 'hal@customer.example' THEN RAISE EXCEPTION 'refused'; "
                    "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            await session.execute(
                text(
                    "CREATE TRIGGER refuse_hal BEFORE INSERT ON outbox_recipients "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_hal()"
                )
            )
        else:
            await session.execute(
                text(
                    "CREATE TRIGGER refuse_hal BEFORE INSERT ON outbox_recipients "
                    "WHEN NEW.address = 'hal@customer.example' "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
    with pytest.raises(DBAPIError, match="refused"):
        await queue(category="incident", template="incident", extra=INCIDENT_VARS)
    # Chunks 1-4 went in (the third with Old's failed row only), Hal's fifth was refused.
    assert len(inserts) == 5
    assert await _stored(sessions) == before


class _DiesWhenRendered:
    """A template variable that kills the process rendering it (as the OOM killer would)."""

    def __str__(self) -> str:
        os.kill(os.getpid(), signal.SIGKILL)
        return ""


@pytest.mark.parametrize("way", ["notice send", "queue_notice"])
async def test_a_renderer_process_that_dies_queues_nothing(crowd, way):
    config, sessions = crowd
    before = await _stored(sessions)
    with pytest.raises(UserError, match=r"a process rendering the notice stopped.*nothing was"):
        await _queue(
            way,
            config,
            sessions,
            category="feature_update",
            template="feature_update",
            extra={"message": _DiesWhenRendered()},
            renderers=2,
        )
    assert await _stored(sessions) == before


async def test_notice_send_holds_sqlites_lock_only_to_insert_and_postgresqls_rows_as_it_renders(
    crowd,
):
    """On SQLite, ``notice send`` renders every chunk (its ``rendering`` step) before one write
    transaction inserts them all (``queueing``); on PostgreSQL, where an open write transaction
    keeps no other writer waiting, it has the one step, each chunk inserted while the next ones
    are rendered. Either way the whole notice is queued."""
    from contextlib import contextmanager

    from helpdeskd.store.db import engine_of

    config, sessions = crowd
    stages: list[str] = []

    @contextmanager
    def progress(label, _total):
        stages.append(label)
        yield lambda _count: None

    before = await _stored(sessions)
    report = await _queue(
        "notice send",
        config,
        sessions,
        category="feature_update",
        template="feature_update",
        extra={"message": "hello"},
        progress=progress,
    )
    after = await _stored(sessions)
    postgresql = engine_of(sessions).dialect.name == "postgresql"
    assert stages == (["queueing"] if postgresql else ["rendering", "queueing"])
    assert after["notices"] == before["notices"] + 1
    assert after["outbox"] - before["outbox"] == report.queued + report.failed
    assert report.queued > 0


def test_the_command_line_names_the_recipient_a_template_fails_for(crowd):
    config, _sessions = crowd
    proc = cli(config, "notice", "send", "feature_update", "--template", "fragile", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "fragile.txt.j2" in line and "hal@customer.example" in line
    assert "nothing was queued" in line
    assert cli_json(config, "notice", "list") == []
    dry = cli(
        config, "notice", "send", "feature_update", "--template", "feature_update", "--dry-run"
    )
    assert "would queue 4 of 10 recipients" in dry.stdout and "2 opted out" in dry.stdout
    assert cli_json(config, "notice", "list") == []
