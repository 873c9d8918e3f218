"""Run a private Dovecot IMAP server for tests, on a free loopback port.

Each :class:`Dovecot` has its own config, base_dir, state_dir, log and Maildir tree under one
temporary directory, so tests never touch the system instance and can run side by side. The
master runs in the foreground (``dovecot -F``) in its own process group, so :meth:`Dovecot.stop`
can make sure that no Dovecot process outlives the test.

The stdlib ``imaplib`` helpers (:meth:`Dovecot.append`, :meth:`Dovecot.list_uids`, ...) are
synchronous and meant for setting up and inspecting a test, not for the code under test.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.servers.oauth import AuthServer

SYSTEM_USER = "helpdeskd-test"
HOST = "127.0.0.1"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
STOP_GRACE = 0.5
OAUTH_MECHANISMS = ("xoauth2", "oauthbearer")


class DovecotError(RuntimeError):
    """The private Dovecot could not be started or stopped."""


def dovecot_binary() -> str | None:
    """Return the path of the dovecot binary, or None when it is not installed."""
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.access(p, os.X_OK)),
        None,
    )


def unavailable_reason() -> str | None:
    """Say why a private Dovecot cannot run here, or return None when it can."""
    if dovecot_binary() is None:
        return "dovecot is not installed (apt-get install dovecot-imapd)"
    if os.geteuid() != 0:
        return "a private dovecot needs root (it switches to its mail user)"
    for user in ("dovecot", "dovenull"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"the system user {user!r} that dovecot needs does not exist"
    return None


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_system_user(name: str = SYSTEM_USER) -> tuple[int, int]:
    """Create the system user that owns the test mail, if missing; return its (uid, gid)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:  # another test process may have won the race; that is fine
            entry = pwd.getpwnam(name)
        except KeyError:
            raise DovecotError(f"useradd {name} failed: {result.stderr.strip()}") from None
    return entry.pw_uid, entry.pw_gid


