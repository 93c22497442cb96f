"""Consume the registration service's queues until Ctrl-C (SIGINT) or SIGTERM."""

from registration import MAX_RETRIES, ORGANIZATION, SERVICE, STORE_QUEUE, SUBSCRIBERS

from eventyard import ConsumerSettings
from eventyard.rabbitmq import RabbitMqConnector, RabbitMqMessageConsumer

connector = RabbitMqConnector()
consumer = RabbitMqMessageConsumer(connector, ORGANIZATION, SERVICE, MAX_RETRIES,
                                   settings=ConsumerSettings(store_queue=STORE_QUEUE))
consumer.add_subscribers(SUBSCRIBERS)
print(f"consuming {ORGANIZATION}.{SERVICE} (Ctrl-C to stop)", flush=True)
consumer.run()
print("stopped", flush=True)
connector.close()
