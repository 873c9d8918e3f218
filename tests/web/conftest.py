"""Fixtures of the web tests: the browser that looks at the pages."""

from __future__ import annotations

import pytest

from tests.servers import browser


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium; the test is skipped without it (fails when CI=true)."""
    return browser.require_chromium()
