"""The cloud bus: messages in (ledger + engine handlers, exactly once), commands out (durable
downlink), followers, gap repair. See `cloud.bus.worker.CloudBus` and `cloud.bus.message`."""

from cloud.bus.message import Context, HandlerFn, Message, Position, newer_clause

__all__ = ["Context", "HandlerFn", "Message", "Position", "newer_clause"]
