"""Publish a few domain events of the registration service."""

from registration import ORGANIZATION, SERVICE, UserConfirmed, UserCreated

from eventyard import Uuid
from eventyard.rabbitmq import RabbitMqConnector, RabbitMqDomainEventBus

connector = RabbitMqConnector()
bus = RabbitMqDomainEventBus(connector, ORGANIZATION, SERVICE)
for name in ("Ada", "Grace", "Linus"):
    user_id = Uuid.v4()
    bus.publish([UserCreated(user_id=user_id, name=name), UserConfirmed(user_id=user_id)])
    print(f"published user.created and user.confirmed for {name}")
connector.close()
