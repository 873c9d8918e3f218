"""How fast the outbox may send, and where it must wait: rates, and backoff per domain.

Pure: no I/O. Times are seconds on the sender's clock (POSIX timestamps as floats).

Every mail has a class: ``transactional`` (acknowledgements, replies, agents' notifications:
anything that is not a notice), ``critical`` (notices of a critical category: maintenance,
incident, ...) or ``optional`` (the other notices). It goes to one or more destination domains.
``[smtp.rates]`` and ``[smtp.domain_rates]`` give a token bucket to each class and each domain
that has a rate: a bucket holds one second of mail (at least one mail) and refills at its rate;
a mail goes when every bucket it needs has a token. Buckets live in memory and a full one is
forgotten, so a daemon that starts begins with full buckets.

A 4xx answer about a recipient backs off the recipient's domain rather than the one mail:
nothing more goes there until the backoff is over, and it doubles (with jitter, up to a cap)
with each 4xx that comes while it is not held; the first mail the domain accepts ends it.
Another 4xx for the domain while it is held (a mail that was already on its way) changes nothing.

A mail that cannot go soon is put back in the table with a time to try again:
:meth:`SendingPolicy.later` spaces the mails put back at their buckets' rates, so they come due
as fast as they may go rather than all at once.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from helpdeskd.config.settings import SmtpConfig

MailClass = Literal["transactional", "critical", "optional"]
RANK: dict[MailClass, int] = {"transactional": 0, "critical": 1, "optional": 2}
"""The order in which the classes go when several are ready: transactional mail first."""

PRUNE_AT = 4096  # domain buckets and holds kept before the idle ones are forgotten
# A hold that ends within this many seconds is over: the time a row is due again, stored in the
# table to the microsecond, must not fall a rounding error short of the end of its domain's hold.
SLACK = 0.001


def mail_class(notice_id: int | None, critical: bool | None) -> MailClass:
    """The class of an outbox row: a notice's is its category's; any other mail's is
    transactional."""
    if notice_id is None:
        return "transactional"
    return "critical" if critical else "optional"


def domain_of(address: str) -> str:
    """The destination domain of ADDRESS, lower case (an address without one: itself)."""
    return address.rpartition("@")[2].lower().rstrip(".")


def backoff(attempts: int, base: float, cap: float) -> float:
    """Return the delay before attempt ATTEMPTS+1: exponential, capped, with full jitter."""
    delay = min(cap, base * 2.0 ** max(0, attempts - 1))
    return delay / 2 + random.uniform(0, delay / 2)


class TokenBucket:
    """RATE mails a second, in bursts of at most CAPACITY (one second's worth, at least 1)."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = now

    def _fill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds from NOW until a mail may take a token (0: at once)."""
        self._fill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        """Take a token at NOW (the caller checked :meth:`wait`)."""
        self._fill(now)
        self.tokens -= 1

    def full(self, now: float) -> bool:
        self._fill(now)
        return self.tokens >= self.capacity


@dataclass
class _Hold:
    until: float
    failures: int


class SendingPolicy:
    """The rates and domain backoffs of one sender, from its ``[smtp]`` config."""

    def __init__(self, smtp: SmtpConfig) -> None:
        rates = smtp.rates
        self._class_rates: dict[MailClass, float | None] = {
            "transactional": rates.transactional,
            "critical": rates.critical,
            "optional": rates.optional,
        }
        self._domain_rates = dict(smtp.domain_rates)
        self._domain_rate = smtp.domain_rate
        self._base = smtp.retry_base
        self._cap = smtp.retry_max
        self._classes: dict[MailClass, TokenBucket] = {}
        self._domains: dict[str, TokenBucket] = {}
        self._holds: dict[str, _Hold] = {}
        self._later: dict[str, float] = {}  # per bucket key: when the next mail put back is due
        every = (self._domain_rate, *self._domain_rates.values(), *self._class_rates.values())
        self._rated = any(rate is not None for rate in every)

    # --- rates ---------------------------------------------------------------------------

    def unlimited(self, now: float) -> bool:
        """Whether no mail has to wait at NOW: no rate anywhere, and no domain held back."""
        return not self._rated and not any(h.until > now + SLACK for h in self._holds.values())

    def rate(self, domain: str) -> float | None:
        """Mails per second DOMAIN may receive (None: no limit)."""
        return self._domain_rates.get(domain, self._domain_rate)

    def _class_bucket(self, kind: MailClass, now: float) -> TokenBucket | None:
        bucket = self._classes.get(kind)
        if bucket is None:
            rate = self._class_rates[kind]
            if rate is None:
                return None
            bucket = self._classes[kind] = TokenBucket(rate, now)
        return bucket

    def _domain_bucket(self, domain: str, now: float) -> TokenBucket | None:
        bucket = self._domains.get(domain)
        if bucket is None:
            rate = self.rate(domain)
            if rate is None:
                return None
            if len(self._domains) >= PRUNE_AT:
                self._prune(now)
            bucket = self._domains[domain] = TokenBucket(rate, now)
        return bucket

    def class_wait(self, kind: MailClass, now: float) -> float:
        """Seconds from NOW until a mail of class KIND may go, as far as its class goes."""
        bucket = self._class_bucket(kind, now)
        return 0.0 if bucket is None else bucket.wait(now)

    def wait(self, kind: MailClass, domains: Iterable[str], now: float) -> float:
        """Seconds from NOW until a mail of class KIND to DOMAINS may go (0: at once).

        Held domains count too: see :meth:`held`, which a caller that sends to the domains
        that are not held checks first."""
        wait = self.class_wait(kind, now)
        for domain in domains:
            hold = self._holds.get(domain)
            if hold is not None and hold.until > now + SLACK:
                wait = max(wait, hold.until - now)
            bucket = self._domain_bucket(domain, now)
            if bucket is not None:
                wait = max(wait, bucket.wait(now))
        return wait

    def take(self, kind: MailClass, domains: Iterable[str], now: float) -> None:
        """A mail of class KIND to DOMAINS goes at NOW: it takes a token from each bucket."""
        bucket = self._class_bucket(kind, now)
        if bucket is not None:
            bucket.take(now)
        for domain in domains:
            bucket = self._domain_bucket(domain, now)
            if bucket is not None:
                bucket.take(now)

    def project(self, mails: Sequence[tuple[MailClass, Sequence[str]]], now: float) -> list[float]:
        """When each of MAILS (class, domains), served in this order, would go: a bucket's
        tokens go to the first mails that need it, the next ones come at its rate."""
        served: dict[str, int] = {}
        turns = []
        for kind, domains in mails:
            turn = now
            keys: list[tuple[str, TokenBucket | None]] = [
                (f"class:{kind}", self._class_bucket(kind, now))
            ]
            keys.extend((domain, self._domain_bucket(domain, now)) for domain in domains)
            for key, bucket in keys:
                if bucket is None:
                    continue
                count = served.get(key, 0) + 1
                served[key] = count
                bucket.wait(now)  # refills it
                if count > bucket.tokens:
                    turn = max(turn, now + (count - bucket.tokens) / bucket.rate)
            for domain in domains:
                hold = self._holds.get(domain)
                if hold is not None and hold.until > now + SLACK:
                    turn = max(turn, hold.until)
            turns.append(turn)
        return turns

    def later(self, kind: MailClass, domains: Iterable[str], now: float, after: float) -> float:
        """When a mail of class KIND to DOMAINS, which cannot go before AFTER, is to be tried
        again: after the mails put back before it in the same buckets, each bucket's rate
        apart."""
        domains = list(domains)
        at = max(after, now + self.wait(kind, domains, now))
        keys: list[tuple[str, float]] = []
        rate = self._class_rates[kind]
        if rate is not None:
            keys.append((f"class:{kind}", rate))
        for domain in domains:
            rate = self.rate(domain)
            if rate is not None:
                keys.append((domain, rate))
        for key, _rate in keys:
            at = max(at, self._later.get(key, 0.0))
        for key, rate in keys:
            self._later[key] = at + 1 / rate
        if len(self._later) >= PRUNE_AT:
            self._later = {k: v for k, v in self._later.items() if v > now}
        return at

    # --- backoff per domain --------------------------------------------------------------

    def held(self, domain: str, now: float) -> float | None:
        """When DOMAIN's backoff ends, if it is held at NOW; else None."""
        hold = self._holds.get(domain)
        if hold is None or hold.until <= now + SLACK:
            return None
        return hold.until

    def defer(self, domain: str, now: float) -> float:
        """A 4xx about mail to DOMAIN at NOW: hold it; return when the hold ends."""
        hold = self._holds.get(domain)
        if hold is not None and hold.until > now + SLACK:
            return hold.until  # an answer to a mail already on its way: held already
        failures = 1 if hold is None else hold.failures + 1
        if hold is None and len(self._holds) >= PRUNE_AT:
            self._prune(now)
        until = now + backoff(failures, self._base, self._cap)
        self._holds[domain] = _Hold(until, failures)
        return until

    def accepted(self, domain: str) -> None:
        """DOMAIN accepted a mail: its backoff, if any, is over."""
        self._holds.pop(domain, None)

    def _prune(self, now: float) -> None:
        """Forget the domains that are as if never seen: full buckets, holds long over."""
        self._domains = {d: b for d, b in self._domains.items() if not b.full(now)}
        self._holds = {d: h for d, h in self._holds.items() if h.until + self._cap > now}
