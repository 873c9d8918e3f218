"""``helpdeskd run``: wire the parts together and supervise them until SIGTERM.

The daemon holds one clock and gives it to every part it starts. It registers itself
(helpdeskd.store.registry) and beats until it stops; it polls a mailbox only while it holds
the mailbox's lease (helpdeskd.store.leases), which it renews, and every batch it stores is
fenced by that lease, so that several daemons on one database never poll a mailbox together.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import structlog
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd import heap
from helpdeskd.clock import Clock, system_clock
from helpdeskd.config.load import load_config
from helpdeskd.config.settings import Config, MailboxConfig
from helpdeskd.daemon.alerts import judge_poll
from helpdeskd.daemon.checks import check_templates
from helpdeskd.daemon.sdnotify import Notifier, watchdog_interval
from helpdeskd.daemon.supervisor import Supervisor, TaskFactory
from helpdeskd.desk import notices
from helpdeskd.desk.agents import AgentDesk
from helpdeskd.desk.automation import Automation
from helpdeskd.desk.housekeeping import keep_retention, remind_quarantine, tick_operations
from helpdeskd.errors import HelpdeskError
from helpdeskd.imap.erase import keep_mailboxes
from helpdeskd.imap.watcher import FetchedMail, MailboxWatcher
from helpdeskd.ingest.batch import MailboxMark, Prepared, Processor
from helpdeskd.ingest.parsepool import ParsePool
from helpdeskd.mail.render import Renderer
from helpdeskd.oauth import login_command
from helpdeskd.oauth.credential import Credentials
from helpdeskd.outbox.journal import FILENAME as JOURNAL_FILE
from helpdeskd.outbox.sender import OutboxSender
from helpdeskd.rules import loader
from helpdeskd.store import leases, registry
from helpdeskd.store.db import SessionMaker, check_schema, create_engine, sessionmaker
from helpdeskd.store.leases import Lease
from helpdeskd.store.models import Agent, MailboxState
from helpdeskd.store.registry import Identity
from helpdeskd.triage.facts import Policy, Runtime
from helpdeskd.triage.received import Incoming
from helpdeskd.web.app import (
    Logins,
    LoopMonitor,
    behind_token,
    operations_routes,
    start_site,
    status_routes,
    stop_sites,
)
from helpdeskd.web.unsubscribe import UnsubscribePages

log = structlog.get_logger(__name__)

HOUSEKEEPING_EVERY = 60.0  # seconds between housekeeping rounds (maintenance runs by time)
TOKEN_CHECK_EVERY = 30.0  # seconds between looks at the OAuth tokens (each refreshes when due)


async def sync_agents(sessions: SessionMaker, config: Config) -> None:
    """Make the agents table match the config: add new agents, deactivate removed ones."""
    async with sessions() as session, session.begin():
        rows = {a.email: a for a in (await session.scalars(select(Agent))).all()}
        for agent in config.agents:
            row = rows.pop(agent.email, None)
            if row is None:
                session.add(Agent(email=agent.email, name=agent.name, active=True))
            else:
                row.name, row.active = agent.name, True
        for row in rows.values():
            row.active = False


class ProcessorSink:
    """Adapt the IMAP watcher's callbacks to the processor and the mailbox state table."""

    def __init__(
        self,
        processor: Processor,
        sessions: SessionMaker,
        *,
        clock: Clock = system_clock,
    ) -> None:
        self.runtime = processor.runtime
        self.processor = processor
        self.sessions = sessions
        self.clock = clock

    async def prepare_batch(
        self, mailbox: str, uidvalidity: int, mails: Sequence[FetchedMail]
    ) -> tuple[Prepared, MailboxMark]:
        items = [
            Incoming(
                source=mailbox,
                uid=m.uid,
                raw=m.raw,
                size=m.size,
                uidvalidity=uidvalidity,
                path=m.path,
            )
            for m in mails
        ]
        mark = MailboxMark(mailbox, uidvalidity, max(m.uid for m in mails))
        return await self.processor.prepare(items), mark

    async def store_batch(self, prepared: tuple[Prepared, MailboxMark]) -> None:
        batch, mark = prepared
        await self.processor.store(batch, mark=mark)

    async def record_poll(
        self,
        mailbox: str,
        *,
        ok: bool,
        error: str | None,
        urgent: bool = False,
        fix: str | None = None,
    ) -> None:
        """Record a poll; tell the agents when :func:`judge_poll` says so."""
        async with self.sessions() as session, session.begin():
            state = await session.get(MailboxState, mailbox)
            if state is None:
                state = MailboxState(name=mailbox, last_uid=0)
                session.add(state)
            alert = judge_poll(
                state,
                ok=ok,
                error=error,
                urgent=urgent,
                fix=fix,
                now=self.clock(),
                alert_after=self.runtime.policy.config.service.alert_after,
            )
            if alert is None:
                return
            await self._tell_agents(session, alert.subject, alert.text)
            if ok:
                log.info("mailbox_recovered", mailbox=mailbox)
            else:
                log.error("mailbox_alert", mailbox=mailbox, error=state.last_error, fix=fix)

    async def _tell_agents(self, session: AsyncSession, subject: str, text: str) -> None:
        await AgentDesk.of(self.runtime.policy).tell_all(session, None, subject, text)


