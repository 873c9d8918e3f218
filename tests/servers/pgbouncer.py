"""Run a private PgBouncer in transaction pooling mode in front of the test PostgreSQL.

Each :class:`PgBouncer` has its own config, auth file and log in a temporary directory and
listens on a free loopback port; it runs in the foreground as the test system user (PgBouncer
refuses to run as root) and is killed with its process group at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.servers import postgres
from tests.servers.dovecot import SYSTEM_USER, ensure_system_user, free_port

START_TIMEOUT = 15.0


def unavailable_reason() -> str | None:
    if shutil.which("pgbouncer") is None:
        return "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
    return postgres.available()


class PgBouncer:
    """PgBouncer with ``pool_mode = transaction``: every transaction may get another server
    connection, so nothing a session sets (advisory locks, prepared statements) survives."""

    def __init__(self) -> None:
        upstream = make_url(postgres.PG_DSN)
        self.user = upstream.username or "postgres"
        self.password = upstream.password or ""
        self.upstream = upstream
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="helpdeskd-pgbouncer-"))
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, database_url: str) -> str:
        """DATABASE_URL's database through this PgBouncer, with the option a transaction
        pooler needs (docs/admin.md)."""
        name = make_url(database_url).database
        secret = f":{self.password}" if self.password else ""
        return (
            f"postgresql://{self.user}{secret}@127.0.0.1:{self.port}/{name}"
            "?prepared_statement_cache_size=0"
        )

    def start(self) -> None:
        uid, gid = ensure_system_user()
        server = f"host={self.upstream.host or '127.0.0.1'} port={self.upstream.port or 5432}"
        server += f" user={self.user}" + (f" password={self.password}" if self.password else "")
        (self.root / "users.txt").write_text(f'"{self.user}" "{self.password}"\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = {server}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.root / 'users.txt'}\n"
            "pool_mode = transaction\n"
            "default_pool_size = 4\n"
            "max_client_conn = 200\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        for path in (self.root, *self.root.iterdir()):
            os.chown(path, uid, gid)
        command = ["pgbouncer", str(self.root / "pgbouncer.ini")]
        if os.geteuid() == 0:
            command[1:1] = ["-u", SYSTEM_USER]
        self._proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen within {START_TIMEOUT:g} s")

    def stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        path = self.root / "pgbouncer.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
