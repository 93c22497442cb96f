"""The console over HTTP: grouping, the token, CSRF, and actions that change the broker."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from urllib.parse import urlencode

import pytest

from console.conftest import TOKEN, Served

pytestmark = pytest.mark.rabbitmq


class Browser:
    """urllib with cookies: what a browser sends, no JavaScript."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def get(self, path: str) -> tuple[int, str]:
        return self._send(urllib.request.Request(self.base + path))

    def post(self, path: str, fields: list[tuple[str, str]]) -> tuple[int, str]:
        return self._send(urllib.request.Request(self.base + path, data=urlencode(fields).encode(),
                                                 method="POST"))

    def _send(self, request: urllib.request.Request) -> tuple[int, str]:
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert match, "the page carries a CSRF value"
    return match.group(1)


def group_link(page: str) -> str:
    match = re.search(r'href="(/groups/[0-9a-f]+)"', page)
    assert match, "the overview links a group"
    return match.group(1)


def test_overview_groups_dead_letters_by_type_and_failure_without_the_password(console: Served) -> None:
    service = console.service
    service.dead_letter(3)

    status, page = Browser(console.url).get("/")

    assert status == 200
    assert re.search(r'<td class="count">3</td>\s*<td><a href="/groups/[0-9a-f]+">user.created</a>', page)
    assert "MailServerDown" in page and "cliapp.py:" in page and "in send_mail_handler" in page
    assert service.dead_letter_queue in page
    assert "guest@localhost" in page or "guest@127.0.0.1" in page
    assert ":guest@" not in page and "password" not in page.replace('type="password"', "")
    assert service.count(service.dead_letter_queue) == 3


def test_actions_need_the_token_and_the_csrf_value(console: Served) -> None:
    service = console.service
    (letter,) = service.dead_letter(1)
    browser = Browser(console.url)
    _, page = browser.get("/")
    csrf = csrf_of(page)
    fields = [("csrf", csrf), ("queue", service.dead_letter_queue), ("id", letter)]

    locked = browser.post("/discard", fields)
    wrong = browser.post("/login", [("csrf", csrf), ("token", "not-the-token"), ("next", "/")])
    still_locked = browser.post("/retry", fields)
    signed = browser.post("/login", [("csrf", csrf), ("token", TOKEN), ("next", "/")])
    no_csrf = browser.post("/discard", fields[1:])
    forged = browser.post("/discard", [("csrf", "0" * 64), *fields[1:]])

    assert locked[0] == 403 and "sign in with the console token" in locked[1]
    assert wrong[0] == 403 and "wrong token" in wrong[1]
    assert still_locked[0] == 403
    assert signed[0] == 200 and "actions unlocked" in signed[1]
    assert no_csrf[0] == 403 and forged[0] == 403 and "CSRF" in forged[1]
    assert service.count(service.dead_letter_queue) == 1


def test_retry_one_and_discard_the_rest_of_a_group_act_like_the_cli(console: Served) -> None:
    service = console.service
    first, second, third = service.dead_letter(3)
    browser = Browser(console.url)
    csrf = csrf_of(browser.get("/")[1])
    browser.post("/login", [("csrf", csrf), ("token", TOKEN), ("next", "/")])
    group = group_link(browser.get("/")[1])
    key = group.rsplit("/", 1)[1]

    status, page = browser.post("/retry", [("csrf", csrf), ("queue", service.dead_letter_queue),
                                           ("group", key), ("id", second), ("id", "not-there")])

    assert status == 200
    assert "Retried 1 message." in page and "Not found: not-there" in page
    assert '<span id="group-count">2</span>' in page
    assert service.consume(fail=False, until=1) == [second]

    status, page = browser.post("/discard", [("csrf", csrf), ("queue", service.dead_letter_queue),
                                             ("group", key), ("id", first), ("id", third)])

    assert status == 200 and "Discarded 2 messages." in page and 'id="empty"' in page
    assert service.count(service.dead_letter_queue) == 0


def test_message_view_shows_body_headers_and_failure(console: Served) -> None:
    service = console.service
    (letter,) = service.dead_letter(1)

    status, page = Browser(console.url).get(
        "/message?" + urlencode({"queue": service.dead_letter_queue, "id": letter}))
    missing = Browser(console.url).get(
        "/message?" + urlencode({"queue": service.dead_letter_queue, "id": "nope"}))
    bad = Browser(console.url).get("/message?" + urlencode({"queue": "not-a-dlq", "id": "x"}))

    assert status == 200
    assert letter in page and "MailServerDown" in page and "smtp timeout for" in page
    assert "failure_attempts: 2" in page and "Traceback" in page and "user.created" in page
    assert missing[0] == 200 and 'id="message-gone"' in missing[1]
    assert bad[0] == 400 and "dead-letter queue" in bad[1]
    assert service.count(service.dead_letter_queue) == 1


def test_topology_lists_the_service_exchanges_queues_and_bindings(console: Served) -> None:
    service = console.service
    service.configure()

    status, page = Browser(console.url).get("/topology?" + urlencode({"org": service.org,
                                                                      "svc": "registration"}))
    bad_status, bad = Browser(console.url).get("/topology?" + urlencode({"org": "a b", "svc": "x"}))

    assert status == 200
    exchanges = page.split('id="exchanges"')[1].split("</table>")[0]
    queues = page.split('id="queues"')[1].split("</table>")[0]
    bindings = page.split('id="bindings"')[1].split("</table>")[0]
    for name in (f"{service.org}.registration", f"retry.{service.org}.registration",
                 f"dead_letter.{service.org}.registration"):
        assert f">{name}<" in exchanges
    for name in (service.queue, service.retry_queue, service.dead_letter_queue):
        assert f">{name}<" in queues
    assert f">{service.org}.registration.1.event.user_created<" in bindings
    assert f">retry.{service.queue}<" in bindings and f">dead_letter.{service.queue}<" in bindings
    assert bad_status == 400 and "organization" in bad


def test_without_an_application_there_is_no_asyncapi_document(console: Served) -> None:
    status, page = Browser(console.url).get("/asyncapi.json")

    assert status == 400 and "start the console with --app" in page


def test_a_page_asked_for_under_another_host_name_is_refused(console: Served) -> None:
    request = urllib.request.Request(console.url + "/", headers={"Host": "rebound.example:8642"})

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)

    assert refused.value.code == 400