def lease_seconds() -> float:
    """How long a mailbox lease lasts: LEASE_SECONDS, or ``$HELPDESKD_LEASE_SECONDS`` (tests
    shorten it to see takeovers sooner)."""
    raw = os.environ.get("HELPDESKD_LEASE_SECONDS", "").strip()
    if not raw:
        return leases.LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 1.0 <= value <= 300.0:
        raise HelpdeskError(f"HELPDESKD_LEASE_SECONDS={raw}: give seconds from 1 to 300")
    return value


class LeasedSink:
    """A mailbox's sink while this daemon holds LEASE: each batch commits only if the lease
    still holds, checked in the batch's own transaction (helpdeskd.store.leases.fence)."""

    def __init__(self, sink: ProcessorSink, lease: Lease) -> None:
        self.sink = sink
        self.lease = lease

    async def prepare_batch(
        self, mailbox: str, uidvalidity: int, mails: Sequence[FetchedMail]
    ) -> tuple[Prepared, MailboxMark]:
        return await self.sink.prepare_batch(mailbox, uidvalidity, mails)

    async def store_batch(self, prepared: tuple[Prepared, MailboxMark]) -> None:
        batch, mark = prepared
        await self.sink.processor.store(batch, mark=replace(mark, fence=self._fence))

    async def _fence(self, session: AsyncSession) -> None:
        await leases.fence(session, self.lease)

    async def record_poll(
        self,
        mailbox: str,
        *,
        ok: bool,
        error: str | None,
        urgent: bool = False,
        fix: str | None = None,
    ) -> None:
        await self.sink.record_poll(mailbox, ok=ok, error=error, urgent=urgent, fix=fix)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


