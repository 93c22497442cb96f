"""``eventyard-rabbitmq``: the seed's requeue command, with the seed's flags and help layout.

``--requeue`` sends every message of the ``--consuming-queues`` (dead-letter queues) back to
its subscriber through the subscriber's retry queue, with the retry count reset (see
``eventyard.rabbitmq.dead_letters``), and stops when the queues are empty. ``--retry-ttl`` is
the time in milliseconds a requeued message waits in the retry queue (the queue's own TTL still
caps it; default: that TTL). ``--max-retries`` is accepted for compatibility: the consumer that
receives the messages applies its own. An undecodable message is requeued like the others,
with a warning on stderr; no error ends in a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

from eventyard import naming
from eventyard.cli.common import quiet_aiormq
from eventyard.errors import ConfigurationError, EventyardError, QueueNotFoundError
from eventyard.observability import LEVELS, configure_logging
from eventyard.rabbitmq import dead_letters
from eventyard.rabbitmq.dead_letters import Report, Step
from eventyard.rabbitmq.inspection import connect, queue_state
from eventyard.rabbitmq.settings import ConnectionSettings, settings_from

PROG = "eventyard-rabbitmq"

logger = logging.getLogger(__name__)


def _queue_list(value: str) -> list[str]:
    queues = [q.strip() for q in value.split(",") if q.strip()]
    if not queues:
        raise argparse.ArgumentTypeError("give at least one queue name")
    return queues


def _non_negative(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {'an integer' if kind is int else 'a number'}"
                                             ) from None
        if number < 0:
            raise argparse.ArgumentTypeError(f"{value!r} must be >= 0")
        return number

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The seed's arguments, plus ``--url``, ``--store-queue`` and ``--dry-run``."""
    parser = argparse.ArgumentParser(prog=PROG, description=f"{PROG} helps us on rabbitmq iteration")
    parser.add_argument("-rq", "--requeue", action="store_true", help="requeue")
    parser.add_argument("-cq", "--consuming-queues", type=_queue_list,
                        help="List of queues to consume split by commas (my-queue-1,my-queue-2)")
    parser.add_argument("-o", "--organization", help="Name of the organization")
    parser.add_argument("-s", "--service", help="Name of the service")
    parser.add_argument("-mr", "--max-retries", type=_non_negative(int), help="Max Retries")
    parser.add_argument("-rttl", "--retry-ttl", type=_non_negative(int), help="Retry TTL")
    parser.add_argument("-wtr", "--wait-to-requeue", type=_non_negative(float), default=0.0,
                        help="Wait to Requeue (seconds)")
    parser.add_argument("--url", help="AMQP URL (default: the RABBITMQ_* environment variables)")
    parser.add_argument("--store-queue", default=naming.STORE_QUEUE,
                        help="Name of the store queue (default: store)")
    parser.add_argument("--dry-run", action="store_true", help="Show what would be requeued; move nothing")
    parser.add_argument("--log-level", type=str.lower, choices=LEVELS,
                        help="Level of eventyard's log lines (default: warning)")
    parser.add_argument("--log-json", action="store_true", help="Log one JSON object per line")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    if not args.requeue:
        parser.error("nothing to do: pass --requeue (with -o, -s and -cq)")
    missing = [flag for flag, value in (("-o/--organization", args.organization),
                                        ("-s/--service", args.service),
                                        ("-cq/--consuming-queues", args.consuming_queues)) if not value]
    if missing:
        parser.error(f"--requeue needs {', '.join(missing)}")
    for word, what in ((args.organization, "organization"), (args.service, "service")):
        try:
            naming.check_word(word, what)
        except ConfigurationError as error:
            parser.error(str(error))
    queues: list[str] = list(dict.fromkeys(args.consuming_queues))
    for queue in queues:
        if not naming.is_dead_letter_queue(queue):
            parser.error(f"{queue!r} is not a dead-letter queue: --requeue only takes dead_letter.* queues")
        try:
            dead_letters.route_for(args.organization, args.service, queue, args.store_queue)
        except ConfigurationError as error:
            parser.error(str(error))
    return queues


async def _requeue(settings: ConnectionSettings, args: argparse.Namespace, queues: list[str]) -> Report:
    async with connect(settings, name=PROG) as connection:
        missing = [q for q in queues if not (await queue_state(connection, q)).exists]
        if missing:
            raise QueueNotFoundError(f"queue{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                              f"do{'' if len(missing) > 1 else 'es'} not exist on {settings.describe()}")

        def show(step: Step) -> None:
            verb = "would requeue" if step.outcome == "would_requeue" else step.outcome
            odd = f" [undecodable, {step.size:,} bytes]" if step.undecodable else ""
            print(f"{verb} {step.id} ({step.type or 'no type'}){odd} from {step.queue}"
                  + (f" -> {step.detail}" if step.detail else ""), flush=True)
            if step.undecodable and step.outcome in ("requeued", "would_requeue"):
                print(f"{PROG}: warning: {step.id} from {step.queue} is undecodable ({step.problem}; "
                      f"{step.size:,} bytes): {verb} as is, its subscriber will fail on it again",
                      file=sys.stderr, flush=True)

        return await dead_letters.requeue(
            connection, args.organization, args.service, queues, dry_run=args.dry_run,
            wait_seconds=args.wait_to_requeue, delay_ms=args.retry_ttl, store_queue=args.store_queue,
            on_step=show)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``eventyard-rabbitmq``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level or args.log_json:
        configure_logging(args.log_level or "warning", json_lines=args.log_json)
    queues = _check(parser, args)
    try:
        settings = settings_from(args.url)
    except ConfigurationError as error:
        parser.error(str(error))
    try:
        with quiet_aiormq():
            report = asyncio.run(_requeue(settings, args, queues))
    except QueueNotFoundError as error:
        parser.error(str(error))
    except KeyboardInterrupt:  # the message in hand was finished; the rest stays dead-lettered
        print(f"{PROG}: interrupted", file=sys.stderr)
        sys.exit(130)
    except EventyardError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except Exception as error:  # never a traceback: one line, the details with logging on
        logger.info("unexpected error", exc_info=True)
        print(f"{PROG}: error: unexpected {type(error).__name__}: {str(error)[:500]}", file=sys.stderr)
        sys.exit(1)
    moved = report.count("would_requeue" if args.dry_run else "requeued")
    verb = "would requeue" if args.dry_run else "requeued"
    undecodable = len(report.undecodable)
    print(f"{verb} {moved} message{'' if moved == 1 else 's'} from {len(queues)} "
          f"queue{'' if len(queues) == 1 else 's'}"
          + (f" ({undecodable} undecodable: see the warnings)" if undecodable else ""))
    for step in report.failed:
        print(f"{PROG}: error: {step.id} stayed in {step.queue}: {step.detail}", file=sys.stderr)
    if report.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
