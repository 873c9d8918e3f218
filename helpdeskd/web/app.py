"""The daemon's small HTTP side (aiohttp inside the daemon's loop): health and metrics.

Started with ``AppRunner`` (not ``run_app``, which would take the daemon's signals). ``/metrics``
and ``/healthz`` tell how the service runs (mailboxes, their errors, queue depths): they are
served without a token only on their own private address (``[http] metrics_listen``). On the
public listener, which a reverse proxy exposes, they answer 404 — like any unknown path — unless
``[http] admin_token_file`` is set and the request carries ``Authorization: Bearer TOKEN``.
Each request reads the clock it was given once.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from helpdeskd import __version__
from helpdeskd.clock import Clock, system_clock
from helpdeskd.config.secrets import Secret
from helpdeskd.config.settings import Config
from helpdeskd.errors import HelpdeskError
from helpdeskd.oauth.credential import Credentials
from helpdeskd.store.db import SessionMaker, reading
from helpdeskd.store.leases import database_now, lease_rows
from helpdeskd.store.models import (
    MailboxState,
    Outbox,
    OutboxRecipient,
    Quarantine,
    RawMessage,
    Ticket,
)
from helpdeskd.store.registry import daemon_rows
from helpdeskd.store.views import iso

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LoopMonitor:
    """Measure the event loop's lag: a wedged loop shows in /healthz and stops the watchdog."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.lag = 0.0
        self.beat = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass
            now = time.monotonic()
            self.lag = max(0.0, now - started - self.interval)
            self.beat = now

    @property
    def alive(self) -> bool:
        return time.monotonic() - self.beat < self.interval * 5 and self.lag < 5.0


@dataclass
class Logins:
    """What the daemon knows of its logins right now: its OAuth credentials (their in-memory
    status) and the outbox's last SMTP login error. Changed by the daemon as it goes."""

    credentials: Credentials | None = None
    smtp_error: str | None = None

    def oauth(self, now: datetime) -> list[dict[str, Any]]:
        """One object per mailbox with OAuth and ``smtp``: ok, account, expiry, last error."""
        if self.credentials is None:
            return []
        return [
            {
                "name": status.name,
                "ok": status.last_error is None and status.logged_in,
                "account": status.account,
                "expires_at": iso(status.expires_at),
                "expires_in_seconds": _seconds_until(status.expires_at, now),
                "last_refresh": iso(status.last_refresh),
                "last_error": status.last_error,
            }
            for status in self.credentials.statuses()
        ]


def _seconds_until(moment: datetime | None, now: datetime) -> float | None:
    return round((moment - now).total_seconds(), 1) if moment is not None else None


def _age(moment: datetime | None, now: datetime) -> float | None:
    return (now - moment).total_seconds() if moment is not None else None


async def health(
    config: Config,
    sessions: SessionMaker,
    monitor: LoopMonitor,
    *,
    now: datetime,
    logins: Logins | None = None,
) -> dict[str, Any]:
    """Return the health report at NOW: the loop, each mailbox's last successful poll, and
    the logins (OAuth tokens, SMTP)."""
    async with reading(sessions) as session:
        states = {s.name: s for s in await session.scalars(select(MailboxState))}
    mailboxes = []
    healthy = monitor.alive
    for mailbox in config.mailboxes:
        state = states.get(mailbox.name)
        age = _age(state.last_ok_at if state else None, now)
        # IDLE renews at least every idle_interval; a poll at least every poll_interval.
        allowed = 3 * (mailbox.idle_interval if mailbox.idle else mailbox.poll_interval) + 60
        ok = age is not None and age <= allowed
        healthy = healthy and ok
        mailboxes.append(
            {
                "name": mailbox.name,
                "ok": ok,
                "last_ok_at": state.last_ok_at.isoformat() if state and state.last_ok_at else None,
                "seconds_since_ok": round(age, 1) if age is not None else None,
                "last_error": state.last_error if state else None,
            }
        )
    logins = logins or Logins()
    oauth = logins.oauth(now)
    healthy = healthy and all(entry["ok"] for entry in oauth) and logins.smtp_error is None
    report: dict[str, Any] = {
        "status": "ok" if healthy else "degraded",
        "version": __version__,
        "event_loop": {"alive": monitor.alive, "lag_seconds": round(monitor.lag, 3)},
        "mailboxes": mailboxes,
        "oauth": oauth,
    }
    if config.smtp is not None:
        report["smtp"] = {"ok": logins.smtp_error is None, "last_error": logins.smtp_error}
    return report


