"""Hostile suite, operations: opt-outs, bad customer data, and what the public listener shows.

Issue 19, properties 6 (the opt-out half), 8 and 11, each tried as a customer, an import file or
an outsider would, through the real CLI, the real unsubscribe pages, real mail through
``ingest`` and a real daemon over real sockets, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from helpdeskd.config.load import load_config
from helpdeskd.desk import notices
from helpdeskd.mail.tokens import ALL_CATEGORIES, UnsubscribeToken, sign_unsubscribe
from helpdeskd.outbox.sender import OutboxSender
from helpdeskd.store.models import Contact
from tests.desk.test_notices import serving_pages
from tests.harness import Desk, cli, cli_json
from tests.mailgen import customer_mail
from tests.servers.smtp import SmtpSink, free_port
from tests.system.test_daemon import _wait_for_log, daemon_log, start_daemon

INCIDENT = (
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


def _with_notices(config):
    source = Path(config.source)
    source.write_text(
        source.read_text() + '\n[notices]\npostal_address = "Acme Inc., 1 Main St, Springfield"\n'
    )
    return load_config(source)


def _subjects(sink, address: str) -> list[str]:
    return [d.message["Subject"] for d in sink.deliveries if address in d.recipients]


# --- 6. An opt-out of every optional category holds on every path -----------------------------


async def _opt_out_of_everything(path: str, config, desk: Desk, token: str) -> None:
    """Opt out with TOKEN (for ALL_CATEGORIES) by PATH, as a customer would."""
    link = f"{config.service.public_url}/unsubscribe/{token}"
    if path == "mail":  # mail to unsubscribe+TOKEN@, as the mailto: link sends it
        mail = customer_mail(1, sender="out@customer.example", to=f"unsubscribe+{token}@acme.test")
        [outcome] = await desk.ingest([mail])
        assert outcome.outcome == "unsubscribe", outcome
        return
    async with serving_pages(config, desk) as local, aiohttp.ClientSession() as http:
        if path == "web":  # a person opens the link (nothing changes), then presses the button
            async with http.get(local(link)) as response:
                assert response.status == 200 and "<form" in await response.text()
        # RFC 8058 one-click is this POST alone: no page seen, no cookie, no login.
        async with http.post(local(link), data={"List-Unsubscribe": "One-Click"}) as response:
            assert response.status == 200 and "You are unsubscribed" in await response.text()


@pytest.mark.parametrize("path", ["web", "one-click", "mail"])
async def test_an_opt_out_of_all_optional_notices_holds_on_every_path(
    make_config, smtp_sink, tmp_path, path
):
    config = _with_notices(make_config(smtp=smtp_sink))
    customers = tmp_path / "customers.csv"
    customers.write_text("email,name\nout@customer.example,Out\nstays@customer.example,Stays\n")
    cli(config, "customers", "import", str(customers))
    # Queued before the opt-out: the sender's check at send time must catch it.
    assert "queued 2 of 2" in cli(config, "notice", "send", "survey", "--template", "survey").stdout
    async with Desk(config) as desk:
        async with desk.sessions() as session:
            out = await session.scalar(
                select(Contact.id).where(Contact.email == "out@customer.example")
            )
        token = sign_unsubscribe(config.service.secret_keys, UnsubscribeToken(out, ALL_CATEGORIES))
        await _opt_out_of_everything(path, config, desk, token)
        sender = OutboxSender(desk.sessions, config.smtp, recheck=notices.recheck)  # the daemon's
        await sender.drain(20)
        later = cli(config, "notice", "send", "feature_update", "--template", "feature_update")
        assert "queued 1 of 2" in later.stdout and "1 opted out" in later.stdout, later.stdout
        assert "queued 2 of 2" in cli(config, "notice", "send", *INCIDENT).stdout
        await sender.drain(20)
    got = _subjects(smtp_sink, "out@customer.example")
    assert len(got) == 1 and got[0].endswith("Database outage"), got  # the critical one only
    assert len(_subjects(smtp_sink, "stays@customer.example")) == 3
    prefs = cli_json(config, "contacts", "show", "out@customer.example")["preferences"]
    assert prefs["survey"].endswith("all optional notices)"), prefs
    assert prefs["incident"] == "always (critical)"
    rows = cli_json(config, "notice", "list")
    assert [(r["category"], r["sent"], r["skipped"]) for r in rows] == [
        ("survey", 1, 1),
        ("feature_update", 1, 1),
        ("incident", 2, 0),
    ]


# --- 8. Bad customer data never blocks a notice -------------------------------------------------


async def test_a_bad_address_never_blocks_a_notice_for_the_others(make_config, tmp_path):
    sink = SmtpSink()  # a relay without SMTPUTF8 (aiosmtpd offers it only when asked)
    sink.start()
    try:
        config = _with_notices(make_config(smtp=sink))
        customers = tmp_path / "customers.csv"
        customers.write_text(
            "email,name\nada@customer.example,Ada\nzoë@customer.example,Zoë\n"
            "cy@customer.example,Cy\n"
        )
        cli(config, "customers", "import", str(customers))
        async with Desk(config) as desk:
            # An address stored before imports were checked, as an older release let in.
            async with desk.sessions() as session, session.begin():
                session.add(
                    Contact(email="old@@customer.example", status="active", undeliverable=False)
                )
            sent = cli(config, "notice", "send", *INCIDENT, check=False)  # critical: everyone
            assert sent.returncode == 0 and "Traceback" not in sent.stderr, sent.stderr
            await OutboxSender(desk.sessions, config.smtp, recheck=notices.recheck).drain(20)
    finally:
        sink.stop()
    assert sorted(r for d in sink.deliveries for r in d.recipients) == [
        "ada@customer.example",
        "cy@customer.example",
    ]
    [row] = cli_json(config, "notice", "list")
    assert (row["sent"], row["failed"]) == (2, 2)
    failed = {
        r["address"]: r["last_error"]
        for row in cli_json(config, "outbox", "list")
        for r in row["recipients"]
        if r["state"] == "failed"
    }
    assert failed.keys() == {"old@@customer.example", "zoë@customer.example"}
    assert failed["old@@customer.example"].startswith("cannot be addressed")
    assert "SMTPUTF8" in failed["zoë@customer.example"]


IMPORT = """\
email,name,plan,status
ada@customer.example,Ada,premium,active
bad@@customer.example,Bad,basic,active
Ada@Customer.Example,,enterprise,
"eve,@customer.example",Eve,basic,active
bob@customer.example,Bob,basic,paused
zoë@customer.example,Zoë,basic,active
cy@customer.example,Cy,basic,active
"""


def test_an_import_reports_each_bad_row_and_keeps_the_good_ones(make_config, tmp_path):
    config = make_config()
    customers = tmp_path / "customers.csv"
    customers.write_text(IMPORT)
    proc = cli(config, "customers", "import", str(customers))
    assert proc.stdout == (
        "3 customers added, 0 updated, 1 duplicate rows merged, 3 bad rows left out\n"
    )
    lines = proc.stderr.splitlines()
    assert [line.split(":")[1] for line in lines] == ["3", "4", "5", "6"], lines
    assert "bad@@customer.example" in lines[0] and "left out" in lines[0]
    assert "merged" in lines[1] and "line 2" in lines[1]
    assert "'eve,@customer.example'" in lines[2]
    assert "status" in lines[3] and "paused" in lines[3]
    listed = {r["email"]: (r["name"], r["plan"]) for r in cli_json(config, "customers", "list")}
    assert listed == {
        "ada@customer.example": ("Ada", "enterprise"),
        "cy@customer.example": ("Cy", "basic"),
        "zoë@customer.example": ("Zoë", "basic"),
    }


def test_an_import_with_no_good_row_says_so_in_one_line(make_config, tmp_path):
    config = make_config()
    customers = tmp_path / "customers.csv"
    customers.write_text("email,name\nnobody@,Nobody\n@nowhere.example,Nowhere\n")
    proc = cli(config, "customers", "import", str(customers), check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    *rows, last = proc.stderr.splitlines()
    assert len(rows) == 2 and all("left out" in row for row in rows)
    assert last == f"helpdeskd: {customers}: no customer imported: every row was bad (see above)"


# --- 11. The operations surface ---------------------------------------------------------------


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _serving(config, http: str):
    source = Path(config.source)
    source.write_text(source.read_text() + f"\n[http]\n{http}\n")
    config = load_config(source)
    proc = start_daemon(config)
    _wait_for_log(config, "daemon_started")
    return config, proc


def _stop(config, proc) -> None:
    proc.terminate()
    assert proc.wait(30) == 0, daemon_log(config)


def test_metrics_and_health_are_never_public_without_the_token(make_config, smtp_sink, tmp_path):
    public, private = free_port(), free_port()
    token = "op-token-" + "x" * 24
    token_file = tmp_path / "admin-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    config, proc = _serving(
        make_config(smtp=smtp_sink),
        f'listen = "127.0.0.1:{public}"\nmetrics_listen = "127.0.0.1:{private}"\n'
        f'admin_token_file = "{token_file}"',
    )
    try:
        site = f"http://127.0.0.1:{public}"
        unknown = _get(site + "/no-such-page")
        for path in ("/metrics", "/healthz"):
            # As a reverse proxy in front of the public listener passes them on.
            assert _get(site + path) == unknown  # a 404, alike in every byte
            assert _get(site + path, token="wrong-" + token)[0] == 404
            assert _get(site + path, token=token)[0] == 200
            assert _get(f"http://127.0.0.1:{private}{path}")[0] == 200  # the private one
        assert _get(site + "/status")[0] == 200  # the public pages still are
    finally:
        _stop(config, proc)


def test_without_a_token_the_public_listener_has_no_metrics_or_health(make_config, smtp_sink):
    port = free_port()
    config, proc = _serving(make_config(smtp=smtp_sink), f'listen = "127.0.0.1:{port}"')
    try:
        for path in ("/metrics", "/healthz"):
            assert _get(f"http://127.0.0.1:{port}{path}")[0] == 404
            assert _get(f"http://127.0.0.1:{port}{path}", token="anything-at-all-123")[0] == 404
    finally:
        _stop(config, proc)


def test_init_keeps_state_database_and_keys_from_other_users(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HELPDESKD_CONFIG"}
    target = tmp_path / "etc" / "helpdeskd.toml"
    # A permissive umask, as a shell may have (the child inherits it): the modes must not
    # depend on it.
    umask = os.umask(0o002)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "helpdeskd", "init", "--config", str(target)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        os.umask(umask)
    assert proc.returncode == 0, proc.stderr
    etc = tmp_path / "etc"
    modes = {
        path: stat.S_IMODE(path.stat().st_mode)
        for path in (etc / "state", etc / "state" / "helpdeskd.db", etc / "secret.key")
    }
    assert modes == {
        etc / "state": 0o700,
        etc / "state" / "helpdeskd.db": 0o600,
        etc / "secret.key": 0o600,
    }
