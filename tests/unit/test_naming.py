"""DESIGN §4 names for acme/registration: a wire contract, pinned."""

from __future__ import annotations

import pytest

from contract.samples import PersistUser, UserCreated
from eventyard import (
    ConfigurationError,
    DomainEvent,
    MessageSubscriber,
    SubscriberError,
    TopologyOptions,
    naming,
)
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
        # The store's arguments name the organisation only: every service of acme shares it.
        "retry.store": {"x-message-ttl": 5000, "x-dead-letter-exchange": "retry.acme.store",
                        "x-dead-letter-routing-key": "store"},
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
        # commands reach the store only through a subscriber: one nobody handles is unroutable
        BindingSpec("acme.registration", "store", "acme.registration.1.command.persist_user"),
        BindingSpec("retry.acme.store", "store", "store"),
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


def test_quorum_queues_that_dead_letter_do_it_at_least_once() -> None:
    topology = build_topology("acme", "registration", subscriptions_of(SUBSCRIBERS[:1]),
                              TopologyOptions(queue_type="quorum", quorum_group_size=5))
    safe = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    for spec in topology.queues:
        assert spec.arguments["x-queue-type"] == "quorum"
        assert spec.arguments["x-quorum-initial-group-size"] == 5
        dead_letters = "x-dead-letter-exchange" in spec.arguments
        assert (safe.items() <= spec.arguments.items()) == dead_letters, spec.name
    # main (delivery limit), retry (TTL) and store queues dead-letter; dead-letter queues do not
    assert sum("x-dead-letter-strategy" in q.arguments for q in topology.queues) == 4
    classic = build_topology("acme", "registration", subscriptions_of(SUBSCRIBERS[:1]))
    assert not any({"x-dead-letter-strategy", "x-overflow", "x-quorum-initial-group-size"}
                   & q.arguments.keys() for q in classic.queues)


@pytest.mark.parametrize("size", [0, -1, True, 2.5])
def test_a_quorum_group_size_below_one_is_refused(size: object) -> None:
    with pytest.raises(ConfigurationError, match="quorum_group_size"):
        TopologyOptions(queue_type="quorum", quorum_group_size=size)  # type: ignore[arg-type]


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


def test_store_is_the_same_for_every_service_of_an_organisation() -> None:
    store = MessageSubscriber.all_messages([store_handler])
    specs = [build_topology("acme", svc, subscriptions_of([store])) for svc in ("shop", "billing")]
    store_queues = [{q.name: dict(q.arguments) for q in t.queues if "store" in q.name} for t in specs]
    assert store_queues[0] == store_queues[1]
    assert {b for b in specs[1].bindings if b.queue == "store"} == {
        BindingSpec("acme.billing", "store", "*.*.*.event.*"),
        BindingSpec("retry.acme.store", "store", "store")}


def test_each_store_handler_has_a_queue_and_retry_budget_of_its_own() -> None:
    def archive(message: object) -> None:
        return None

    subs = subscriptions_of([MessageSubscriber.all_messages([store_handler, archive])])
    topology = build_topology("acme", "registration", subs)
    assert [(s.handler_name, s.store_suffix) for s in subs] == [("store_handler", ""),
                                                                 ("archive", "archive")]
    assert topology.store_queues == ("store", "store.archive")
    assert dict(topology.queue("store.archive").arguments) == {
        "x-dead-letter-exchange": "dead_letter.acme.store",
        "x-dead-letter-routing-key": "dead_letter.store.archive"}
    assert dict(topology.queue("retry.store.archive").arguments) == {
        "x-message-ttl": 5000, "x-dead-letter-exchange": "retry.acme.store",
        "x-dead-letter-routing-key": "store.archive"}
    assert {b for b in topology.bindings if "archive" in b.queue} == {
        BindingSpec("acme.registration", "store.archive", "*.*.*.event.*"),
        BindingSpec("retry.acme.store", "store.archive", "store.archive"),
        BindingSpec("retry.acme.store", "retry.store.archive", "retry.store.archive"),
        BindingSpec("dead_letter.acme.store", "dead_letter.store.archive",
                    "dead_letter.store.archive")}
    route = route_of("acme", "registration", "store.archive")
    assert (route.retry_exchange, route.retry_key, route.dead_letter_exchange,
            route.dead_letter_key) == ("retry.acme.store", "retry.store.archive",
                                       "dead_letter.acme.store", "dead_letter.store.archive")