class _Snapshot(Collector):
    """Metric families built from one database snapshot (prometheus_client collects sync)."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Any:
        return iter(self.families)


async def metrics_text(
    config: Config,
    sessions: SessionMaker,
    *,
    now: datetime,
    logins: Logins | None = None,
    daemon_id: str | None = None,
) -> bytes:
    """Return Prometheus text for the state of the database and the logins, ages counted to
    NOW; the mailbox leases as the database's clock sees them, DAEMON_ID's own marked."""
    async with reading(sessions) as session:
        outcomes = await session.execute(
            select(RawMessage.outcome, func.count(RawMessage.id)).group_by(RawMessage.outcome)
        )
        states = await session.execute(
            select(Ticket.state, func.count(Ticket.id)).group_by(Ticket.state)
        )
        depth = await session.scalar(select(func.count(Outbox.id)).where(Outbox.state == "pending"))
        oldest = await session.scalar(
            select(func.min(Outbox.created_at)).where(Outbox.state == "pending")
        )
        failures = await session.scalar(
            select(func.count(OutboxRecipient.id)).where(OutboxRecipient.state == "failed")
        )
        quarantined = await session.scalar(
            select(func.count(Quarantine.id)).where(Quarantine.resolved_at.is_(None))
        )
        polls = list(await session.scalars(select(MailboxState)))
        db_now = await database_now(session)  # leases expire by the database's clock
        leases = await lease_rows(session, db_now)
        fleet = _fleet_metrics(
            config, leases, await daemon_rows(session, db_now), daemon_id, db_now
        )
    ingested = CounterMetricFamily(
        "helpdeskd_messages_ingested", "Messages received, by outcome", labels=["outcome"]
    )
    for outcome, count in outcomes:
        ingested.add_metric([outcome or "unknown"], count)
    tickets = GaugeMetricFamily("helpdeskd_tickets", "Tickets by state", labels=["state"])
    for state, count in states:
        tickets.add_metric([state], count)
    lag = GaugeMetricFamily(
        "helpdeskd_mailbox_poll_lag_seconds",
        "Seconds since each mailbox's last successful poll",
        labels=["mailbox"],
    )
    for poll in polls:
        age = _age(poll.last_ok_at, now)
        if age is not None:
            lag.add_metric([poll.name], age)
    families = [
        ingested,
        tickets,
        GaugeMetricFamily("helpdeskd_outbox_depth", "Mails waiting to be sent", value=depth or 0),
        GaugeMetricFamily(
            "helpdeskd_outbox_oldest_age_seconds",
            "Age of the oldest mail waiting to be sent",
            value=_age(oldest, now) or 0.0,
        ),
        CounterMetricFamily(
            "helpdeskd_send_failures",
            "Recipients a mail could not be delivered to",
            value=failures or 0,
        ),
        GaugeMetricFamily(
            "helpdeskd_quarantine_open", "Messages waiting in quarantine", value=quarantined or 0
        ),
        lag,
        *fleet,
        *_login_metrics(logins or Logins(), now),
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return generate_latest(registry)


def _fleet_metrics(
    config: Config,
    leases: dict[str, dict[str, Any]],
    daemons: list[dict[str, Any]],
    daemon_id: str | None,
    now: datetime,
) -> list[Any]:
    """Each configured mailbox's lease (held by anyone, by this daemon, until when, how often
    taken) and the daemons registered, live and stale."""
    held = GaugeMetricFamily(
        "helpdeskd_mailbox_lease_held",
        "1 while some daemon holds the mailbox's lease (polls it), 0 when none does",
        labels=["mailbox"],
    )
    mine = GaugeMetricFamily(
        "helpdeskd_mailbox_lease_mine",
        "1 while this daemon holds the mailbox's lease",
        labels=["mailbox"],
    )
    expiry = GaugeMetricFamily(
        "helpdeskd_mailbox_lease_expiry_seconds",
        "Seconds until the mailbox's lease expires unless renewed (negative: expired)",
        labels=["mailbox"],
    )
    taken = CounterMetricFamily(
        "helpdeskd_mailbox_lease_acquisitions",
        "Times the mailbox's lease was taken (its fencing token): a rise is a takeover",
        labels=["mailbox"],
    )
    for mailbox in config.mailboxes:
        lease = leases.get(mailbox.name)
        held.add_metric([mailbox.name], 1 if lease and lease["held"] else 0)
        ours = lease is not None and lease["held"] and lease["holder"] == daemon_id
        mine.add_metric([mailbox.name], 1 if ours else 0)
        if lease is not None:
            expiry.add_metric([mailbox.name], (lease["expires_at"] - now).total_seconds())
            taken.add_metric([mailbox.name], lease["token"])
    registered = GaugeMetricFamily(
        "helpdeskd_daemons", "Daemons registered, live or stale", labels=["state"]
    )
    stale = sum(1 for d in daemons if d["stale"])
    registered.add_metric(["live"], len(daemons) - stale)
    registered.add_metric(["stale"], stale)
    return [held, mine, expiry, taken, registered]


def _login_metrics(logins: Logins, now: datetime) -> list[Any]:
    ok = GaugeMetricFamily(
        "helpdeskd_oauth_ok",
        "1 while a mailbox's (or smtp's) OAuth token can be had, 0 when it cannot",
        labels=["name"],
    )
    expiry = GaugeMetricFamily(
        "helpdeskd_oauth_token_expiry_seconds",
        "Seconds until the current OAuth access token expires",
        labels=["name"],
    )
    for entry in logins.oauth(now):
        ok.add_metric([entry["name"]], 1 if entry["ok"] else 0)
        if entry["expires_in_seconds"] is not None:
            expiry.add_metric([entry["name"]], entry["expires_in_seconds"])
    smtp = GaugeMetricFamily(
        "helpdeskd_smtp_login_ok", "1 unless the outbox's last SMTP login failed"
    )
    smtp.add_metric([], 0 if logins.smtp_error else 1)
    return [ok, expiry, smtp]


def operations_routes(
    config: Config,
    sessions: SessionMaker,
    monitor: LoopMonitor,
    *,
    clock: Clock = system_clock,
    logins: Logins | None = None,
    daemon_id: str | None = None,
) -> list[web.RouteDef]:
    """/healthz and /metrics, open to whoever reaches them (see :func:`behind_token`);
    DAEMON_ID is the daemon that serves them."""

    async def healthz(request: web.Request) -> web.Response:
        report = await health(config, sessions, monitor, now=clock(), logins=logins)
        return web.json_response(report, status=200 if report["status"] == "ok" else 503)

    async def metrics_view(request: web.Request) -> web.Response:
        body = await metrics_text(config, sessions, now=clock(), logins=logins, daemon_id=daemon_id)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    return [web.get("/healthz", healthz), web.get("/metrics", metrics_view)]


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header value carries TOKEN as its bearer token (RFC 6750).

    The scheme is case-insensitive; the token is compared in constant time.
    """
    if authorization is None:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


