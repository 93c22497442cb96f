"""Helpers for your own tests: record what was published and handled, and assert on it.

    recorder = MessageRecorder()
    broker = MemoryBroker.virtual()
    bus = DomainEventBus(recorder.watch(broker), "acme", "registration")
    consumer.add_observer(recorder)
    ...
    broker.wait_until_idle()
    recorder.assert_handled(UserCreated, times=1, handler=send_mail_handler)
"""

from eventyard.testing.capture import RecordingBackend as RecordingBackend  # earlier names
from eventyard.testing.capture import RecordingBroker, capturing_broker
from eventyard.testing.capture import capturing_backend as capturing_backend
from eventyard.testing.recorder import MessageRecorder

__all__ = ["MessageRecorder", "RecordingBroker", "capturing_broker"]
