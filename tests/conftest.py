"""Shared fixtures: real servers (Dovecot, aiosmtpd, PostgreSQL) and helpdeskd configs."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpdeskd.config.load import load_config
from helpdeskd.config.settings import Config
from helpdeskd.store.db import SessionMaker, create_engine, sessionmaker, upgrade
from tests.servers import postgres
from tests.servers.smtp import SmtpSink

pytest_plugins = (
    ["tests.servers.fixtures"]
    if (ROOT_PLUGIN := __import__("importlib.util").util.find_spec("tests.servers.fixtures"))
    else []
)

IN_CI = os.environ.get("CI") == "true"
ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
CORPUS_NOT_MAIL = frozenset({"LICENSE", "NOTICE", "README.md"})  # the corpus's own papers


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, in their order, then the rest: the suite's CPU is its limit, and
    a slow test handed out last kept the run going long after every other test was done."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def need(reason: str | None) -> None:
    """Skip for REASON outside CI; in CI a missing server is a failure."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a server a test needs must be there)")
    pytest.skip(reason)


_pg_reason: list[str | None] = []


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: SQLite in a temp dir, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield sqlite_database(request, tmp_path / "helpdeskd.db")
        return
    yield from _pg_database(request)


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[SessionMaker]:
    """Sessions on a migrated, empty database (SQLite, then PostgreSQL: see db_url)."""
    engine = create_engine(db_url)
    try:
        yield sessionmaker(engine)
    finally:
        await engine.dispose()


# A test's database is a copy of one migrated once per test process: migrating each took a
# sizeable share of the suite's CPU (tests/store/test_migrations.py migrates for itself).


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite database, whole in its one file (its WAL checkpointed)."""
    path = tmp_path_factory.mktemp("template") / "helpdeskd.db"
    upgrade(f"sqlite:///{path}")
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def sqlite_database(request: pytest.FixtureRequest, path: Path) -> str:
    """A migrated, empty SQLite database at PATH; its URL."""
    shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    """A migrated, empty PostgreSQL database, which nobody connects to: it is only copied."""
    url = postgres.create_database()
    try:
        upgrade(url)
        yield url
    finally:
        postgres.drop_database(url)


def _pg_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, dropped afterwards; its URL."""
    if not _pg_reason:
        _pg_reason.append(postgres.available())
    need(_pg_reason[0])
    url = postgres.create_database(template=request.getfixturevalue("_pg_template"))
    try:
        yield url
    finally:
        postgres.drop_database(url)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


ConfigFactory = Callable[..., Config]


@pytest.fixture
def make_config(tmp_path: Path, db_url: str) -> ConfigFactory:
    """Write a helpdeskd.toml for this test and load it; keyword arguments add sections."""
    return config_factory(tmp_path, db_url)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, for tests that only make sense there."""
    yield from _pg_database(request)


@pytest.fixture
def make_pg_config(tmp_path: Path, pg_url: str) -> ConfigFactory:
    return config_factory(tmp_path, pg_url)


def config_factory(tmp_path: Path, db_url: str) -> ConfigFactory:

    def factory(
        *,
        smtp: SmtpSink | None = None,
        mailboxes: list[dict[str, Any]] | None = None,
        service: dict[str, Any] | None = None,
        smtp_extra: dict[str, Any] | None = None,
        agents: list[tuple[str, str]] = (("alice@acme.test", "Alice"),),  # type: ignore[assignment]
        rules: Path | None = None,
        templates: Path | None = None,
        extra: str = "",
    ) -> Config:
        secret = tmp_path / "secret.key"
        if not secret.exists():
            secret.write_text("k1 test-secret-key-0123456789abcdef\n")
        lines = [
            "[service]",
            'name = "Acme Postgres add-on"',
            'support_address = "support@acme.test"',
            'public_url = "https://support.acme.test"',
            'ticket_prefix = "HD"',
            f'secret_key_file = "{secret}"',
            f'state_dir = "{tmp_path / "state"}"',
        ]
        for key, value in (service or {}).items():
            lines.append(f"{key} = {_toml(value)}")
        lines += ["", "[database]", f'url = "{db_url}"', ""]
        if smtp is not None:
            lines += [
                "[smtp]",
                f'host = "{smtp.host}"',
                f"port = {smtp.port}",
                'security = "none"',
                "retry_base = 0.2",
                "retry_max = 1",
                "timeout = 5",
            ]
            for key, value in (smtp_extra or {}).items():
                lines.append(f"{key} = {_toml(value)}")
            lines.append("")
        for mailbox in mailboxes or []:
            lines.append("[[mailbox]]")
            lines += [f"{k} = {_toml(v)}" for k, v in mailbox.items()]
            lines.append("")
        for email, name in agents:
            lines += ["[[agent]]", f'email = "{email}"', f'name = "{name}"', ""]
        # No routing rules unless a test brings some: the shipped ones depend on the clock.
        if rules is None:
            rules = tmp_path / "no-rules"
            rules.mkdir(exist_ok=True)
        lines += ["[paths]", f'rules = "{rules}"']
        if templates is not None:
            lines.append(f'templates = "{templates}"')
        lines += ["", "[parse]", "workers = 2", "timeout = 20", "", extra]
        path = tmp_path / "helpdeskd.toml"
        path.write_text("\n".join(lines) + "\n")
        return load_config(path)

    return factory


def _toml(value: Any) -> str:
    if isinstance(value, dict):  # an inline table: the same as a [parent.key] sub-table
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
