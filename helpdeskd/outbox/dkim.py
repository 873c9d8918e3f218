"""DKIM-sign outgoing mail (RFC 6376) so List-Unsubscribe and its friends are covered.

Where the relay does not sign, helpdeskd signs its own mail with dkimpy: relaxed/relaxed
canonicalisation, ``rsa-sha256`` for RSA keys (2048 bits or more) and ``ed25519-sha256`` for
Ed25519 keys (RFC 8463; needs PyNaCl, dkimpy's ``ed25519`` extra). From and List-Unsubscribe are
oversigned: ``h=`` names them once more than they occur, so nobody can add a second one (or, to
a critical notice, a first one) without breaking the signature. The ``[dkim]`` table is read
and its key checked by helpdeskd.config; the private key stays in a
:class:`~helpdeskd.config.secrets.Secret` and never reaches a log, repr or error message.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from email.parser import BytesHeaderParser
from email.policy import default as default_policy

import dkim

from helpdeskd.config.dkimkey import load_dkim_key
from helpdeskd.config.settings import DkimConfig

# Signed once more than they occur, so none can be added after signing (RFC 6376 section 8.15).
OVERSIGNED = frozenset({"from", "list-unsubscribe"})


# --- signing -------------------------------------------------------------------------------


def sign(message: bytes, config: DkimConfig) -> bytes:
    """Return MESSAGE with a DKIM-Signature header field prepended.

    Raises ValueError when the From domain is not CONFIG.domain or a subdomain of it (the
    signature would not count for DMARC), when the message has no single From header field, or
    when the key cannot sign; ConfigError when the key is a credential this process cannot read.
    """
    key = load_dkim_key(config.private_key.reveal())
    _check_from(message, config.domain)
    linesep = b"\r\n" if message.partition(b"\n")[0].endswith(b"\r") else b"\n"
    try:
        headers, _ = dkim.rfc822_parse(message)
        present = [name.lower() for name, _value in headers]
        include: list[bytes] = []
        seen: set[bytes] = set()
        for header in config.headers:
            name = header.lower().encode("ascii")
            if name in seen:
                continue
            seen.add(name)
            count = present.count(name) + (1 if header.lower() in OVERSIGNED else 0)
            include.extend([name] * count)
        signature: bytes = dkim.sign(
            message,
            config.selector.encode("ascii"),
            config.domain.lower().rstrip(".").encode("ascii"),
            key.material,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=key.algorithm,
            include_headers=include,
            linesep=linesep,
        )
    except dkim.DKIMException as exc:
        raise ValueError(f"DKIM signing failed: {exc}") from None
    return signature + message


def aligned(from_domain: str, dkim_domain: str) -> bool:
    """Return whether FROM_DOMAIN is DKIM_DOMAIN or a subdomain of it (relaxed DMARC alignment)."""
    got, want = _ascii_domain(from_domain), _ascii_domain(dkim_domain)
    if not got or not want:
        return False
    return got == want or got.endswith("." + want)


def _ascii_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def _check_from(message: bytes, dkim_domain: str) -> None:
    parsed = BytesHeaderParser(policy=default_policy).parsebytes(message)
    fields = parsed.get_all("From") or []
    if len(fields) != 1:
        raise ValueError(f"cannot DKIM-sign a message with {len(fields)} From header fields")
    addresses = getattr(fields[0], "addresses", ())
    if not addresses:
        raise ValueError("cannot DKIM-sign a message whose From has no address")
    for address in addresses:
        if not aligned(address.domain, dkim_domain):
            raise ValueError(
                f"From domain {address.domain!r} is not {dkim_domain!r} or a subdomain of it: "
                "the DKIM signature would not align for DMARC"
            )


# --- signing off the event loop, where it pays ----------------------------------------------

_worker_config: DkimConfig | None = None


def _init_worker(config: DkimConfig) -> None:
    global _worker_config
    _worker_config = config


def _sign_in_worker(message: bytes) -> bytes:
    assert _worker_config is not None
    return sign(message, _worker_config)


class Signer:
    """Sign outgoing mail with CONFIG's key, in this process or in worker processes.

    Measured (tests/bench, a 1.3 KB notice): dkimpy signs with RSA-2048 in pure Python, about
    7.5 ms of CPU a mail, all of it under the GIL, so a thread would take nothing off the event
    loop's core: RSA signs in WORKERS processes (default: the cores but one, at least one),
    where sending a mail there and back costs a fraction of a millisecond. Ed25519 (PyNaCl)
    takes a fraction of a millisecond: a trip to another process would cost more than it
    saves, so it signs here.
    """

    def __init__(self, config: DkimConfig, *, workers: int | None = None) -> None:
        self.config = config
        self.workers = workers or max(1, (os.cpu_count() or 2) - 1)
        self._pool: ProcessPoolExecutor | None = None
        self._inline: bool | None = None  # decided on the first mail: the key is read then

    @property
    def offloaded(self) -> bool:
        """Whether it signs in worker processes (known once it signed a first mail)."""
        return self._inline is False

    async def sign(self, message: bytes) -> bytes:
        """Return MESSAGE signed; raise ValueError as :func:`sign` does."""
        if self._inline is None:
            key = load_dkim_key(self.config.private_key.reveal())
            self._inline = key.algorithm != b"rsa-sha256"
        if self._inline:
            return sign(message, self.config)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.config,),
            )
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, _sign_in_worker, message)
        except BrokenProcessPool:
            self.close()  # a worker died (killed, out of memory): the next mail starts afresh
            raise

    def close(self) -> None:
        """Stop the worker processes, if any were started."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
