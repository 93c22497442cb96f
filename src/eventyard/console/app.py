"""The console's web application: Starlette routes over the CLI's dead-letter functions.

Reads go through ``dead_letters.peek`` (messages stay in their queue); retry and discard call
``dead_letters.requeue`` and ``dead_letters.discard`` exactly as ``eventyard dlq`` does (a dead
letter is acked only after its copy was confirmed). Security model (docs/console.md): every
action needs a session opened with the console token, and a CSRF value bound to this process;
cookies are HttpOnly and SameSite=Strict; pages show the broker without its password.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from eventyard import naming
from eventyard.console.grouping import Snapshot, failure_frame, group_letters
from eventyard.errors import ConfigurationError, EventyardError, ManagementApiError
from eventyard.rabbitmq import dead_letters
from eventyard.rabbitmq.dead_letters import DeadLetter, Report, Selection
from eventyard.rabbitmq.inspection import connect
from eventyard.rabbitmq.management import discover_dead_letter_queues, service_topology
from eventyard.rabbitmq.settings import ConnectionSettings

HERE = Path(__file__).parent
SESSION_COOKIE = "eventyard_console"
Handler = Callable[[Request], Awaitable[Response]]


@dataclass(slots=True)
class ConsoleConfig:
    """What the console serves: the broker, the token, and which dead-letter queues.

    ``queues`` names them; empty, the management API lists those of the vhost (of ``org``,
    of ``org.svc``). ``org``/``svc`` also route a store queue's dead letters back.
    """

    settings: ConnectionSettings
    token: str
    org: str | None = None
    svc: str | None = None
    queues: list[str] = field(default_factory=list)
    store_queue: str = naming.STORE_QUEUE
    limit: int = 1000
    asyncapi: dict[str, Any] | None = None  # the application's document (eventyard console --app)
    # Host headers served: a page of another site that rebinds its name to 127.0.0.1 is refused.
    allowed_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1", "localhost", "::1"])


class Console:
    """The routes' state: configuration, templates and secrets of this process."""

    def __init__(self, config: ConsoleConfig) -> None:
        if not config.token:
            raise ConfigurationError("the console needs a token (EVENTYARD_CONSOLE_TOKEN)")
        self.config = config
        self._secret = secrets.token_bytes(32)
        self.session = self._derive("session")
        self.csrf = self._derive("csrf")
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined)

    def _derive(self, purpose: str) -> str:
        return hmac.new(self._secret, purpose.encode(), hashlib.sha256).hexdigest()

    def signed_in(self, request: Request) -> bool:
        """True when the request carries this process's session cookie."""
        return hmac.compare_digest(request.cookies.get(SESSION_COOKIE, ""), self.session)

    def render(self, request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        """A page; every page knows the broker (without password), the session and the CSRF value."""
        values.setdefault("report", None)
        page = self.templates.get_template(name).render(
            broker=self.config.settings.describe(), has_asyncapi=self.config.asyncapi is not None,
            signed_in=self.signed_in(request), csrf=self.csrf,
            path=request.url.path + (f"?{request.url.query}" if request.url.query else ""), **values)
        return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)

    async def queues(self) -> tuple[list[str], str]:
        """The dead-letter queues shown, and a note when the management API could not list them."""
        if self.config.queues:
            return list(self.config.queues), ""
        try:  # urllib blocks: off the event loop
            return await asyncio.to_thread(discover_dead_letter_queues, self.config.settings,
                                           self.config.org, self.config.svc), ""
        except ManagementApiError as error:
            return [], (f"{error}. Start the console with --queue to name dead-letter queues "
                        "without the management API.")

    async def snapshot(self, select: Selection = dead_letters.ALL) -> Snapshot:
        """Every dead letter of the queues (up to the limit per queue), grouped."""
        queues, note = await self.queues()
        letters: list[DeadLetter] = []
        async with connect(self.config.settings, name="eventyard-console") as connection:
            for summary in await dead_letters.summarize(connection, queues, limit=1):
                if summary.exists and summary.count:
                    letters += await dead_letters.peek(connection, summary.queue,
                                                       limit=self.config.limit, select=select)
        return Snapshot(queues, group_letters(letters), note)

    def owner(self, queue: str) -> tuple[str, str]:
        """The organisation and service whose retry exchange takes ``queue``'s dead letters back."""
        words = naming.subscriber_queue_of(queue).split(".")
        if len(words) >= 6:
            return words[0], words[1]
        if self.config.org and self.config.svc:
            return self.config.org, self.config.svc
        raise ConfigurationError(f"{queue} is a store's dead-letter queue: start the console with "
                                 "--organization and --service to retry its messages")

    async def act(self, action: str, queue: str, ids: Sequence[str]) -> Report:
        """Retry or discard the dead letters ``ids`` of ``queue``, as ``eventyard dlq`` does."""
        if not naming.is_dead_letter_queue(queue):
            raise ConfigurationError(f"{queue!r} is not a dead-letter queue")
        if not ids:
            raise ConfigurationError("select at least one message")
        select = Selection.of(ids)
        async with connect(self.config.settings, name="eventyard-console") as connection:
            if action == "retry":
                org, svc = self.owner(queue)
                return await dead_letters.requeue(connection, org, svc, [queue], select=select,
                                                  store_queue=self.config.store_queue)
            return await dead_letters.discard(connection, [queue], select=select)


SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def _form(request: Request) -> dict[str, list[str]]:
    # A urlencoded body read by hand: no multipart parser needed for these small forms.
    body = await request.body()
    if len(body) > 1_000_000:
        return {}
    return parse_qs(body.decode(errors="replace"), keep_blank_values=True)


def _first(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0]


def create_app(config: ConsoleConfig) -> Starlette:
    """The console as an ASGI application."""
    console = Console(config)

    def guarded(handler: Handler) -> Handler:
        async def wrapper(request: Request) -> Response:
            try:
                return await handler(request)
            except EventyardError as error:
                return console.render(request, "error.html", status=_status(error), message=str(error))
        return wrapper

    async def overview(request: Request) -> Response:
        snapshot = await console.snapshot()
        total = sum(len(g.letters) for g in snapshot.groups)
        return console.render(request, "overview.html", snapshot=snapshot, total=total,
                              limit=config.limit, report=None)

    async def group_page(request: Request) -> Response:
        snapshot = await console.snapshot()
        group = snapshot.group(request.path_params["key"])
        return console.render(request, "group.html", group=group, report=None)

    async def message_page(request: Request) -> Response:
        queue, letter_id = request.query_params.get("queue", ""), request.query_params.get("id", "")
        if not naming.is_dead_letter_queue(queue) or not letter_id:
            raise ConfigurationError("a message is named by its dead-letter queue and its id")
        async with connect(config.settings, name="eventyard-console") as connection:
            found = await dead_letters.peek(connection, queue, limit=1, select=Selection.of([letter_id]))
        letter = found[0] if found else None
        body = letter.body[:65_536].decode(errors="backslashreplace") if letter else ""
        return console.render(request, "message.html", letter=letter, queue=queue, letter_id=letter_id,
                              body=body, frame=failure_frame(letter.failure.stack) if letter else "",
                              headers=dead_letters.jsonable(dict(letter.headers)) if letter else {})

    async def topology_page(request: Request) -> Response:
        org = request.query_params.get("org", config.org or "")
        svc = request.query_params.get("svc", config.svc or "")
        found = None
        if org and svc:
            found = await asyncio.to_thread(service_topology, config.settings, org, svc)
        return console.render(request, "topology.html", org=org, svc=svc, topology=found)

    async def asyncapi_document(request: Request) -> Response:
        if config.asyncapi is None:
            raise ConfigurationError("no application given: start the console with --app "
                                     "module:attribute, -o and -s to serve its AsyncAPI document")
        return JSONResponse(config.asyncapi, headers=SECURITY_HEADERS)

    async def login(request: Request) -> Response:
        form = await _form(request)
        target = _first(form, "next")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        if not hmac.compare_digest(_first(form, "csrf"), console.csrf):
            return console.render(request, "error.html", status=403, message="stale form: reload the page")
        if not hmac.compare_digest(_first(form, "token").encode(), config.token.encode()):
            return console.render(request, "error.html", status=403,
                                  message="wrong token: actions stay locked")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, console.session, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def logout(request: Request) -> Response:
        form = await _form(request)
        response = RedirectResponse("/", status_code=303)
        if hmac.compare_digest(_first(form, "csrf"), console.csrf):
            response.delete_cookie(SESSION_COOKIE)
        return response

    def action(name: str) -> Handler:
        async def run(request: Request) -> Response:
            form = await _form(request)
            if not console.signed_in(request):
                return console.render(request, "error.html", status=403,
                                      message="sign in with the console token first")
            if not hmac.compare_digest(_first(form, "csrf"), console.csrf):
                return console.render(request, "error.html", status=403,
                                      message="missing or stale CSRF value: reload the page")
            queue = _first(form, "queue")
            ids = [i for i in form.get("id", []) if i]
            report = await console.act(name, queue, ids)
            snapshot = await console.snapshot()
            key = _first(form, "group")
            group = snapshot.group(key) if key else None
            if group is not None:
                return console.render(request, "group.html", group=group, report=report)
            total = sum(len(g.letters) for g in snapshot.groups)
            return console.render(request, "overview.html", snapshot=snapshot, total=total,
                                  limit=config.limit, report=report)
        return run

    console.templates.globals["message_url"] = lambda queue, letter_id: "/message?" + urlencode(
        {"queue": queue, "id": letter_id})
    routes = [
        Route("/", guarded(overview)),
        Route("/groups/{key}", guarded(group_page)),
        Route("/message", guarded(message_page)),
        Route("/topology", guarded(topology_page)),
        Route("/asyncapi.json", guarded(asyncapi_document)),
        Route("/login", guarded(login), methods=["POST"]),
        Route("/logout", guarded(logout), methods=["POST"]),
        Route("/retry", guarded(action("retry")), methods=["POST"]),
        Route("/discard", guarded(action("discard")), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, middleware=[
        Middleware(TrustedHostMiddleware, allowed_hosts=list(config.allowed_hosts))])


def _status(error: EventyardError) -> int:
    return 400 if isinstance(error, ConfigurationError) else 502
