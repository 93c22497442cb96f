"""The operator CLI: ``eventyard`` (typer) and the seed-compatible ``eventyard-rabbitmq``.

Thin by design: commands parse arguments, call ``eventyard.rabbitmq.dead_letters`` and
``eventyard.rabbitmq.inspection``, and render the result.
"""
