"""Unsubscribe and preferences pages (RFC 8058 one-click included).

Only a POST changes anything: link scanners follow GET links, so GET shows a confirm page. The
one-click POST needs no cookie or login — the signed token in the URL is the authority. A forged
or damaged token gets a 400 page and changes nothing. Every opt-out is an audit event.

A token for ALL_CATEGORIES (the preferences link's) also works on the unsubscribe page: it opts
out of every optional category at once, those added to the config later included.
"""

from __future__ import annotations

from typing import Any

import jinja2
from aiohttp import web
from sqlalchemy import select

from helpdeskd.clock import Clock, system_clock
from helpdeskd.config.settings import DEFAULT_TEMPLATES, Config
from helpdeskd.desk.noticemail import preferences_url
from helpdeskd.desk.notices import covers, opt_in, opt_out
from helpdeskd.mail.tokens import ALL_CATEGORIES, UnsubscribeToken, verify_unsubscribe
from helpdeskd.store.db import SessionMaker, reading
from helpdeskd.store.models import Contact, OptOut


def _label(category: str) -> str:
    return "all optional" if category == ALL_CATEGORIES else category.replace("_", " ")


class UnsubscribePages:
    """The pages behind a notice's unsubscribe and preferences links; CLOCK stamps changes."""

    def __init__(
        self, config: Config, sessions: SessionMaker, *, clock: Clock = system_clock
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.clock = clock
        folders = [str(config.paths.templates), str(DEFAULT_TEMPLATES)]
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(folders),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/unsubscribe/{token}", self.confirm),
            web.post("/unsubscribe/{token}", self.unsubscribe),
            web.get("/preferences/{token}", self.preferences),
            web.post("/preferences/{token}", self.save_preferences),
        ]

    def _page(self, name: str, status: int = 200, **context: Any) -> web.Response:
        service = self.config.service
        html = self.env.get_template(f"web/{name}.html.j2").render(
            service={"name": service.name, "support_address": service.support_address},
            **context,
        )
        return web.Response(
            text=html,
            status=status,
            content_type="text/html",
            headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"},
        )

    def _optional(self) -> list[str]:
        notices = self.config.notices
        return [name for name, critical in notices.categories if not critical] if notices else []

    async def _resolve(
        self, request: web.Request, *, preferences: bool
    ) -> tuple[UnsubscribeToken, Contact] | web.Response:
        token = verify_unsubscribe(self.config.service.secret_keys, request.match_info["token"])
        valid = token is not None and (
            token.category == ALL_CATEGORIES
            or (not preferences and token.category in self._optional())
        )
        if token is None or not valid:
            return self._page("error", status=400)
        async with reading(self.sessions) as session:
            contact = await session.get(Contact, token.contact_id)
        if contact is None:
            return self._page("error", status=404)
        return token, contact

    async def confirm(self, request: web.Request) -> web.Response:
        found = await self._resolve(request, preferences=False)
        if isinstance(found, web.Response):
            return found
        token, contact = found
        return self._page(
            "unsubscribe",
            done=False,
            email=contact.email,
            category_label=_label(token.category),
            preferences_url=preferences_url(self.config, contact.id),
        )

    async def unsubscribe(self, request: web.Request) -> web.Response:
        found = await self._resolve(request, preferences=False)
        if isinstance(found, web.Response):
            return found
        token, contact = found
        form = await request.post()
        via = "one-click" if form.get("List-Unsubscribe") == "One-Click" else "web"
        async with self.sessions() as session, session.begin():
            row = await session.get_one(Contact, contact.id)
            await opt_out(session, row, token.category, via, now=self.clock())
        return self._page(
            "unsubscribe",
            done=True,
            email=contact.email,
            category_label=_label(token.category),
            preferences_url=preferences_url(self.config, contact.id),
        )

    async def _categories(self, contact: Contact) -> list[dict[str, Any]]:
        async with reading(self.sessions) as session:
            opted = set(
                await session.scalars(
                    select(OptOut.category).where(OptOut.contact_id == contact.id)
                )
            )
        return [
            {"name": name, "label": _label(name), "subscribed": not covers(opted, name)}
            for name in self._optional()
        ]

    async def preferences(self, request: web.Request, *, saved: bool = False) -> web.Response:
        found = await self._resolve(request, preferences=True)
        if isinstance(found, web.Response):
            return found
        _, contact = found
        notices = self.config.notices
        critical = [_label(n) for n, c in notices.categories if c] if notices else []
        return self._page(
            "preferences",
            email=contact.email,
            categories=await self._categories(contact),
            critical=critical,
            saved=saved,
        )

    async def save_preferences(self, request: web.Request) -> web.Response:
        found = await self._resolve(request, preferences=True)
        if isinstance(found, web.Response):
            return found
        _, contact = found
        form = await request.post()
        wanted = set(form.getall("subscribe", [])) & set(self._optional())
        now = self.clock()
        async with self.sessions() as session, session.begin():
            row = await session.get_one(Contact, contact.id)
            for name in self._optional():
                if name in wanted:
                    await opt_in(session, row, name, "web", now=now)
                else:
                    await opt_out(session, row, name, "web", now=now)
            if wanted:
                # The choice is now per category (each unwanted one is out above), so an
                # opt-out of all of them no longer stands.
                await opt_in(session, row, ALL_CATEGORIES, "web", now=now)
        return await self.preferences(request, saved=True)
