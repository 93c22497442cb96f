"""DESIGN §4 names for acme/registration: a wire contract, pinned."""

from __future__ import annotations

from contract.samples import PersistUser, UserCreated
from eventyard import MessageSubscriber, TopologyOptions, naming
from eventyard.subscribers import subscriptions_of
from eventyard.topology import BindingSpec, ExchangeSpec, build_topology, route_of


def send_mail_handler(event: UserCreated) -> None:
    return None


def persist_user_handler(command: PersistUser) -> None:
    return None


def store_handler(message: object) -> None:
    return None


MAIL_Q = "acme.registration.1.event.user_created.send_mail_handler"
PERSIST_Q = "acme.registration.1.command.persist_user.persist_user_handler"
SUBSCRIBERS = [MessageSubscriber.from_message(UserCreated, [send_mail_handler]),
               MessageSubscriber.from_message(PersistUser, [persist_user_handler]),
               MessageSubscriber.all_messages([store_handler])]


def test_message_names_and_routing_keys() -> None:
    assert UserCreated.message_name == "user.created"
    assert PersistUser.message_name == "persist.user"
    assert naming.routing_key("acme", "registration", 1, "event", "user.created") == \
        "acme.registration.1.event.user_created"
    assert naming.routing_key("acme", "registration", 1, "command", "persist.user") == \
        "acme.registration.1.command.persist_user"


def test_exchange_and_queue_names() -> None:
    assert naming.exchange("acme", "registration") == "acme.registration"
    assert naming.retry_exchange("acme", "registration") == "retry.acme.registration"
    assert naming.dead_letter_exchange("acme", "registration") == "dead_letter.acme.registration"
    assert naming.store_retry_exchange("acme") == "retry.acme.store"
    assert naming.store_dead_letter_exchange("acme") == "dead_letter.acme.store"
    assert naming.queue("acme", "registration", 1, "event", "user.created", "send_mail_handler") == MAIL_Q
    assert naming.retry_queue(MAIL_Q) == naming.retry_key(MAIL_Q) == f"retry.{MAIL_Q}"
    assert naming.dead_letter_queue(MAIL_Q) == naming.dead_letter_key(MAIL_Q) == f"dead_letter.{MAIL_Q}"
    assert naming.subscriber_queue_of(f"dead_letter.{MAIL_Q}") == MAIL_Q


