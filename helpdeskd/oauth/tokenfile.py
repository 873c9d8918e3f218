"""The token file: a token's state as JSON (0600), written atomically under an exclusive lock.

The lock is an ``fcntl.flock`` on ``<token_file>.lock``, held around read-refresh-write, so
the daemon, a second daemon on the same machine and ``oauth login`` take turns. A write goes to
a temporary file in the same folder, is fsynced, renamed over the token file, and the folder is
fsynced: after a crash the file holds the old state or the new, whole. Every blocking call
(flock, fsync) runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import stat
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from helpdeskd.oauth.errors import OAuthError
from helpdeskd.oauth.state import TokenState

log = structlog.get_logger(__name__)


class TokenFile:
    """The token file at PATH and its lock file beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.where = str(path)

    async def read(self) -> TokenState | None:
        """Return the state in the file, None when there is no file yet."""
        return await asyncio.to_thread(self.read_now)

    def read_now(self) -> TokenState | None:
        """Read the file in this thread (blocking); None when there is no file yet."""
        try:
            with open(self.path, "rb") as handle:
                mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
                raw = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OAuthError(
                f"cannot read the token file {self.path}: {exc.strerror}", code="token_store"
            ) from None
        if mode & 0o077:
            log.warning("oauth_token_file_readable", path=str(self.path), mode=f"{mode:04o}")
        try:
            return TokenState.from_json(json.loads(raw))
        except ValueError as exc:
            raise OAuthError(
                f"the token file {self.path} is damaged ({exc})", code="token_store"
            ) from None

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[LockedFile]:
        """Hold the exclusive lock; yield the file's state, to be saved before the lock goes."""
        fd = await _lock(self.lock_path)
        try:
            yield LockedFile(self, await self.read())
        finally:
            os.close(fd)  # lets the lock go

    async def write(self, state: TokenState) -> None:
        """Replace the file with STATE, atomically (the caller holds the lock)."""
        await asyncio.to_thread(self.write_now, state)

    def write_now(self, state: TokenState) -> None:
        """Replace the file with STATE in this thread (blocking)."""
        data = json.dumps(state.to_json(), indent=2).encode() + b"\n"
        folder = self.path.parent
        try:
            _make_folder(folder)
            # mkstemp creates the file 0600: the refresh token is never readable by others.
            fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            _fsync_folder(folder)
        except OSError as exc:
            raise OAuthError(
                f"cannot write the token file {self.path}: {exc.strerror}", code="token_store"
            ) from None


class LockedFile:
    """The token file's state, read under its lock."""

    def __init__(self, file: TokenFile, state: TokenState | None) -> None:
        self.file = file
        self.state = state

    async def save(self, state: TokenState) -> None:
        await self.file.write(state)
        self.state = state


def _make_folder(folder: Path) -> None:
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _acquire(lock_path: Path) -> int:
    """Open LOCK_PATH and wait for its exclusive flock (blocking); return the descriptor."""
    _make_folder(lock_path.parent)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def _lock(lock_path: Path) -> int:
    """Wait for the lock in a thread of its own (a wait may be long; it must not hold up the
    default executor, which the write under that lock needs). A caller cancelled while waiting
    lets the lock go as soon as the thread gets it, so nobody keeps a lock no one releases."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[int] = loop.create_future()

    def wait() -> None:
        try:
            fd = _acquire(lock_path)
        except OSError as exc:
            error = OAuthError(f"cannot lock {lock_path}: {exc.strerror}", code="token_store")
            _call_soon(loop, _fail, got, error)
            return
        if not _call_soon(loop, _deliver, got, fd):
            os.close(fd)

    threading.Thread(target=wait, name="helpdeskd-oauth-lock", daemon=True).start()
    return await got


def _call_soon(loop: asyncio.AbstractEventLoop, *call: Any) -> bool:
    try:
        loop.call_soon_threadsafe(*call)
    except RuntimeError:  # the loop is closed
        return False
    return True


def _deliver(got: asyncio.Future[int], fd: int) -> None:
    if got.done():  # the waiter was cancelled
        os.close(fd)
    else:
        got.set_result(fd)


def _fail(got: asyncio.Future[int], error: OAuthError) -> None:
    if not got.done():
        got.set_exception(error)
