"""The seed's import paths: ``eventyard.extra.rabbitmq`` is ``eventyard.rabbitmq``."""