class Daemon:
    def __init__(self, config: Config, *, clock: Clock = system_clock) -> None:
        self.config = config
        self.clock = clock
        self.notifier = Notifier()
        self.stop = asyncio.Event()
        self.outbox_wakeup = asyncio.Event()
        self.monitor = LoopMonitor()
        self.logins = Logins()
        self.me: Identity | None = None  # once registered
        self.lease_seconds = lease_seconds()
        self.heartbeat_every = min(registry.HEARTBEAT_SECONDS, self.lease_seconds / 2)
        self.replaced: list[str] = []  # dead daemons whose leases may be taken at once

    async def run(self) -> int:
        config = self.config
        # Stop signals first: a SIGTERM during start-up then stops the daemon cleanly.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_stop, "SIGINT")
        engine = create_engine(config.database.url)
        parse_pool = ParsePool(config.parse.workers, config.parse.timeout)
        try:
            await check_schema(engine)
            sessions = self.sessions = sessionmaker(engine)
            await sync_agents(sessions, config)
            me = Identity.here(config.service.state_dir)
            self.replaced = await registry.register(sessions, me, every=self.heartbeat_every)
            self.me = me
            self.credentials = Credentials(config, sessions, self.clock)
            await self.credentials.load()
            self.logins.credentials = self.credentials
            self.runtime = Runtime.of(config)
            self.processor = Processor(
                self.runtime,
                sessions,
                parse_pool,
                outbox_wakeup=self.outbox_wakeup,
                clock=self.clock,
            )
            supervisor = Supervisor(self.stop)
            if config.smtp is not None:
                sender = OutboxSender(
                    sessions,
                    config.smtp,
                    wakeup=self.outbox_wakeup,
                    recheck=notices.recheck,
                    dkim=config.dkim,
                    clock=self.clock,
                    token_source=self.credentials.for_smtp(),
                    on_login=self._smtp_login,
                    keys=config.service.secret_keys,  # VERP return paths ([smtp] return_path)
                    journal=config.service.state_dir / JOURNAL_FILE,  # SQLite (outbox.journal)
                )
                supervisor.add("outbox", sender.run)
            if self.credentials.all():
                supervisor.add("oauth", self._keep_tokens_fresh())
            sink = ProcessorSink(self.processor, sessions, clock=self.clock)
            for mailbox in config.mailboxes:
                supervisor.add(f"imap:{mailbox.name}", self._watch(mailbox, sink))
            supervisor.add("registry", self._heartbeat())
            supervisor.add("housekeeping", self._housekeeping())
            supervisor.add("scheduler", self._scheduler())
            supervisor.add("loop-monitor", self.monitor.run)
            interval = watchdog_interval()
            if interval:
                supervisor.add("watchdog", self._watchdog(interval))
            await parse_pool.start()
            runners = await self._start_http(sessions)
            self._install_signals()
            settled = heap.settle()  # start-up's objects stay out of the collector's rounds
            self.notifier.ready(
                f"watching {len(config.mailboxes)} mailbox(es)"
                + (", sending mail" if config.smtp else "")
            )
            log.info(
                "daemon_started",
                mailboxes=[m.name for m in config.mailboxes],
                daemon=me.id,
                lease_seconds=self.lease_seconds,
                settled_objects=settled,
            )
            try:
                code = await supervisor.run()
            finally:
                await stop_sites(runners)
            self.notifier.stopping()
            log.info("daemon_stopped", code=code, reason=supervisor.failed)
            return code
        finally:
            if self.me is not None:
                await self._deregister(self.me)
            parse_pool.close()
            await engine.dispose()
            self.notifier.close()

    def _watch(self, mailbox: MailboxConfig, sink: ProcessorSink) -> TaskFactory:
        """Poll MAILBOX whenever this daemon holds its lease; wait for it otherwise."""

        async def task(stop: asyncio.Event) -> None:
            while not stop.is_set():
                lease = await self._acquire(mailbox.name, stop)
                if lease is None:
                    return
                try:
                    await self._poll(mailbox, lease, sink, stop)
                finally:
                    # Another daemon may take it at once (no-op when the lease was lost).
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(leases.release(self.sessions, lease), 5)

        return task

    async def _acquire(self, name: str, stop: asyncio.Event) -> Lease | None:
        """Wait until this daemon holds mailbox NAME's lease; None once STOP is set."""
        assert self.me is not None
        waiting = False
        while not stop.is_set():
            try:
                lease = await leases.acquire(
                    self.sessions,
                    name,
                    self.me.id,
                    seconds=self.lease_seconds,
                    replacing=self.replaced,
                )
            except Exception as exc:  # the database is away: try again
                log.warning("mailbox_lease_unavailable", mailbox=name, error=_one_line(exc))
                lease = None
            if lease is not None:
                log.info("mailbox_lease_acquired", mailbox=name, token=lease.token)
                return lease
            if not waiting:
                log.info("mailbox_lease_waiting", mailbox=name)
                waiting = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), timeout=leases.acquire_every(self.lease_seconds)
                )
        return None

    async def _poll(
        self, mailbox: MailboxConfig, lease: Lease, sink: ProcessorSink, stop: asyncio.Event
    ) -> None:
        """Watch MAILBOX while LEASE holds: renew it; on STOP, or once the lease is lost, let
        the watcher finish (a batch it stores without the lease is rolled back) and return."""
        mine = asyncio.Event()
        watcher = asyncio.create_task(
            MailboxWatcher(
                mailbox,
                LeasedSink(sink, lease),
                stop=mine,
                spool_dir=self.config.service.state_dir / "oversize",
                token_source=self.credentials.for_mailbox(mailbox.name),
            ).run()
        )
        stopping = asyncio.ensure_future(stop.wait())
        loop = asyncio.get_running_loop()
        every = leases.renew_every(self.lease_seconds)
        held_until = loop.time() + self.lease_seconds
        renew_at = loop.time() + every
        lost = False
        try:
            while not watcher.done():
                if stop.is_set():
                    mine.set()
                if lost:
                    await asyncio.wait({watcher})
                    break
                # Renewed on time while the watcher runs, and while it finishes after a stop.
                waits = {watcher} if stopping.done() else {watcher, stopping}
                await asyncio.wait(waits, timeout=max(0.0, renew_at - loop.time()))
                if watcher.done() or loop.time() < renew_at:
                    continue
                started, renew_at = loop.time(), loop.time() + every
                renewed: bool | None = None
                try:
                    renewed = await asyncio.wait_for(
                        leases.renew(self.sessions, lease, seconds=self.lease_seconds),
                        timeout=max(0.1, held_until - started),
                    )
                except Exception as exc:  # the database is away for a moment: the lease holds
                    log.warning(
                        "mailbox_lease_renewal_failed", mailbox=mailbox.name, error=_one_line(exc)
                    )
                if renewed:
                    held_until = started + self.lease_seconds
                elif renewed is False or loop.time() >= held_until:
                    lost = True
                    mine.set()
                    log.error(
                        "mailbox_lease_lost",
                        mailbox=mailbox.name,
                        token=lease.token,
                        why="taken over" if renewed is False else "not renewed in time",
                    )
            await watcher
        finally:
            stopping.cancel()
            mine.set()
            if not watcher.done():
                watcher.cancel()

    def _heartbeat(self) -> TaskFactory:
        async def task(stop: asyncio.Event) -> None:
            assert self.me is not None
            while not stop.is_set():
                try:
                    await registry.heartbeat(self.sessions, self.me, every=self.heartbeat_every)
                except Exception as exc:  # shown as stale meanwhile; the next beat may work
                    log.warning("daemon_heartbeat_failed", error=_one_line(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.heartbeat_every)

        return task

    async def _deregister(self, me: Identity) -> None:
        try:
            await asyncio.wait_for(registry.deregister(self.sessions, me), 5)
        except Exception as exc:  # the row goes stale and is forgotten in a day
            log.warning("daemon_deregister_failed", error=_one_line(exc))

    def _keep_tokens_fresh(self) -> TaskFactory:
        async def task(stop: asyncio.Event) -> None:
            # Each access token is refreshed ahead of its expiry whether or not a login needs
            # it now, so that a revoked grant shows in /healthz at once and a refresh token
            # that expires when unused never goes unused. Logins report their own failures.
            warned: set[str] = set()
            while not stop.is_set():
                for credential in await self.credentials.keep_fresh():
                    if credential.name not in warned:
                        warned.add(credential.name)
                        expires = credential.status().refresh_expires_at
                        await self._warn_refresh_expiry(credential.name, expires)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=TOKEN_CHECK_EVERY)

        return task

    async def _warn_refresh_expiry(self, name: str, when: datetime | None) -> None:
        """Tell the agents, once a run, that NAME's refresh token expires soon (WHEN): the
        provider ends it whatever helpdeskd does (a Google app in "Testing" mode)."""
        moment = when.isoformat(timespec="minutes") if when else "soon"
        log.warning("oauth_refresh_token_expiring", oauth=name, expires_at=moment)
        command = login_command(name)
        async with self.processor.sessions() as session, session.begin():
            await AgentDesk.of(self.runtime.policy).tell_all(
                session,
                None,
                f"OAuth sign-in for {name} expires {moment}: run {command}",
                f"The provider will end helpdeskd's sign-in for {name} at {moment} (UTC), "
                f"whatever helpdeskd does. Before then, an admin should run:\n\n    {command}\n\n"
                "To stop it recurring with Google, make the OAuth app Internal or publish it "
                "(docs/admin.md).\n",
            )
        self.outbox_wakeup.set()

    async def _smtp_login(self, error: str | None, fix: str | None) -> None:
        """The outbox's SMTP login failed (ERROR, FIX), or works again (None, None).

        The agents cannot be mailed about it through the relay that refuses helpdeskd: it
        shows in the log, /healthz, /metrics and `helpdeskd status`."""
        self.logins.smtp_error = error
        if error is None:
            log.info("smtp_login_recovered")
        else:
            log.error("smtp_alert", error=error, fix=fix)

    def _scheduler(self) -> TaskFactory:
        async def task(stop: asyncio.Event) -> None:
            automation = Automation(self.runtime, self.processor.sessions, clock=self.clock)
            while not stop.is_set():
                steps, wake = await automation.run_due()
                if steps:
                    self.outbox_wakeup.set()
                delay = max(0.0, (wake - self.clock()).total_seconds())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)

        return task

    def _housekeeping(self) -> TaskFactory:
        async def task(stop: asyncio.Event) -> None:
            while not stop.is_set():
                sessions = self.processor.sessions
                told = await remind_quarantine(self.runtime, sessions, clock=self.clock)
                if told or await tick_operations(self.runtime, sessions, clock=self.clock):
                    self.outbox_wakeup.set()
                # Personal data: [retention], and what erasures left (docs/privacy.md).
                await keep_retention(self.runtime, sessions, clock=self.clock)
                await keep_mailboxes(
                    sessions,
                    self.runtime.policy.config,
                    self.clock(),
                    tokens=self.credentials.for_mailbox,
                )
                try:
                    await asyncio.wait_for(stop.wait(), timeout=HOUSEKEEPING_EVERY)
                except TimeoutError:
                    pass

        return task

    def _watchdog(self, interval: float) -> TaskFactory:
        async def task(stop: asyncio.Event) -> None:
            # The ping comes from this loop and only while the loop monitor sees it turning,
            # so a wedged event loop stops the pings and systemd acts.
            while not stop.is_set():
                if self.monitor.alive:
                    self.notifier.watchdog()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)

        return task

    async def _start_http(self, sessions: SessionMaker) -> list[web.AppRunner]:
        """Serve the public pages on ``listen`` and /metrics and /healthz on ``metrics_listen``;
        on the public listener those two need the admin token (without one: 404)."""
        http = self.config.http
        clock = self.clock
        operations = operations_routes(
            self.config,
            sessions,
            self.monitor,
            clock=clock,
            logins=self.logins,
            daemon_id=self.me.id if self.me else None,
        )
        sites: list[tuple[str, str, list[web.RouteDef]]] = []
        if http.listen:
            routes = behind_token(operations, http.admin_token)
            routes += UnsubscribePages(self.config, sessions, clock=clock).routes()
            routes += status_routes(self.config, sessions, clock=clock)
            sites.append(("http.listen", http.listen, routes))
        if http.metrics_listen:
            sites.append(("http.metrics_listen", http.metrics_listen, operations))
        runners: list[web.AppRunner] = []
        try:
            for key, listen, site_routes in sites:
                runners.append(await start_site(listen, site_routes, key=key))
        except HelpdeskError:
            await stop_sites(runners)
            raise
        return runners

    def _install_signals(self) -> None:
        # Reload only once there is something to reload into (stop signals come first).
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_reload)

    def _on_stop(self, name: str) -> None:
        log.info("stop_requested", signal=name)
        self.notifier.stopping()
        self.stop.set()

    def _on_reload(self) -> None:
        self.notifier.reloading()
        try:
            source = self.config.source
            if source is None:
                raise HelpdeskError("no config file to reload")
            fresh = load_config(Path(source))
            check_templates(fresh)
            rules = loader.load(fresh)
        except HelpdeskError as exc:
            log.error("reload_refused", error=str(exc))
            self.notifier.notify("READY=1", f"STATUS=reload refused: {exc}")
            return
        # Mailboxes, database and SMTP settings take a restart; templates, agents and service
        # settings take effect now.
        self.config = replace(
            self.config,
            service=fresh.service,
            agents=fresh.agents,
            paths=fresh.paths,
            heroku=fresh.heroku,
        )
        # One swap: every batch, pass and round that starts from now on uses all of it.
        self.runtime.policy = Policy(self.config, rules, Renderer(fresh.paths.templates))
        settled = heap.settle()  # the old templates and rules go; the new stay out of its rounds
        log.info("config_reloaded", source=str(source), settled_objects=settled)
        self.notifier.notify("READY=1", "STATUS=configuration reloaded")


def run_daemon(config: Config, *, clock: Clock) -> int:
    """Run the daemon on CONFIG until it is stopped, its parts reading CLOCK; return the exit
    status."""
    return asyncio.run(Daemon(config, clock=clock).run())
