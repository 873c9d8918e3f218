"""The unsubscribe and preferences pages with an opt-out of every optional category (``*``)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from sqlalchemy import select

from helpdeskd.config.load import load_config
from helpdeskd.desk.noticemail import preferences_url
from helpdeskd.mail.tokens import ALL_CATEGORIES, UnsubscribeToken, sign_unsubscribe
from helpdeskd.store.models import Contact, OptOut
from tests.desk.test_notices import serving_pages
from tests.harness import Desk, cli, cli_json


async def test_all_categories_on_the_unsubscribe_page_then_back_in_through_preferences(
    make_config, tmp_path
):
    config = make_config()
    source = Path(config.source)
    source.write_text(source.read_text() + '\n[notices.categories]\nwebinar = "optional"\n')
    config = load_config(source)
    customers = tmp_path / "c.csv"
    customers.write_text("email\nada@customer.example\n")
    cli(config, "customers", "import", str(customers))
    async with Desk(config) as desk:
        async with desk.sessions() as session:
            ada = await session.scalar(select(Contact.id))
        token = sign_unsubscribe(config.service.secret_keys, UnsubscribeToken(ada, ALL_CATEGORIES))
        async with serving_pages(config, desk) as local, aiohttp.ClientSession() as http:
            page = local(f"{config.service.public_url}/unsubscribe/{token}")
            async with http.get(page) as response:
                text = await response.text()
            assert response.status == 200 and "Unsubscribe from all optional?" in text
            async with http.post(page, data={"List-Unsubscribe": "One-Click"}) as response:
                assert "all optional" in await response.text()
            prefs = cli_json(config, "contacts", "show", "ada@customer.example")["preferences"]
            assert {k: v.split(" (")[0] for k, v in prefs.items() if "critical" not in v} == {
                "feature_update": "opted out",
                "survey": "opted out",
                "webinar": "opted out",  # a category added to the config: covered too
            }
            preferences = local(preferences_url(config, ada))
            async with http.get(preferences) as response:
                text = await response.text()
            assert "checked" not in text  # every optional category shows as unsubscribed
            async with http.post(preferences, data={"subscribe": "webinar"}) as response:
                assert response.status == 200 and "Saved." in await response.text()
        async with desk.sessions() as session:
            opted = set(await session.scalars(select(OptOut.category)))
    # The per-category choice replaces the opt-out of all: webinar is back, the others stay out.
    assert opted == {"feature_update", "survey"}
    prefs = cli_json(config, "contacts", "show", "ada@customer.example")["preferences"]
    assert prefs["webinar"] == "subscribed" and prefs["survey"].startswith("opted out (web")
