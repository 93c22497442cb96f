"""The demo run on RabbitMQ with --keep leaves a dead letter that the console shows, grouped."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import pytest

from cli.conftest import EVENTYARD, ROOT
from support.broker import RabbitBroker
from support.rabbitnode import free_port, port_open
from support.vhost import clean_env, own_vhost
from support.waiting import wait_until

pytestmark = pytest.mark.rabbitmq


def test_the_console_shows_the_dead_letter_the_demo_left(rabbit: RabbitBroker) -> None:
    with own_vhost(rabbit) as broker:
        demo = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "demo.py"), "--broker", broker.url,
             "--retry-ttl", "50", "--keep"], env=clean_env(), capture_output=True, text=True,
            timeout=120)
        assert demo.returncode == 0, demo.stderr
        found = re.search(r"organization '(demo[0-9a-f]+)'", demo.stdout)
        assert found is not None, demo.stdout
        organization = found.group(1)
        assert "kept on RabbitMQ" in demo.stdout

        port = free_port()
        console = subprocess.Popen(
            [str(EVENTYARD), "console", "--port", str(port), "-o", organization, "-s", "registration"],
            env=clean_env(RABBITMQ_URL=broker.url, EVENTYARD_CONSOLE_TOKEN="t" * 32), cwd=ROOT,
            stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: port_open(port), 30.0, "the console to listen")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
                page = response.read().decode()
        finally:
            console.terminate()
            _, stderr = console.communicate(timeout=30)

        assert '<span id="total">1</span>' in page, stderr
        assert "user.created" in page and "MailServerDown" in page
        assert f"dead_letter.{organization}.registration.1.event.user_created." \
               "send_welcome_gift_handler" in page
