"""The web client in a real browser against the real server: two people, live, and the operator.

Everything goes through the page (forms, buttons, the WebSocket it opens); the test's own REST
calls only set the scene (a celebrity's followers) or check what the page claims.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect
from websockets.asyncio.client import ClientConnection, connect

from sn.dev.wsclient import ws_url
from tests.conftest import JWT_SECRET
from tests.support import ServerProcess, User, admin_token, eventually
from tests.web.conftest import Tab, save_screenshot

pytestmark = pytest.mark.slow

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> & <b>bold?</b>'
CYRILLIC = "абвгдежзиклмнопрстуфхцчшэюя"


def cyrillic_suffix(length: int = 6) -> str:
    return "".join(random.choice(CYRILLIC) for _ in range(length))


async def register_in_page(page: Page, first: str, last: str, password: str) -> str:
    await page.get_by_label("First name").fill(first)
    await page.get_by_label("Last name").fill(last)
    await page.get_by_label("Birth date").fill("1994-04-12")
    await page.get_by_label("City").fill("Казань")
    await page.locator("form", has=page.get_by_role("heading", name="Register")).get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Register").click()
    await expect(page.get_by_text("Your user id is")).to_be_visible()
    match = re.search(r"#/user/([0-9]+)$", page.url)
    assert match, page.url
    return match.group(1)


async def log_in_in_page(page: Page, user_id: str, password: str) -> None:
    form = page.locator("form", has=page.get_by_role("heading", name="Log in"))
    await form.get_by_label("User id").fill(user_id)
    await form.get_by_label("Password").fill(password)
    await form.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Feed")).to_be_visible()


async def live(page: Page) -> None:
    await expect(page.locator("#conn")).to_have_text("● Live")


def posts_of(page: Page) -> Any:
    return page.locator("ol.posts article.post")


async def test_two_people_live_feed_search_edit_delete_and_reconnect(
    tabs: Callable[..., Tab], client: httpx.Client, tmp_path: Path
) -> None:
    reader_tab, author_tab = await tabs(), await tabs(390, 844)  # a desktop and a phone-sized screen
    reader, author = reader_tab.page, author_tab.page

    # The reader registers through the page (and is logged in by it); the author logs in with an id.
    await reader_tab.open()
    await expect(reader).to_have_url(re.compile(r"#/login$"))
    reader_id = await register_in_page(reader, "Анна", "Петрова" + cyrillic_suffix(), "reader-password")
    surname = "Щукина" + cyrillic_suffix()
    body = {"first_name": "Ярослава", "second_name": surname, "birthdate": "1991-02-03", "city": "Пермь"}
    author_id = client.post("/user/register", json={**body, "password": "author-password"}).json()["user_id"]
    await author_tab.open()
    await log_in_in_page(author, author_id, "author-password")
    older = [f"An older post, number {i}" for i in range(1, 24)]  # more than a page (20)
    for text in (*older, "Доброе утро, Пермь!", "Second post: the feed is newest first"):
        client.post("/post/create", json={"text": text}, headers=_auth(client, author_id, "author-password"))

    # Search by Cyrillic prefixes (lower case for a capitalised name), then follow from her page.
    await reader.get_by_role("link", name="Search").click()
    await reader.get_by_label("First name starts with").fill("ярос")
    await reader.get_by_label("Last name starts with").fill(surname[:8].lower())
    await reader.get_by_role("button", name="Search").click()
    result = reader.get_by_role("link", name=f"Ярослава {surname}")
    await expect(result).to_have_count(1)
    await result.click()
    await expect(reader.get_by_role("heading", name=f"Ярослава {surname}")).to_be_visible()
    await expect(posts_of(reader).first).to_have_text(re.compile("Second post"))  # her page lists her posts
    await reader.get_by_role("button", name="Follow", exact=True).click()
    await expect(reader.get_by_text("You follow Ярослава")).to_be_visible()

    await reader.get_by_role("link", name="Feed").click()
    await expect(posts_of(reader).first).to_have_text(re.compile("Second post"))
    await expect(posts_of(reader).nth(1)).to_have_text(re.compile("Доброе утро"))
    # Scrolling to the end fetches older pages (20 posts each) with the `before` cursor, until one
    # comes back empty. (Not "exactly 20 first": a page may come back short while the feed cache is
    # rebuilt after the follow, and the list then pages on by itself.)
    end = reader.get_by_text("No older posts.")
    deadline = asyncio.get_running_loop().time() + 15
    while not await end.is_visible():
        assert asyncio.get_running_loop().time() < deadline, "the feed did not page to its end"
        await reader.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        await asyncio.sleep(0.2)
    await expect(posts_of(reader)).to_have_count(25)
    await expect(posts_of(reader).last).to_have_text(re.compile("number 1$"))
    feed_requests = [url for url in reader_tab.urls if "/post/feed?" in url]
    assert any("before=" in url for url in feed_requests), feed_requests
    assert all("limit=20" in url for url in feed_requests), feed_requests
    await reader.evaluate("window.scrollTo(0, 0)")
    await live(reader)

    # She posts an XSS payload from her page; it reaches the reader's open feed as plain text.
    await author.get_by_role("link", name="My page").click()
    # Her page is shown once her profile has loaded (its composer comes with it): typing before
    # that would go to the feed's composer, which the page switch is about to replace.
    await expect(author.get_by_role("heading", name=re.compile(r"\(me\)$"))).to_be_visible()
    await author.get_by_role("textbox", name="What's new?").fill(XSS)
    await author.get_by_role("button", name="Post", exact=True).click()
    await expect(posts_of(author).first.locator(".text")).to_have_text(XSS)
    banner = reader.get_by_role("button", name=re.compile("1 new post"))
    await expect(banner).to_be_visible()
    await banner.click()
    newest = posts_of(reader).first
    await expect(newest.locator(".text")).to_have_text(XSS)
    await expect(newest.locator("img, script, b")).to_have_count(0)
    assert await reader.evaluate("window.__xss") is None
    assert await author.evaluate("window.__xss") is None
    await save_screenshot(reader, "web-feed.png", tmp_path)

    # Her edit and her deletion show up in the reader's feed without a reload.
    await author.get_by_role("button", name="Edit").first.click()
    await author.get_by_role("textbox", name="Post text").fill("Edited: <i>still text</i>")
    await author.get_by_role("button", name="Save").click()
    await expect(newest.locator(".text")).to_have_text("Edited: <i>still text</i>")
    await expect(newest).to_contain_text("edited")
    # The author's own post shows the edit once her save has returned (the reader can see it
    # first, over the socket); until then its buttons are the editor's, and "the first Delete"
    # would be the next post's.
    mine = posts_of(author).first
    await expect(mine.locator(".text")).to_have_text("Edited: <i>still text</i>")
    await mine.get_by_role("button", name="Delete").click()
    await author.get_by_role("button", name="Yes, delete it").click()
    await expect(posts_of(reader)).to_have_count(25)
    await expect(reader.get_by_text("Edited:")).to_have_count(0)

    # The connection drops while the network is gone: the page says so, and on reconnecting
    # (?since=) it gets the post made meanwhile.
    await reader_tab.context.set_offline(True)
    await reader.evaluate("window.snLive.ws && window.snLive.ws.close()")
    await expect(reader.locator("#conn")).to_contain_text("Offline")
    client.post(
        "/post/create", json={"text": "While you were away"}, headers=_auth(client, author_id, "author-password")
    )
    await asyncio.sleep(0.5)  # the event is routed (and logged for replay) while the reader is away
    await reader_tab.context.set_offline(False)
    await live(reader)
    await reader.get_by_role("button", name=re.compile("1 new post")).click()
    await expect(posts_of(reader).first.locator(".text")).to_have_text("While you were away")

    # Back with an event id the server's log no longer reaches: it answers "resync" and the page
    # fetches the feed again, the post made meanwhile at the top (no banner: it is in the feed).
    await reader_tab.context.set_offline(True)
    await reader.evaluate("window.snLive.lastEventId = 1; window.snLive.ws && window.snLive.ws.close()")
    await expect(reader.locator("#conn")).to_contain_text("Offline")
    client.post("/post/create", json={"text": "After a resync"}, headers=_auth(client, author_id, "author-password"))
    reader_auth = {"Authorization": "Bearer " + await reader.evaluate("sessionStorage.getItem('sn.token')")}

    def in_feed() -> bool:  # the pipeline has put it in the reader's feed (as it routed the event)
        return client.get("/post/feed", headers=reader_auth).json()[0]["text"] == "After a resync"

    eventually(in_feed)
    await reader_tab.context.set_offline(False)
    await live(reader)
    await expect(posts_of(reader).first.locator(".text")).to_have_text("After a resync")
    await expect(reader.locator("button.banner")).to_be_hidden()

    # A dialog: the reader writes from the author's page; the author opens it from the reader's
    # page and answers; the reader's open conversation picks the answer up by itself (polling).
    await reader.goto(f"{reader_tab.base_url}/#/user/{author_id}")
    await reader.get_by_role("link", name="Message").click()
    await expect(reader.get_by_role("heading", name=f"Conversation with Ярослава {surname}")).to_be_visible()
    await expect(reader.get_by_text("no live channel for dialogs")).to_be_visible()
    await reader.get_by_role("textbox", name="Message").fill("Привет! <b>Как дела?</b>")
    await reader.get_by_role("button", name="Send").click()
    await expect(reader.locator("ol.messages li.mine p")).to_have_text("Привет! <b>Как дела?</b>")
    await author.goto(f"{author_tab.base_url}/#/user/{reader_id}")
    await author.get_by_role("link", name="Message").click()
    await expect(author.locator("ol.messages li.theirs p")).to_have_text("Привет! <b>Как дела?</b>")
    await author.get_by_role("textbox", name="Message").fill("Отлично!")
    await author.get_by_role("button", name="Send").click()
    await expect(reader.locator("ol.messages li.theirs p")).to_have_text("Отлично!", timeout=15_000)
    await reader.get_by_role("link", name="Dialogs").click()
    await expect(reader.get_by_role("link", name=f"Ярослава {surname}")).to_be_visible()

    # Log out: the tab forgets the token and the page asks to log in again.
    await reader.get_by_role("button", name="Log out").click()
    await expect(reader).to_have_url(re.compile(r"#/login$"))
    assert await reader.evaluate("sessionStorage.getItem('sn.token')") is None
    for tab in (reader_tab, author_tab):
        for url in tab.urls_with("token="):  # the token travels in a URL only where the WebSocket API needs it
            assert "/ws/" in url, url
        assert not [p for p in tab.problems if "ERR_INTERNET_DISCONNECTED" not in p], tab.problems


_tokens: dict[str, str] = {}


def _auth(client: httpx.Client, user_id: str, password: str) -> dict[str, str]:
    if user_id not in _tokens:
        _tokens[user_id] = client.post("/login", json={"id": user_id, "password": password}).json()["token"]
    return {"Authorization": f"Bearer {_tokens[user_id]}"}


async def test_operator_page_shows_a_celebrity_fanout_live(
    tabs: Callable[..., Any],
    server: ServerProcess,
    client: httpx.Client,
    make_user: Callable[..., User],
    tmp_path: Path,
) -> None:
    admin = admin_token(JWT_SECRET, make_user().id)
    admin_auth = {"Authorization": f"Bearer {admin}"}
    celebrity, normal_author, fan = make_user(), make_user(), make_user()
    followers = [make_user() for _ in range(6)]
    for follower in followers:
        assert client.put(f"/friend/set/{celebrity.id}", headers=follower.auth).status_code == 200
    assert client.put(f"/friend/set/{normal_author.id}", headers=fan.auth).status_code == 200
    # Six online followers in batches of one, 1 s apart: a fan-out of about five seconds.
    settings = {"celebrity_threshold": 5, "batch_size": 1, "batch_delay": 1.0}
    assert client.post("/celebrity-settings", json=settings, headers=admin_auth).status_code == 200
    sockets: list[ClientConnection] = []
    try:
        for user in [*followers, fan]:
            sockets.append(await _socket(server, user))
        tab = await tabs(1100, 1500)
        page = await tab.open("#/operator")
        await expect(page.get_by_text("Paste an admin token")).to_be_visible()
        await page.get_by_label("Admin token").fill(admin)
        await page.get_by_role("button", name="Use token").click()
        await expect(page.locator(".tile", has_text="connections").locator(".tile-value")).not_to_have_text("…")
        await expect(page.get_by_label("Threshold (followers)")).to_have_value("5")
        for i in range(4):  # normal posts: the latency chart next to the send rate
            _post(client, normal_author, f"before {i}")
            await asyncio.sleep(0.35)  # meanwhile every worker re-reads the settings; presence settles

        celebrity_post = _post(client, celebrity, "Hello, little monsters!")
        progress = page.locator(f'.fanout[data-post-id="{celebrity_post}"] progress')
        await expect(progress).to_have_attribute("max", "6")
        _post(client, normal_author, "meanwhile")
        await expect(progress).not_to_have_attribute("value", re.compile("^[01]$"), timeout=10_000)
        await expect(page.locator(".fanout", has_text=celebrity_post)).to_contain_text("of 6 online followers notified")
        await save_screenshot(page, "web-operator.png", tmp_path)

        # It finishes: the progress goes, the summary and the send rate stay.
        recent = page.locator("table", has=page.locator("caption", has_text="Recent fan-outs"))
        await expect(recent.locator("tr", has_text=celebrity_post)).to_contain_text("6", timeout=15_000)
        await expect(progress).to_have_count(0)
        assert "no data yet" not in (await page.locator("canvas.chart").first.get_attribute("aria-label") or "")
        await expect(page.locator("table", has=page.locator("caption", has_text="Celebrities"))).to_contain_text(
            celebrity.id
        )
        # (the suite's other servers may have left workers' stats in the same Redis: at least ours)
        workers = page.locator("table", has=page.locator("caption", has_text="Per worker")).locator("tbody tr")
        await expect(workers.first).to_contain_text("s ago")
        assert await workers.count() >= 2
        await expect(page.locator("table", has=page.locator("caption", has_text="Nodes"))).to_be_visible()

        # Edited in place: the server has the new settings.
        await page.get_by_label("Threshold (followers)").fill("1000")
        await page.get_by_label("Batch size (notifications)").fill("100")
        await page.get_by_label("Delay between batches (s)").fill("0.1")
        await page.get_by_role("button", name="Save settings").click()
        await expect(page.get_by_text("Saved: every worker")).to_be_visible()
        live_settings = client.get("/celebrity-stats", headers=admin_auth).json()["settings"]
        assert live_settings == {"celebrity_threshold": 1000, "batch_size": 100, "batch_delay": 0.1}

        # The admin token went as a Bearer header to every operator endpoint, never in a URL.
        for path in ("/stats", "/celebrity-stats", "/admin/cluster/status", "/celebrity-settings"):
            assert tab.authorized.get(path) == f"Bearer {admin}", (path, tab.authorized)
        assert tab.urls_with(admin) == []
        assert tab.problems == []
    finally:
        for ws in sockets:
            await ws.close()
        client.post(
            "/celebrity-settings",
            json={"celebrity_threshold": 1000, "batch_size": 100, "batch_delay": 0.1},
            headers=admin_auth,
        )


async def _socket(server: ServerProcess, user: User) -> ClientConnection:
    ws = await connect(ws_url(server.base_url, user.id, user.token), open_timeout=10)
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "system"
    return ws


def _post(client: httpx.Client, author: User, text: str) -> str:
    response = client.post("/post/create", json={"text": text}, headers=author.auth)
    assert response.status_code == 200, response.text
    return str(response.json())
