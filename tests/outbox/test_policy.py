"""The sending policy, as pure functions of explicit times; and its ``[smtp]`` config."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from helpdeskd.config.load import parse_config
from helpdeskd.config.settings import SendRates, SmtpConfig
from helpdeskd.errors import ConfigError
from helpdeskd.outbox.policy import (
    MailClass,
    SendingPolicy,
    TokenBucket,
    backoff,
    domain_of,
    mail_class,
)
from tests.config.support import PASSWORD, SECRET_TEXT, good_config

SMTP = SmtpConfig(
    host="127.0.0.1",
    port=25,
    security="none",
    username=None,
    password=None,
    retry_base=30,
    retry_max=3600,
    rates=SendRates(critical=10, optional=2, transactional=None),
    domain_rates=(("gmail.com", 1.0), ("fast.example", None)),
    domain_rate=5,
)
T0 = 1_800_000_000.0


@pytest.mark.parametrize(
    "notice_id, critical, kind",
    [(None, None, "transactional"), (7, True, "critical"), (7, False, "optional")],
)
def test_a_rows_class_is_its_notices_category(notice_id, critical, kind):
    assert mail_class(notice_id, critical) == kind


@pytest.mark.parametrize(
    "address, domain",
    [("a@Gmail.COM", "gmail.com"), ("a@b@x.org", "x.org"), ("a@x.org.", "x.org")],
)
def test_the_domain_is_what_follows_the_last_at(address, domain):
    assert domain_of(address) == domain


def test_a_bucket_allows_a_seconds_burst_then_its_rate():
    bucket = TokenBucket(4, T0)
    for _ in range(4):
        assert bucket.wait(T0) == 0
        bucket.take(T0)
    assert bucket.wait(T0) == pytest.approx(0.25)
    assert bucket.wait(T0 + 0.25) == 0
    slow = TokenBucket(0.5, T0)  # less than one a second: still one mail at once
    slow.take(T0)
    assert slow.wait(T0) == pytest.approx(2.0)


def test_a_mail_waits_for_its_class_and_each_of_its_domains():
    policy = SendingPolicy(SMTP)
    # gmail.com: 1/s; the optional class: 2/s; transactional: no limit.
    assert policy.wait("optional", ["gmail.com"], T0) == 0
    policy.take("optional", ["gmail.com"], T0)
    assert policy.wait("optional", ["gmail.com"], T0) == pytest.approx(1.0)  # the domain
    assert policy.wait("optional", ["other.example"], T0) == 0
    policy.take("optional", ["other.example"], T0)
    assert policy.wait("optional", ["third.example"], T0) == pytest.approx(0.5)  # the class
    assert policy.wait("transactional", ["third.example"], T0) == 0
    for _ in range(100):  # no limit for the class or for fast.example
        policy.take("transactional", ["fast.example"], T0)
    assert policy.wait("transactional", ["fast.example"], T0) == 0


def test_a_4xx_holds_the_domain_doubling_until_it_accepts():
    policy = SendingPolicy(replace(SMTP, retry_base=100, retry_max=1000))
    first = policy.defer("gmail.com", T0)
    assert T0 + 50 <= first <= T0 + 100  # half to all of retry_base
    assert policy.held("gmail.com", T0) == first
    assert policy.held("other.example", T0) is None
    assert policy.wait("transactional", ["gmail.com"], T0) == pytest.approx(first - T0)
    # another 4xx while held (a mail already on its way) changes nothing
    assert policy.defer("gmail.com", T0 + 1) == first
    second = policy.defer("gmail.com", first)
    assert first + 100 <= second <= first + 200  # doubled
    later = [policy.defer("gmail.com", T0 + 10_000 * n) - T0 - 10_000 * n for n in range(1, 8)]
    assert all(d <= 1000 for d in later) and max(later) >= 500  # capped at retry_max
    policy.accepted("gmail.com")
    assert policy.held("gmail.com", T0 + 10**6) is None
    again = policy.defer("gmail.com", T0 + 10**6)
    assert again <= T0 + 10**6 + 100  # the streak starts again


def test_mails_put_back_are_spaced_at_their_buckets_rates():
    policy = SendingPolicy(SMTP)
    policy.take("optional", ["gmail.com"], T0)
    turns = [policy.later("optional", ["gmail.com"], T0, T0) for _ in range(3)]
    # gmail.com: 1/s, its next token at T0 + 1; then a second apart
    assert turns == pytest.approx([T0 + 1, T0 + 2, T0 + 3])
    # the optional class (2/s) books them too: another optional mail comes after them
    assert policy.later("optional", ["other.example"], T0, T0) == pytest.approx(T0 + 3.5)
    # ... and other.example (5/s) books that one: the next mail to it comes 0.2 s later
    assert policy.later("transactional", ["other.example"], T0, T0) == pytest.approx(T0 + 3.7)
    # a class without a limit, to a fresh domain: at once, or after AFTER
    assert policy.later("transactional", ["new.example"], T0, T0 + 9) == T0 + 9


def test_projected_turns_count_the_mails_before_in_the_same_buckets():
    policy = SendingPolicy(SMTP)
    mails: list[tuple[MailClass, list[str]]] = [
        ("optional", ["a.example"]),
        ("optional", ["b.example"]),
        ("optional", ["c.example"]),
        ("transactional", ["gmail.com"]),
        ("transactional", ["gmail.com"]),
    ]
    turns = policy.project(mails, T0)
    # the optional class holds 2 tokens at 2/s: the third waits half a second; gmail.com 1/s
    assert turns == pytest.approx([T0, T0, T0 + 0.5, T0, T0 + 1])


def test_backoff_grows_and_is_capped():
    delays = [backoff(n, 30, 3600) for n in range(1, 12)]
    assert 15 <= delays[0] <= 30
    assert all(d <= 3600 for d in delays)
    assert max(delays[-3:]) >= 1800


def test_idle_domains_are_forgotten(monkeypatch):
    import helpdeskd.outbox.policy as module

    monkeypatch.setattr(module, "PRUNE_AT", 10)
    policy = SendingPolicy(SMTP)
    for n in range(30):
        policy.take("transactional", [f"d{n}.example"], T0 + n)  # each full again 1 s later
    assert len(policy._domains) <= 10


# --- [smtp] in the config ------------------------------------------------------------------


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The config folder, holding the secret files that good_config() names."""
    (tmp_path / "secret").write_text(f"k1 {SECRET_TEXT}\n")
    (tmp_path / "imap-password").write_text(PASSWORD + "\n")
    return tmp_path


