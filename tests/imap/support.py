"""Helpers shared by the IMAP tests: a recording sink, a mailbox on a test Dovecot, waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from helpdeskd.config.secrets import Secret
from helpdeskd.config.settings import MailboxConfig
from helpdeskd.imap.watcher import FetchedMail, MailboxWatcher
from tests.servers.dovecot import Dovecot
from tests.servers.fixtures import SUPPORT_PASSWORD as PASSWORD
from tests.servers.fixtures import SUPPORT_USER as USER

DovecotFactory = Callable[..., Dovecot]


class RecordingSink:
    """Record what the watcher hands over; the real processor is wired in by the daemon."""

    def __init__(self, *, fail: Exception | None = None) -> None:
        self.fail = fail
        self.mails: dict[tuple[str, int, int], FetchedMail] = {}
        self.deliveries: Counter[tuple[str, int, int]] = Counter()
        self.batches: list[list[int]] = []
        self.polls: list[tuple[bool, str | None]] = []
        self.urgent: list[bool] = []
        self.fixes: list[str | None] = []

    async def prepare_batch(self, mailbox: str, uidvalidity: int, mails: Any) -> Any:
        return mailbox, uidvalidity, mails

    async def store_batch(self, prepared: Any) -> None:
        mailbox, uidvalidity, mails = prepared
        if self.fail is not None:
            raise self.fail
        self.batches.append([mail.uid for mail in mails])
        for mail in mails:
            key = (mailbox, uidvalidity, mail.uid)
            self.deliveries[key] += 1
            self.mails[key] = mail

    async def record_poll(
        self,
        mailbox: str,
        *,
        ok: bool,
        error: str | None,
        urgent: bool = False,
        fix: str | None = None,
    ) -> None:
        self.polls.append((ok, error))
        self.urgent.append(urgent)
        self.fixes.append(fix)

    def raws(self) -> set[bytes | None]:
        return {mail.raw for mail in self.mails.values()}


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Wait until PREDICATE holds; return the seconds it took, fail after TIMEOUT."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)
    return loop.time() - start


def mailbox(server: Dovecot, **overrides: Any) -> MailboxConfig:
    values: dict[str, Any] = {
        "name": "support",
        "host": server.host,
        "port": server.port,
        "security": "none",
        "username": USER,
        "password": Secret(PASSWORD),
        "processed_folder": "Processed",
        "idle": True,
        "poll_interval": 600.0,
        "timeout": 5.0,
    }
    values.update(overrides)
    return MailboxConfig(**values)


def message(n: int, body: str = "") -> bytes:
    return (
        f"From: Customer {n} <customer{n}@example.org>\r\n"
        "To: support@acme.test\r\n"
        f"Subject: Help needed {n}\r\n"
        f"Message-ID: <m{n}@example.org>\r\n"
        "Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
        "\r\n"
        f"Body of message {n}.\r\n{body}"
    ).encode()


@contextlib.asynccontextmanager
async def watching(
    watcher: MailboxWatcher, stop: asyncio.Event
) -> AsyncIterator[asyncio.Task[None]]:
    """Run WATCHER.run() in the background; stop it (and require it to return) at the end."""
    task = asyncio.create_task(watcher.run())
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def ok_polls(sink: RecordingSink) -> int:
    return sum(1 for ok, _ in sink.polls if ok)
