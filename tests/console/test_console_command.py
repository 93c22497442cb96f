"""``eventyard console`` as a command: serves the page, makes a token when none is set, refuses
bad options."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import pytest

from cli.conftest import EVENTYARD, ROOT, Service
from support.rabbitnode import free_port, port_open
from support.vhost import clean_env
from support.waiting import wait_until


@pytest.mark.rabbitmq
def test_the_command_serves_the_dead_letters_and_prints_a_token_made_for_the_run(service: Service) -> None:
    service.dead_letter(2)
    port = free_port()
    process = subprocess.Popen(
        [str(EVENTYARD), "console", "--port", str(port), "-q", service.dead_letter_queue,
         "-o", service.org, "-s", "registration", "--app", "cli.cliapp:subscribers"],
        env=clean_env(RABBITMQ_URL=service.url, PYTHONPATH=str(ROOT / "tests")), cwd=ROOT,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: port_open(port), 30.0, "the console to listen")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            page = response.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/asyncapi.json", timeout=30) as response:
            document = json.loads(response.read())
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)

    assert re.search(r"EVENTYARD_CONSOLE_TOKEN is not set: actions need this token, made for this "
                     r"run: \S{20,}", stderr)
    assert f"eventyard console on http://127.0.0.1:{port}/" in stderr and ":guest@" not in stderr
    assert '<span id="total">2</span>' in page and service.dead_letter_queue in page
    assert service.count(service.dead_letter_queue) == 2
    assert document["asyncapi"] == "3.0.0"
    assert list(document["channels"]) == [f"{service.org}.registration.1.event.user_created"]


@pytest.mark.parametrize(("args", "message"), [
    (["--service", "registration"], "--service needs --organization"),
    (["-q", "acme.registration.1.event.user_created.h"], "is not a dead-letter queue"),
    (["--app", "cli.cliapp:subscribers"], "--app needs --organization and --service"),
])
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run([str(EVENTYARD), "console", *args], env=clean_env(), capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
