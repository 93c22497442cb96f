"""Dispatch a few commands of the registration service."""

from registration import ORGANIZATION, SERVICE, PersistUser

from eventyard import Uuid
from eventyard.rabbitmq import RabbitMqCommandBus, RabbitMqConnector

connector = RabbitMqConnector()
bus = RabbitMqCommandBus(connector, ORGANIZATION, SERVICE)
for name in ("Ada", "Grace", "Linus"):
    bus.dispatch(PersistUser(user_id=Uuid.v4(), name=name))
    print(f"dispatched persist.user for {name}")
connector.close()
