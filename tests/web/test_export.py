"""The status page as static files: links that work from disk and from a static host."""

from __future__ import annotations

import functools
import http.server
import threading
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

from helpdeskd.web import feeds
from helpdeskd.web import statuspage as sp
from helpdeskd.web.export import export
from tests.servers import browser
from tests.statusgen import NOW, sample
from tests.web.test_statuspage import Page

_HREF_TAGS = {"link": "href", "a": "href", "img": "src"}


def local_links(page: Path) -> list[str]:
    parsed = Page(page.read_text())
    hrefs = [a[attr] for tag, attr in _HREF_TAGS.items() for a in parsed.find(tag) if attr in a]
    return [h for h in hrefs if not urlsplit(h).scheme and not h.startswith("#")]


def test_export_writes_static_files_whose_links_work(tmp_path: Path) -> None:
    data = sample()
    written = export(data, tmp_path / "site")
    site = tmp_path / "site"
    assert sorted(p.relative_to(site).as_posix() for p in written) == [
        "index.html", "status.json", "status/feed.atom", "status/index.html", "status/status.css",
    ]  # fmt: skip
    assert not [p for p in site.rglob(".*")]  # no temp files left behind
    for page in (site / "index.html", site / "status" / "index.html"):
        links = local_links(page)
        assert len(links) >= 5, links
        for href in links:
            target = (page.parent / urldefrag(href).url).resolve()
            assert target.is_file(), f"{page.relative_to(site)}: {href} -> {target}"
    assert (site / "status.json").read_text() == feeds.render_json(data)
    ET.fromstring((site / "status" / "feed.atom").read_text())
    assert (site / "status" / "status.css").read_text() == sp.render_css()
    # exporting again replaces the files
    export(sample(generated_at=NOW + timedelta(minutes=5)), site)
    assert "14:05 CET" in (site / "status" / "index.html").read_text()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    hits: list[tuple[str, int]]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.hits.append((self.path, int(code)))


def test_exported_page_works_from_a_static_host(chromium: str, tmp_path: Path) -> None:
    folder = tmp_path / "site"
    export(sample(), folder)
    hits: list[tuple[str, int]] = []
    handler = type("Handler", (_QuietHandler,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        dom = browser.dump_dom(f"http://{host!s}:{port}/status/")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert ("/status/status.css", 200) in hits, hits
    assert "Connection errors on eu-west-1 databases" in dom