def _smtp(base: Path, **table: Any) -> SmtpConfig:
    data = copy.deepcopy(good_config())
    data["smtp"].update(table)
    smtp = parse_config(data, base).smtp
    assert smtp is not None
    return smtp


def test_smtp_sending_defaults(base: Path) -> None:
    smtp = _smtp(base)
    assert smtp.connections == 4
    assert smtp.rates == SendRates(critical=200, optional=20, transactional=None)
    assert smtp.domain_rates == () and smtp.domain_rate == 50
    assert smtp.return_path is None


def test_smtp_sending_policy_is_read(base: Path) -> None:
    smtp = _smtp(
        base,
        connections=8,
        rates={"critical": 500, "optional": 0.5, "transactional": 0},
        domain_rates={"default": 0, "Gmail.COM.": 20, "outlook.com": 10},
        return_path="bounces@acme.test",
    )
    assert smtp.connections == 8
    assert smtp.rates == SendRates(critical=500, optional=0.5, transactional=None)
    assert smtp.domain_rates == (("gmail.com", 20.0), ("outlook.com", 10.0))
    assert smtp.domain_rate is None  # 0: no limit
    assert smtp.rate_for("gmail.com") == 20 and smtp.rate_for("x.example") is None
    assert smtp.return_path == "bounces@acme.test"


@pytest.mark.parametrize(
    "table, key, words",
    [
        ({"connections": 0}, "smtp.connections", "from 1 to 64"),
        ({"connections": 65}, "smtp.connections", "from 1 to 64"),
        ({"connections": 2.5}, "smtp.connections", "integer"),
        ({"rates": {"critical": -1}}, "smtp.rates.critical", "0 for no limit"),
        ({"rates": {"critical": float("nan")}}, "smtp.rates.critical", "0 for no limit"),
        ({"rates": {"urgent": 5}}, "smtp.rates.urgent", "unknown key"),
        ({"rates": {"optional": "fast"}}, "smtp.rates.optional", "number"),
        ({"domain_rates": {"gmail": {"com": 20}}}, "smtp.domain_rates.gmail", "quote"),
        ({"domain_rates": {"nodot": 20}}, "smtp.domain_rates.nodot", "not a domain"),
        ({"domain_rates": {"a@b.com": 20}}, "smtp.domain_rates.a@b.com", "not a domain"),
        ({"domain_rates": {"x.com": 1, "X.com": 2}}, "smtp.domain_rates.X.com", "twice"),
        ({"domain_rates": {"default": -2}}, "smtp.domain_rates.default", "0 for no limit"),
        ({"return_path": "bounces+x@acme.test"}, "smtp.return_path", "'+'"),
    ],
)
def test_smtp_sending_errors_name_the_key(base: Path, table, key, words) -> None:
    with pytest.raises(ConfigError) as caught:
        _smtp(base, **table)
    message = str(caught.value)
    assert message.startswith(key + ":") and words in message, message