def test_full_topology() -> None:
    topology = build_topology("acme", "registration", subscriptions_of(SUBSCRIBERS),
                              TopologyOptions())
    assert topology.exchanges == tuple(ExchangeSpec(name) for name in (
        "acme.registration", "retry.acme.registration", "dead_letter.acme.registration",
        "retry.acme.store", "dead_letter.acme.store"))
    assert all(e.type == "topic" and e.durable for e in topology.exchanges)
    queues = {q.name: dict(q.arguments) for q in topology.queues}
    assert queues == {
        MAIL_Q: {"x-dead-letter-exchange": "dead_letter.acme.registration",
                 "x-dead-letter-routing-key": f"dead_letter.{MAIL_Q}"},
        f"retry.{MAIL_Q}": {"x-message-ttl": 5000, "x-dead-letter-exchange": "acme.registration",
                            "x-dead-letter-routing-key": f"retry.{MAIL_Q}"},
        f"dead_letter.{MAIL_Q}": {},
        PERSIST_Q: {"x-dead-letter-exchange": "dead_letter.acme.registration",
                    "x-dead-letter-routing-key": f"dead_letter.{PERSIST_Q}"},
        f"retry.{PERSIST_Q}": {"x-message-ttl": 5000, "x-dead-letter-exchange": "acme.registration",
                               "x-dead-letter-routing-key": f"retry.{PERSIST_Q}"},
        f"dead_letter.{PERSIST_Q}": {},
        "store": {"x-dead-letter-exchange": "dead_letter.acme.store",
                  "x-dead-letter-routing-key": "dead_letter.store"},
        "retry.store": {"x-message-ttl": 5000, "x-dead-letter-exchange": "acme.registration",
                        "x-dead-letter-routing-key": "retry.store"},
        "dead_letter.store": {},
    }
    assert set(topology.bindings) == {
        BindingSpec("acme.registration", MAIL_Q, "acme.registration.1.event.user_created"),
        BindingSpec("acme.registration", MAIL_Q, f"retry.{MAIL_Q}"),
        BindingSpec("retry.acme.registration", f"retry.{MAIL_Q}", f"retry.{MAIL_Q}"),
        BindingSpec("dead_letter.acme.registration", f"dead_letter.{MAIL_Q}", f"dead_letter.{MAIL_Q}"),
        BindingSpec("acme.registration", PERSIST_Q, "acme.registration.1.command.persist_user"),
        BindingSpec("acme.registration", PERSIST_Q, f"retry.{PERSIST_Q}"),
        BindingSpec("retry.acme.registration", f"retry.{PERSIST_Q}", f"retry.{PERSIST_Q}"),
        BindingSpec("dead_letter.acme.registration", f"dead_letter.{PERSIST_Q}",
                    f"dead_letter.{PERSIST_Q}"),
        BindingSpec("acme.registration", "store", "*.*.*.event.*"),
        BindingSpec("acme.registration", "store", "*.*.*.command.*"),
        BindingSpec("acme.registration", "store", "retry.store"),
        BindingSpec("retry.acme.store", "retry.store", "retry.store"),
        BindingSpec("dead_letter.acme.store", "dead_letter.store", "dead_letter.store"),
    }
    assert len(topology.bindings) == 13


def test_retry_ttl_and_main_queue_ttl_options() -> None:
    topology = build_topology("acme", "registration", subscriptions_of(SUBSCRIBERS[:1]),
                              TopologyOptions(retry_ttl_ms=200, store=False))
    assert topology.queue(f"retry.{MAIL_Q}").arguments["x-message-ttl"] == 200
    assert "x-message-ttl" not in topology.queue(MAIL_Q).arguments  # no backlog TTL by default
    assert "store" not in {q.name for q in topology.queues}
    with_ttl = build_topology("acme", "registration", subscriptions_of(SUBSCRIBERS[:1]),
                              TopologyOptions(main_queue_ttl_ms=60000))
    assert with_ttl.queue(MAIL_Q).arguments["x-message-ttl"] == 60000


def test_quorum_queues_get_a_delivery_limit_above_the_retry_budget() -> None:
    topology = build_topology("acme", "registration", subscriptions_of(SUBSCRIBERS[:1]),
                              TopologyOptions(queue_type="quorum", max_retries=5))
    main = topology.queue(MAIL_Q).arguments
    assert main["x-queue-type"] == "quorum"
    assert main["x-delivery-limit"] > 5


def test_routes_of_a_subscriber_and_of_the_store() -> None:
    route = route_of("acme", "registration", MAIL_Q)
    assert (route.retry_exchange, route.retry_key) == ("retry.acme.registration", f"retry.{MAIL_Q}")
    assert (route.dead_letter_exchange, route.dead_letter_key) == (
        "dead_letter.acme.registration", f"dead_letter.{MAIL_Q}")
    store = route_of("acme", "registration", "store")
    assert (store.retry_exchange, store.retry_key) == ("retry.acme.store", "retry.store")
    assert (store.dead_letter_exchange, store.dead_letter_key) == ("dead_letter.acme.store",
                                                                   "dead_letter.store")


def test_class_subscriber_queue_is_named_after_the_class() -> None:
    class SendMailOnUserCreated(MessageSubscriber):
        def subscribed_to(self) -> list[type[UserCreated]]:
            return [UserCreated]

        def handle(self, message: UserCreated) -> None:
            return None

    [subscription] = subscriptions_of([SendMailOnUserCreated()])
    assert subscription.handler_name == "send_mail_on_user_created"