def _quote(name: str) -> str:
    """Quote a mailbox name for imaplib, which sends arguments as they are."""
    if not name.isascii():
        raise ValueError("the test helpers take ASCII folder names only")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _group_members(pgid: int) -> list[int]:
    """Return the live (non-zombie) processes of process group PGID."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after the last ')'
        fields = stat.rpartition(")")[2].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


class Dovecot:
    """A private Dovecot instance on a free loopback port, with Maildir under a temp dir."""

    def __init__(
        self,
        *,
        tls: bool = False,
        mechanisms: str = "plain login",
        extra_config: str = "",
        oauth: AuthServer | None = None,
    ) -> None:
        """Prepare (not start) an instance.

        TLS adds STARTTLS on ``port`` and implicit TLS on ``tls_port`` with a fresh self-signed
        certificate at ``cert_path`` (for 127.0.0.1 and localhost). MECHANISMS are the SASL
        mechanisms (Dovecot 2.3 checks an ``xoauth2`` token as the user's password, which is
        enough to test XOAUTH2). EXTRA_CONFIG is appended to the config, e.g.
        ``imap_capability = IMAP4rev1 IDLE UIDPLUS`` to hide MOVE.

        OAUTH, a started test authorization server, adds XOAUTH2 and OAUTHBEARER checked by a
        passdb ``oauth2`` that introspects every token at that server (no auth cache: an expired
        or revoked token is refused at once). The token's account needs no passwd entry; password
        logins keep working for the users added with :meth:`add_user`.
        """
        binary = dovecot_binary()
        if binary is None:
            raise DovecotError("dovecot is not installed")
        self.binary = binary
        self.host = HOST
        self.port = free_port()
        self.tls = tls
        self.oauth = oauth
        if oauth is not None:
            wanted = mechanisms.split()
            mechanisms = " ".join(wanted + [m for m in OAUTH_MECHANISMS if m not in wanted])
        self.mechanisms = mechanisms
        self.extra_config = extra_config
        # with tls: STARTTLS on `port`, implicit TLS on `tls_port`, signed by `cert_path`
        self.tls_port: int | None = free_port() if tls else None
        self.root = Path(tempfile.mkdtemp(prefix="helpdeskd-dovecot-"))
        # the login processes (dovenull) and the mail user must traverse it
        self.root.chmod(0o755)
        self.log_path = self.root / "dovecot.log"
        self.config_path = self.root / "dovecot.conf"
        self.passwd_path = self.root / "passwd"
        self.mail_root = self.root / "mail"
        self.cert_path = self.root / "cert.pem"
        self.key_path = self.root / "key.pem"
        self.oauth2_config_path = self.root / "dovecot-oauth2.conf.ext"
        self.users: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepared = False

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until it greets on its port."""
        if self.running:
            return
        self._prepare()
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() can reap every child
            )
        try:
            self._wait_ready(self.port)
            if self.tls_port is not None:
                self._wait_ready(self.tls_port, greet=False)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server and every process it started."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid
        if proc.poll() is None:
            # SIGTERM to the whole group: every process shuts down at once (the imap processes
            # say BYE to their clients), where a SIGTERM to the master alone takes a second
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                # the master sometimes waits seconds for anvil, blocked in a read; tests
                # need no graceful end past this point (the clients have had their BYE)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
        # the master is gone; its children notice and exit, but do not wait for that forever
        deadline = time.monotonic() + STOP_TIMEOUT
        while _group_members(pgid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                if time.monotonic() > deadline + 2:
                    raise DovecotError(f"dovecot processes {_group_members(pgid)} do not exit")
            time.sleep(0.02)

    def restart(self) -> None:
        """Stop and start again on the same port and mail directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """Return the last LINES lines of the Dovecot log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- users and mail -------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        """Add (or replace) a user; Dovecot rereads the passwd-file when it changes."""
        for value in (name, password):
            if ":" in value or "\n" in value:
                raise ValueError("passwd-file fields cannot hold ':' or newlines")
        self.users[name] = password
        self._write_passwd()

    def append(
        self, user: str, password: str, raw: bytes, folder: str = "INBOX", flags: str = ""
    ) -> int:
        """Append RAW to FOLDER (created if missing) with FLAGS; return its UID."""
        flag_arg = f"({flags})" if flags else ""
        with self._imap(user, password) as imap:
            typ, data = imap.append(_quote(folder), flag_arg, None, raw)
            if typ != "OK" and b"TRYCREATE" in (data[0] or b""):
                imap.create(_quote(folder))
                typ, data = imap.append(_quote(folder), flag_arg, None, raw)
            if typ != "OK":
                raise DovecotError(f"APPEND to {folder} failed: {data!r}")
            match = re.search(rb"\[APPENDUID \d+ (\d+)\]", data[0] or b"")
            if match is None:
                raise DovecotError(f"APPEND gave no APPENDUID: {data!r}")
            return int(match.group(1))

    def list_uids(self, user: str, password: str, folder: str = "INBOX") -> list[int]:
        """Return the UIDs in FOLDER (empty when it does not exist), \\Deleted ones included."""
        with self._imap(user, password) as imap:
            typ, _ = imap.select(_quote(folder), readonly=True)
            if typ != "OK":
                return []
            typ, data = imap.uid("SEARCH", "ALL")
            if typ != "OK":
                raise DovecotError(f"UID SEARCH failed: {data!r}")
            return sorted(int(n) for n in (data[0] or b"").split())

    def flags(self, user: str, password: str, folder: str = "INBOX") -> dict[int, set[str]]:
        """Return each message's flags and keywords in FOLDER, by UID."""
        with self._imap(user, password) as imap:
            typ, _ = imap.select(_quote(folder), readonly=True)
            if typ != "OK":
                return {}
            typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS)")
            result: dict[int, set[str]] = {}
            for item in data:
                if not isinstance(item, bytes):
                    continue
                uid = re.search(rb"UID (\d+)", item)
                flags = re.search(rb"FLAGS \(([^)]*)\)", item)
                if uid and flags:
                    result[int(uid.group(1))] = set(flags.group(1).decode().split())
            return result

    def fetch(self, user: str, password: str, uid: int, folder: str = "INBOX") -> bytes:
        """Return the raw bytes of one message (without setting \\Seen)."""
        with self._imap(user, password) as imap:
            imap.select(_quote(folder), readonly=True)
            _, data = imap.uid("FETCH", str(uid), "(BODY.PEEK[])")
            for item in data:
                if isinstance(item, tuple):
                    raw: bytes = item[1]
                    return raw
            raise DovecotError(f"no message with UID {uid} in {folder}: {data!r}")

    def uidvalidity(self, user: str, password: str, folder: str = "INBOX") -> int:
        """Return FOLDER's UIDVALIDITY."""
        with self._imap(user, password) as imap:
            typ, data = imap.status(_quote(folder), "(UIDVALIDITY)")
            match = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"") if typ == "OK" else None
            if match is None:
                raise DovecotError(f"STATUS {folder} failed: {data!r}")
            return int(match.group(1))

    def change_uidvalidity(self, user: str, password: str, folder: str = "INBOX") -> int:
        """Give FOLDER a new UIDVALIDITY (UIDs are reassigned); return the new value.

        Stops the server, deletes the folder's uidlist and indexes and starts again: Dovecot
        then renumbers the messages under a UIDVALIDITY taken from its per-user counter,
        which always moves forward.
        """
        before = self.uidvalidity(user, password, folder)
        self.stop()
        user_root = self.mail_root / user
        folder_dir = user_root if folder.upper() == "INBOX" else user_root / f".{folder}"
        if not folder_dir.is_dir():
            raise DovecotError(f"no Maildir folder at {folder_dir}")
        for path in [
            *folder_dir.glob("dovecot-uidlist*"),
            *folder_dir.glob("dovecot.index*"),
            *user_root.glob("dovecot.list.index*"),
        ]:
            path.unlink()
        self.start()
        after = self.uidvalidity(user, password, folder)
        if after == before:
            raise DovecotError(f"UIDVALIDITY of {folder} did not change ({after})")
        return after

    # --- internals ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _imap(self, user: str, password: str) -> Iterator[imaplib.IMAP4]:
        imap = imaplib.IMAP4(self.host, self.port, timeout=10)
        try:
            imap.login(user, password)
            yield imap
        finally:
            try:
                imap.logout()
            except Exception:
                with contextlib.suppress(OSError):
                    imap.shutdown()

    def _prepare(self) -> None:
        if self._prepared:
            return
        uid, gid = ensure_system_user()
        self.mail_root.mkdir(exist_ok=True)
        os.chown(self.mail_root, uid, gid)
        self.mail_root.chmod(0o700)
        self._write_passwd()
        if self.tls:
            self._make_certificate()
        if self.oauth is not None:
            self.oauth2_config_path.write_text(self._oauth2_config(self.oauth))
        self.config_path.write_text(self._config())
        self._prepared = True

    def _write_passwd(self) -> None:
        # passwd-file: user:password:uid:gid:gecos:home:shell:extra; mail_uid fills the blanks
        lines = [f"{name}:{{PLAIN}}{password}::::::\n" for name, password in self.users.items()]
        tmp = self.passwd_path.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        tmp.chmod(0o644)
        tmp.replace(self.passwd_path)

    def _make_certificate(self) -> None:
        result = subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                str(self.key_path),
                "-out",
                str(self.cert_path),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise DovecotError(f"openssl could not make a test certificate: {result.stderr}")

    def _config(self) -> str:
        root = self.root
        if self.tls:
            ssl = f"ssl = yes\nssl_cert = <{self.cert_path}\nssl_key = <{self.key_path}\n"
            imaps = f"address = {HOST}\n    port = {self.tls_port}\n    ssl = yes"
        else:
            ssl = "ssl = no\n"
            imaps = "port = 0"
        return f"""\
# private helpdeskd test instance; nothing here touches the system dovecot
instance_name = helpdeskd-test-{self.port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {self.log_path}
info_log_path = {self.log_path}
protocols = imap
listen = {HOST}
{ssl}disable_plaintext_auth = no
auth_mechanisms = {self.mechanisms}
auth_failure_delay = 0
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
first_valid_gid = 1
mail_uid = {SYSTEM_USER}
mail_gid = {SYSTEM_USER}
mail_location = maildir:{self.mail_root}/%u
mail_plugins =
mailbox_idle_check_interval = 1 secs
imap_idle_notify_interval = 2 secs
shutdown_clients = yes
{self._auth_config()}service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.port}
  }}
  inet_listener imaps {{
    {imaps}
  }}
}}
protocol imap {{
  mail_max_userip_connections = 100
}}
{self.extra_config}
"""

    def _auth_config(self) -> str:
        password = f"""\
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_path}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd_path}
}}
"""
        if self.oauth is None:
            return password
        # Tokens go to the oauth2 passdb only, passwords to the passwd-file only; the static
        # userdb lets a token's account in without a passwd entry. Without the anvil penalty
        # listener the auth process keeps no per-IP penalty: otherwise every refused token
        # would hold back the next login from 127.0.0.1 (any user's) by 4 s, then 8 s, ...
        return f"""\
auth_cache_size = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = oauth2
  mechanisms = {" ".join(OAUTH_MECHANISMS)}
  args = {self.oauth2_config_path}
}}
passdb {{
  driver = passwd-file
  mechanisms = {self._password_mechanisms()}
  args = scheme=PLAIN username_format=%u {self.passwd_path}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd_path}
}}
userdb {{
  driver = static
  args = allow_all_users=yes
}}
"""

    def _password_mechanisms(self) -> str:
        return " ".join(m for m in self.mechanisms.split() if m not in OAUTH_MECHANISMS) or "plain"

    @staticmethod
    def _oauth2_config(oauth: AuthServer) -> str:
        return f"""\
introspection_url = {oauth.introspection_url}
introspection_mode = post
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 10000
"""

    def _wait_ready(self, port: int, *, greet: bool = True) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise DovecotError(
                    f"dovecot exited with status {code} while starting; log:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, port), timeout=2) as sock:
                    if not greet:
                        return
                    greeting = sock.recv(1024)
                    if greeting.startswith(b"* OK"):
                        return
                    last_error = f"unexpected greeting {greeting[:80]!r}"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.02)
        raise DovecotError(
            f"dovecot did not greet on {self.host}:{port} within {START_TIMEOUT:.0f} s "
            f"({last_error}); log:\n{self.log_tail()}"
        )
