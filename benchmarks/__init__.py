"""eventyard beside raw RabbitMQ clients, in one run on one broker (``python -m benchmarks``)."""