def behind_token(routes: list[web.RouteDef], token: Secret | None) -> list[web.RouteDef]:
    """ROUTES for the public listener: each answers 404 (as an unknown path does, so nothing
    tells they exist) unless TOKEN is set and the request carries it as its bearer token."""

    def guard(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization")
            if token is None or not bearer_matches(header, token.reveal()):
                raise web.HTTPNotFound()
            return await handler(request)

        return guarded

    return [
        web.RouteDef(route.method, route.path, guard(route.handler), route.kwargs)
        for route in routes
    ]


async def start_site(listen: str, routes: list[web.RouteDef], *, key: str) -> web.AppRunner:
    """Serve ROUTES on LISTEN (HOST:PORT) from the running loop; return the runner to stop.

    Raise HelpdeskError, one line naming the config KEY, when LISTEN cannot be bound (a port
    in use, an unknown host).
    """
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port))
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise HelpdeskError(f"{key}: cannot listen on {listen}: {exc.strerror or exc}") from None
    log.info("http_listening", listen=listen)
    return runner


async def stop_sites(runners: list[web.AppRunner]) -> None:
    await asyncio.gather(*(runner.cleanup() for runner in runners), return_exceptions=True)


def status_routes(
    config: Config, sessions: SessionMaker, *, clock: Clock = system_clock
) -> list[web.RouteDef]:
    """The public status page, rendered from the database at each request."""
    from helpdeskd.desk.incidents import status_data
    from helpdeskd.desk.status import StatusData
    from helpdeskd.web import feeds, statuspage

    templates = config.paths.templates

    async def data() -> StatusData:
        async with reading(sessions) as session:
            return await status_data(session, config, now=clock())

    def respond(body: str, kind: str) -> web.Response:
        return web.Response(
            text=body,
            headers={"Content-Type": statuspage.CONTENT_TYPES[kind], "Cache-Control": "max-age=30"},
        )

    async def page(request: web.Request) -> web.Response:
        return respond(statuspage.render_html(await data(), templates=templates), "html")

    async def document(request: web.Request) -> web.Response:
        return respond(feeds.render_json(await data()), "json")

    async def feed(request: web.Request) -> web.Response:
        return respond(feeds.render_atom(await data()), "atom")

    async def css(request: web.Request) -> web.Response:
        return respond(statuspage.render_css(templates=templates), "css")

    return [
        web.get("/status", page),
        web.get("/status/", page),
        web.get("/status.json", document),
        web.get("/status/feed.atom", feed),
        web.get("/status/status.css", css),
    ]
