"""``eventyard.rabbitmq`` under the seed's import path (``petisco.extra.rabbitmq``).

The same objects, not copies: ``eventyard.extra.rabbitmq.RabbitMqConnector is
eventyard.rabbitmq.RabbitMqConnector``; the names are ``eventyard.rabbitmq.__all__``.
"""

from eventyard import rabbitmq as _rabbitmq
from eventyard.rabbitmq import *  # noqa: F403

__all__ = list(_rabbitmq.__all__)
