"""Declare the registration service's exchanges and queues on RabbitMQ."""

from registration import ORGANIZATION, RETRY_TTL_MS, SERVICE, STORE_QUEUE, SUBSCRIBERS

from eventyard import TopologyOptions
from eventyard.rabbitmq import RabbitMqConnector, RabbitMqMessageConfigurer

connector = RabbitMqConnector()
configurer = RabbitMqMessageConfigurer(
    connector, ORGANIZATION, SERVICE,
    options=TopologyOptions(retry_ttl_ms=RETRY_TTL_MS, store_queue=STORE_QUEUE))
configurer.configure_subscribers(SUBSCRIBERS)
print(f"configured {ORGANIZATION}.{SERVICE} on {connector.settings.describe()}")
connector.close()
