"""The console in a real browser: Debian's Chromium, headless, driven by Playwright (no browser
download: ``make test`` installs the system package)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from console.conftest import TOKEN, Served

pytestmark = [pytest.mark.rabbitmq, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"]
# Set to a path to write a screenshot of the overview there (docs/console.png was made so).
SCREENSHOT_ENV = "EVENTYARD_CONSOLE_SCREENSHOT"


T = TypeVar("T")


async def blocking(call: Callable[..., T], *args: Any) -> T:
    """The broker helpers block (and run loops of their own): off the browser's loop."""
    return await asyncio.to_thread(call, *args)


def chromium_installed() -> bool:
    return Path(CHROMIUM).exists()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """One Chromium for the module's tests (a launch costs seconds of CPU); each test has a
    context of its own."""
    if not chromium_installed():
        pytest.fail(f"the console's browser tests need {CHROMIUM}: apt-get install chromium "
                    "(make test does)", pytrace=False)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh browser context (no cookies), and its page."""
    context = await browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def unlock(page: Page, token: str) -> None:
    await page.fill("#login input[name=token]", token)
    await page.click("#login button")


async def test_retry_a_group_and_discard_with_confirmation(console: Served, page: Page) -> None:
    service = console.service
    ids = await blocking(service.dead_letter, 4)

    await page.goto(console.url + "/")
    await expect(page.locator("#total")).to_have_text("4")
    row = page.locator("#groups tbody tr")
    await expect(row).to_have_count(1)
    await expect(row.locator("td.count")).to_have_text("4")
    await expect(row).to_contain_text("MailServerDown")
    await expect(row).to_contain_text("in send_mail_handler")
    if os.environ.get(SCREENSHOT_ENV):
        await page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)

    await unlock(page, TOKEN)
    await expect(page.locator("#signed-in")).to_be_visible()
    await page.click("#groups a")
    await expect(page.locator("#group-count")).to_have_text("4")

    # Retry two selected messages: the page counts two left, the broker holds two.
    for letter_id in ids[:2]:
        await page.check(f"input[name=id][value='{letter_id}']")
    await page.click("#retry-selected")
    await expect(page.locator("#report")).to_contain_text("Retried 2 messages.")
    await expect(page.locator("#group-count")).to_have_text("2")
    assert await blocking(service.count, service.dead_letter_queue) == 2
    assert sorted(await blocking(lambda: service.consume(fail=False, until=2))) == sorted(ids[:2])

    # Discard the rest of the group: a dismissed confirmation changes nothing.
    page.once("dialog", lambda dialog: dialog.dismiss())
    await page.click("#discard-group")
    await expect(page.locator("#group-count")).to_have_text("2")
    assert await blocking(service.count, service.dead_letter_queue) == 2
    page.once("dialog", lambda dialog: dialog.accept())
    await page.click("#discard-group")
    # The group is empty: the page goes back to the overview, which shows none left.
    await expect(page.locator("#report")).to_contain_text("Discarded 2 messages.")
    await expect(page.locator("#total")).to_have_text("0")
    await expect(page.locator("#empty")).to_be_visible()
    assert await blocking(service.count, service.dead_letter_queue) == 0


async def test_retry_the_whole_group_from_the_message_view_and_back(console: Served, page: Page) -> None:
    service = console.service
    ids = await blocking(service.dead_letter, 3)

    await page.goto(console.url + "/")
    await unlock(page, TOKEN)
    await page.click("#groups a")
    await page.click(f"text={ids[0]}")
    await expect(page.locator("#body")).to_contain_text(ids[0])
    await expect(page.locator("main")).to_contain_text("smtp timeout for")
    await page.go_back()
    await page.click("#retry-group")
    await expect(page.locator("#report")).to_contain_text("Retried 3 messages.")
    await expect(page.locator("#total")).to_have_text("0")
    assert await blocking(service.count, service.dead_letter_queue) == 0
    assert sorted(await blocking(lambda: service.consume(fail=False, until=3))) == sorted(ids)


async def test_a_wrong_token_is_refused_and_changes_nothing(console: Served, page: Page) -> None:
    service = console.service
    await blocking(service.dead_letter, 1)

    await page.goto(console.url + "/")
    await unlock(page, "wrong-" + TOKEN)

    await expect(page.locator("#error")).to_contain_text("wrong token")
    await page.goto(console.url + "/")
    await page.click("#groups a")
    await expect(page.locator("#retry-group")).to_have_count(0)
    assert re.search(r"Unlock actions", await page.content())
    assert await blocking(service.count, service.dead_letter_queue) == 1