def test_a_subscriber_to_another_services_message_gets_that_services_queues() -> None:
    def charge(event: UserCreated) -> None:
        return None

    sub = MessageSubscriber.from_message(UserCreated, [charge], publisher="registration")
    topology = build_topology("acme", "billing", subscriptions_of([sub]))
    queue = "acme.registration.1.event.user_created.charge"
    assert {e.name for e in topology.exchanges} >= {
        "acme.billing", "acme.registration", "retry.acme.registration",
        "dead_letter.acme.registration"}
    assert dict(topology.queue(queue).arguments) == {
        "x-dead-letter-exchange": "dead_letter.acme.registration",
        "x-dead-letter-routing-key": f"dead_letter.{queue}"}
    assert dict(topology.queue(f"retry.{queue}").arguments)["x-dead-letter-exchange"] == \
        "acme.registration"
    assert BindingSpec("acme.registration", queue, "acme.registration.1.event.user_created") in \
        topology.bindings
    assert BindingSpec("acme.registration", "store", "*.*.*.event.*") in topology.bindings
    route = route_of("acme", "billing", queue)
    assert (route.retry_exchange, route.dead_letter_exchange) == (
        "retry.acme.registration", "dead_letter.acme.registration")


def test_petisco_preset_declares_what_petisco_declares() -> None:
    options = TopologyOptions.petisco()
    topology = build_topology("acme", "registration", subscriptions_of(SUBSCRIBERS), options)
    assert dict(topology.queue(MAIL_Q).arguments) == {
        "x-dead-letter-exchange": "dead_letter.acme.registration",
        "x-dead-letter-routing-key": f"dead_letter.{MAIL_Q}", "x-message-ttl": 5000}
    assert dict(topology.queue("store").arguments) == {
        "x-dead-letter-exchange": "dead_letter.acme.store",
        "x-dead-letter-routing-key": "dead_letter.store", "x-message-ttl": 5000}
    assert dict(topology.queue("retry.store").arguments) == {
        "x-dead-letter-exchange": "retry.acme.store", "x-dead-letter-routing-key": "store",
        "x-message-ttl": 5000}
    store_bindings = {b for b in topology.bindings if b.queue.endswith("store")}
    assert store_bindings == {
        BindingSpec("acme.registration", "store", key) for key in
        ("*.*.*.event.*", "*.*.*.command.*", "retry.store", "store")} | {
        BindingSpec("retry.acme.store", "store", key) for key in
        ("*.*.*.event.*", "*.*.*.command.*", "store")} | {
        BindingSpec("retry.acme.store", "retry.store", "retry.store"),
        BindingSpec("dead_letter.acme.store", "dead_letter.store", "dead_letter.store")} | {
        BindingSpec("dead_letter.acme.registration", "dead_letter.store", key) for key in
        ("dead_letter.*.*.*.event.*", "dead_letter.*.*.*.command.*", "dead_letter.store")}
    assert TopologyOptions.petisco(retry_ttl_ms=100).retry_ttl_ms == 100


def test_a_store_mismatch_names_the_fix() -> None:
    topology = build_topology("acme", "registration", [])
    assert "store_queue=" in topology.mismatch_hint("retry.store")
    assert "topology verify" in topology.mismatch_hint("store")
    assert topology.mismatch_hint(MAIL_Q) == ""


def test_the_cli_layout_option_gives_the_petisco_preset() -> None:
    from eventyard.cli.common import topology_options

    petisco = topology_options(100, 3, "store", False, "classic", "petisco")
    assert petisco == TopologyOptions.petisco(retry_ttl_ms=100, max_retries=3)
    assert topology_options(100, 3, "store", False).layout == "eventyard"


# -- names checked before anything is declared ----------------------------------------------------
@pytest.mark.parametrize("word", ["acme\n", "acme ", "ac.me", "a*", "#", "café", "", "a/b"])
def test_a_word_is_ascii_letters_digits_underscore_and_dash_only(word: str) -> None:
    with pytest.raises(ConfigurationError, match="cannot be used in RabbitMQ names"):
        naming.check_word(word, "organization")
    with pytest.raises(SubscriberError):
        naming.check_word(word, "handler name", error=SubscriberError)
    assert naming.check_word("acme-2_x", "organization") == "acme-2_x"


