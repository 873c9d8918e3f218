"""The pool of a sending pass: the claimed mails in the sender's hands, and which may go now.

A pass keeps the mails it claimed in one list, in the order they go (:func:`pool_order`: their
class first, then the longest due). :func:`pick` takes the first that the sending policy lets
go now; :func:`sweep` puts back in the table, each at its turn, those that cannot go soon
enough. What they settle on the way (an expired mail, a mail put back) goes to the pass through
the EXPIRE and PUT_BACK it hands them, in the order it comes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from helpdeskd.outbox.ledger import Claimed
from helpdeskd.outbox.policy import RANK, MailClass, SendingPolicy, domain_of, mail_class

__all__ = ["Expire", "Mail", "PutBack", "in_hand", "pick", "pool_order", "sweep", "utc"]


@dataclass(eq=False, slots=True)
class Mail:
    """A claimed row in the sender's hands."""

    row: Claimed
    kind: MailClass
    order: tuple[int, datetime, int]  # class first, then the longest due
    domains: dict[str, list[str]]  # destination domain -> its pending recipients
    checked: float  # when its opt-outs were looked up (the sender's clock)
    claimed: float  # when it was claimed (the event loop's clock)


def in_hand(row: Claimed, checked: float, claimed: float) -> Mail:
    """Hold ROW, claimed at CLAIMED (the event loop's clock), its opt-outs looked up at
    CHECKED (the sender's clock)."""
    kind = mail_class(row.notice_id, row.critical)
    domains: dict[str, list[str]] = {}
    for address in row.recipients:
        domains.setdefault(domain_of(address), []).append(address)
    return Mail(row, kind, (RANK[kind], row.due, row.row_id), domains, checked, claimed)


# Settle an expired MAIL at NOW; put MAIL back in the table untried, due AT, at NOW.
Expire = Callable[[Mail, datetime], None]
PutBack = Callable[[Mail, datetime, datetime], None]


def pick(
    pool: list[Mail], policy: SendingPolicy, now: datetime, expire: Expire, put_back: PutBack
) -> tuple[Mail, list[str], datetime | None] | float | None:
    """Take the first mail in POOL that may go at NOW, with the domains it goes to now
    and when its held ones may go; else the seconds until one may (a float); None when the
    pool is empty. Expired mail is settled on the way."""
    t = now.timestamp()
    unlimited = policy.unlimited(t)
    soonest = math.inf
    class_wait: dict[MailClass, float] = {}
    i = 0
    while i < len(pool):
        mail = pool[i]
        expires = mail.row.expires_at
        if expires is not None and expires <= now:
            del pool[i]
            expire(mail, now)
            continue
        if unlimited:  # no rate, nothing held back: the first mail goes
            del pool[i]
            return mail, list(mail.domains), None
        wait = class_wait.get(mail.kind)
        if wait is None:
            wait = class_wait[mail.kind] = policy.class_wait(mail.kind, t)
        if wait > 0:  # none of its class may go: on to the next class (the pool is sorted)
            soonest = min(soonest, wait)
            i = bisect.bisect_left(pool, (RANK[mail.kind] + 1, _FIRST, 0), key=pool_order)
            continue
        held: float | None = None
        open_domains = []
        for domain in mail.domains:
            until = policy.held(domain, t)
            if until is None:
                open_domains.append(domain)
            else:
                held = until if held is None else min(held, until)
        if not open_domains:
            assert held is not None
            del pool[i]
            put_back(mail, utc(policy.later(mail.kind, mail.domains, t, held)), now)
            continue
        wait = policy.wait(mail.kind, open_domains, t)
        if wait > 0:
            soonest = min(soonest, wait)
            i += 1
            continue
        del pool[i]
        return mail, open_domains, None if held is None else utc(held)
    return soonest if pool else None


def sweep(
    pool: list[Mail],
    policy: SendingPolicy,
    now: datetime,
    hold: float,
    put_back: PutBack,
    *,
    everything: bool = False,
) -> list[Mail]:
    """Put back in the table, each at its turn, the mails of POOL whose turn is more than HOLD
    seconds away (EVERYTHING: whose turn has not come); return the mails kept, in order."""
    t = now.timestamp()
    horizon = 0.0 if everything else hold
    if policy.unlimited(t):
        return pool  # no rate, no domain held back: every mail may go at once
    keep: list[Mail] = []
    for mail in pool:
        domains = _open(policy, mail, t)
        turn = t + policy.wait(mail.kind, domains, t)
        if turn - t > horizon:
            put_back(mail, utc(policy.later(mail.kind, domains, t, turn)), now)
        else:
            keep.append(mail)
    if len(keep) > 1 and not everything:
        keep = _queue(keep, policy, t, horizon, now, put_back)
    return keep


def _queue(
    pool: list[Mail],
    policy: SendingPolicy,
    t: float,
    horizon: float,
    now: datetime,
    put_back: PutBack,
) -> list[Mail]:
    """Of POOL, in order, keep the mails whose turn comes within HORIZON seconds counting
    the mails before them in the same buckets; put back the others at their turn."""
    open_domains = [_open(policy, m, t) for m in pool]
    turns = policy.project([(m.kind, d) for m, d in zip(pool, open_domains, strict=True)], t)
    keep = []
    for mail, domains, turn in zip(pool, open_domains, turns, strict=True):
        if turn - t > horizon:
            put_back(mail, utc(policy.later(mail.kind, domains, t, turn)), now)
        else:
            keep.append(mail)
    return keep


def pool_order(mail: Mail) -> tuple[int, datetime, int]:
    return mail.order


_FIRST = datetime.min.replace(tzinfo=UTC)  # before any mail of a class, in the pool's order


def _open(policy: SendingPolicy, mail: Mail, t: float) -> list[str]:
    """MAIL's domains that are not held back at T; all of them if all are."""
    domains = [d for d in mail.domains if policy.held(d, t) is None]
    return domains or list(mail.domains)


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
