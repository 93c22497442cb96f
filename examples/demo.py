"""The seed's registration story on the in-memory broker (or RabbitMQ with --broker amqp://...).

    python examples/demo.py
    python examples/demo.py --broker amqp://guest:guest@localhost:5672/
"""

import sys

from eventyard.demo import run

if __name__ == "__main__":
    sys.exit(run())