@pytest.mark.parametrize(("name", "kind", "why"), [
    ("q" * 256, "queue", "256 bytes long"), ("x" * 128, "exchange", "at most 127"),
    ("k" * 256, "routing key", "at most 255"), ("a\tb", "queue", "control character"),
    ("é", "queue", "cannot be declared"), ("a\x00", "routing key", "control character"),
])
def test_names_are_checked_as_rabbitmq_and_the_client_check_them(name: str, kind: str,
                                                                 why: str) -> None:
    with pytest.raises(ConfigurationError, match=why):
        naming.check_name(name, kind)


def test_the_longest_names_that_pass() -> None:
    assert naming.check_name("q" * 255, "queue") and naming.check_name("x" * 127, "exchange")
    assert naming.check_name("*.*.*.event.*", "routing key")


def test_routing_keys_refuse_message_names_rabbitmq_would_misread() -> None:
    with pytest.raises(ConfigurationError, match="message name '\\*'"):
        naming.routing_key("acme", "registration", 1, "event", "*")
    with pytest.raises(ConfigurationError, match="organization 'acme\\\\n'"):
        naming.routing_key("acme\n", "registration", 1, "event", "user.created")


def test_a_subscription_to_a_name_rabbitmq_cannot_carry_names_the_class() -> None:
    class Café(DomainEvent):
        pass

    class Star(DomainEvent):
        message_name = "*"

    for cls in (Café, Star):
        with pytest.raises(SubscriberError, match=f"of {cls.__name__} cannot be used"):
            subscriptions_of([MessageSubscriber.from_message(cls, [send_mail_handler])])


def test_two_classes_that_make_one_routing_key_are_refused_naming_both() -> None:
    class OrderPlaced(DomainEvent):
        pass

    class Order_Placed(DomainEvent):
        pass

    subscribers = [MessageSubscriber.from_message(OrderPlaced, [send_mail_handler]),
                   MessageSubscriber.from_message(Order_Placed, [store_handler])]
    with pytest.raises(SubscriberError, match=r"OrderPlaced .*and Order_Placed .*'order_placed'"):
        subscriptions_of(subscribers)
    # Under different publishers they are different routing keys.
    subscriptions_of([MessageSubscriber.from_message(OrderPlaced, [send_mail_handler]),
                      MessageSubscriber.from_message(Order_Placed, [send_mail_handler],
                                                     publisher="billing")])


def test_a_topology_with_a_name_too_long_is_refused_before_it_is_built() -> None:
    def handler_with_a_very_long_name_that_goes_on(message: object) -> None:
        return None

    handler_with_a_very_long_name_that_goes_on.__name__ = "h" * 220
    subscriptions = subscriptions_of(
        [MessageSubscriber.from_message(UserCreated, [handler_with_a_very_long_name_that_goes_on])])
    with pytest.raises(ConfigurationError, match=r"queue 'dead_letter\.acme\.registration"):
        build_topology("acme", "registration", subscriptions)
    with pytest.raises(ConfigurationError, match=r"exchange 'retry\.acme\.ssss"):
        build_topology("acme", "s" * 120, [])
    with pytest.raises(ConfigurationError, match="organization 'acme\\\\n'"):
        build_topology("acme\n", "registration", [])
    with pytest.raises(ConfigurationError, match="store queue name"):
        TopologyOptions(store_queue="store\n")


def test_two_subscriptions_to_one_queue_are_refused() -> None:
    subscriptions = subscriptions_of([
        MessageSubscriber.from_message(UserCreated, [send_mail_handler]),
        MessageSubscriber.from_message(UserCreated, [send_mail_handler], publisher="registration")])
    with pytest.raises(ConfigurationError, match=r"send_mail_handler of UserCreated is subscribed "
                                                 r"twice to queue 'acme\.registration\.1"):
        build_topology("acme", "registration", subscriptions)
    build_topology("acme", "billing", subscriptions)  # from billing they are two services' queues
