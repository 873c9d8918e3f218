"""The token file: 0600, written whole or not at all, and one holder of its lock at a time."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from helpdeskd.oauth.errors import OAuthError
from helpdeskd.oauth.state import TokenState
from helpdeskd.oauth.tokenfile import TokenFile
from tests.oauth.support import Holder

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def state(n: int = 1) -> TokenState:
    return TokenState(provider="generic", refresh_token=f"rt-{n}", account="a@x", obtained_at=NOW)


def lock_is_free(file: TokenFile) -> bool:
    fd = os.open(file.lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


async def test_written_0600_in_a_0700_folder_with_nothing_left_over(
    tmp_path: Path, umask_zero: None
) -> None:
    file = TokenFile(tmp_path / "oauth" / "support.json")
    assert await file.read() is None
    async with file.locked() as locked:
        assert locked.state is None
        await locked.save(state())
    assert stat.S_IMODE(file.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(file.lock_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in file.path.parent.iterdir()) == [
        "support.json",
        "support.json.lock",
    ]
    assert await file.read() == state()
    assert json.loads(file.path.read_text())["refresh_token"] == "rt-1"


async def test_a_reader_sees_the_old_file_or_the_new_never_a_part(tmp_path: Path) -> None:
    file = TokenFile(tmp_path / "t.json")
    file.write_now(state(0))
    stop = threading.Event()
    seen: list[str] = []
    errors: list[Exception] = []

    def read() -> None:
        while not stop.is_set():
            try:
                found = file.read_now()
            except Exception as exc:
                errors.append(exc)
                return
            assert found is not None and found.refresh_token is not None
            seen.append(found.refresh_token)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(1, 60):
            await file.write(state(n) if n % 2 else state(n).replace(account="x" * 5000))
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert seen  # it read while the writes went on
    assert (await file.read()) == state(59)


async def test_a_failed_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = TokenFile(tmp_path / "t.json")
    file.write_now(state(1))

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OAuthError, match=r"cannot write the token file .*No space left") as caught:
        await file.write(state(2))
    assert caught.value.code == "token_store"
    monkeypatch.undo()
    assert await file.read() == state(1)
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


async def test_a_damaged_file_is_one_line(tmp_path: Path) -> None:
    file = TokenFile(tmp_path / "t.json")
    file.path.write_text("{not json")
    with pytest.raises(OAuthError, match=r"^the token file .* is damaged") as caught:
        await file.read()
    assert caught.value.code == "token_store"


async def test_a_file_others_can_read_is_logged(tmp_path: Path) -> None:
    file = TokenFile(tmp_path / "t.json")
    file.write_now(state())
    file.path.chmod(0o644)
    with capture_logs() as logs:
        await file.read()
    assert [e["event"] for e in logs] == ["oauth_token_file_readable"]
    assert "rt-1" not in str(logs)


async def test_the_lock_waits_for_its_holder(tmp_path: Path) -> None:
    file = TokenFile(tmp_path / "t.json")
    holder = Holder(file)
    got = asyncio.Event()

    async def take() -> None:
        async with file.locked():
            got.set()

    task = asyncio.create_task(take())
    await asyncio.sleep(0.2)
    assert not got.is_set()  # the other holder still has it
    holder.release()
    await asyncio.wait_for(task, 10)
    assert got.is_set()
    assert lock_is_free(file)  # and it was let go


async def test_a_cancelled_wait_lets_the_lock_go_when_it_comes(tmp_path: Path) -> None:
    file = TokenFile(tmp_path / "t.json")
    holder = Holder(file)

    async def take() -> None:
        async with file.locked():
            raise AssertionError("cancelled before the lock came")

    task = asyncio.create_task(take())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    holder.release()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not lock_is_free(file):
        assert loop.time() < deadline, "the waiting thread kept the lock"
        await asyncio.sleep(0.02)
    async with file.locked():  # and it can be had again
        pass
