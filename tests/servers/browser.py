"""Drive Debian's headless Chromium (``/usr/bin/chromium``): screenshots and rendered DOM.

Each call starts a fresh browser with its own temporary profile and the flags this machine
needs (no sandbox as root, no network beyond what the page asks for, no first-run or background
traffic), waits at most ``timeout`` seconds, and kills the whole process group on the way out.

Without Chromium, :func:`require_chromium` (and the ``chromium`` fixture) skips the test, or fails
it when ``CI=true``: CI must have the browser (``.ci/setup`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("HELPDESKD_CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Chromium's stderr noise on a machine without D-Bus; left out of error messages.
_NOISE = ("dbus/", "unexpected operator", "Fontconfig", "bytes written to file")


class BrowserError(RuntimeError):
    """Chromium failed, timed out or produced nothing."""


def chromium_missing() -> str | None:
    """Why Chromium cannot run here, or None when it can."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} not found (apt-get install chromium)"
    return None


def require_chromium() -> str:
    """Return the Chromium path; skip the test without it (fail when CI=true)."""
    reason = chromium_missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the browser tests need it)")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
def chromium() -> str:
    """The path of a usable Chromium (see require_chromium)."""
    return require_chromium()


def _stderr_tail(text: str, lines: int = 12) -> str:
    kept = [
        line for line in text.splitlines() if line.strip() and not any(n in line for n in _NOISE)
    ]
    return "\n".join(kept[-lines:]) or "(nothing on stderr)"


def _run(args: list[str], url: str, timeout: float) -> str:
    """Run Chromium with the standard flags plus ARGS on URL; return its stdout."""
    binary = require_chromium()
    with tempfile.TemporaryDirectory(prefix="helpdeskd-chromium-") as profile:
        command = [binary, *FLAGS, f"--user-data-dir={profile}", *args, url]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: a timeout kills every helper
            env={**os.environ, "HOME": profile},
        )
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            raise BrowserError(
                f"chromium did not finish {url} within {timeout:g} s\n{_stderr_tail(err)}"
            ) from None
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # stray renderers, GPU or zygote helpers
            except ProcessLookupError:
                pass
        if process.returncode != 0:
            raise BrowserError(
                f"chromium exited with {process.returncode} on {url}\n{_stderr_tail(err)}"
            )
        return out


def dump_dom(url: str, *, timeout: float = 30.0, width: int = 1280, height: int = 900) -> str:
    """The DOM of URL after loading, serialised as HTML (``--dump-dom``)."""
    out = _run([f"--window-size={width},{height}", "--dump-dom"], url, timeout)
    if "<html" not in out.lower():
        raise BrowserError(f"chromium dumped no document for {url}: {out[:200]!r}")
    return out


def screenshot(
    url: str, path: Path | str, width: int = 1280, height: int = 2000, *, timeout: float = 30.0
) -> Path:
    """Save a PNG of URL's first WIDTH×HEIGHT pixels to PATH and return PATH."""
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    _run([f"--window-size={width},{height}", f"--screenshot={target}"], url, timeout)
    if not target.exists() or target.read_bytes()[:8] != PNG_MAGIC:
        raise BrowserError(f"chromium wrote no PNG screenshot of {url} to {target}")
    return target
