"""A real SMTP server (aiosmtpd) on a free loopback port that captures what it is sent.

It can be stopped and started again on the same port (the "sink down" case) and told to refuse
chosen recipients with a 4xx or 5xx reply.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Delivery:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class _Handler:
    deliveries: list[Delivery] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # address -> "450 ..." / "550 ..."
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        reply = self.refuse.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        content = envelope.original_content or b""
        with self.lock:
            self.deliveries.append(
                Delivery(str(envelope.mail_from), [str(r) for r in envelope.rcpt_tos], content)
            )
        return "250 Message accepted"


class SmtpSink:
    def __init__(self, port: int | None = None, *, smtputf8: bool = False) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.smtputf8 = smtputf8  # offer SMTPUTF8 (RFC 6531)
        self.handler = _Handler()
        self._controller: Controller | None = None

    @property
    def deliveries(self) -> list[Delivery]:
        with self.handler.lock:
            return list(self.handler.deliveries)

    def start(self) -> None:
        self._controller = Controller(
            self.handler, hostname=self.host, port=self.port, enable_SMTPUTF8=self.smtputf8
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Delivery]:
        """Wait until at least COUNT mails arrived; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.deliveries
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"expected {count} mails, got {len(self.deliveries)}")

    def by_recipient(self) -> dict[str, list[Delivery]]:
        out: dict[str, list[Delivery]] = {}
        for d in self.deliveries:
            for r in d.recipients:
                out.setdefault(r.lower(), []).append(d)
        return out
