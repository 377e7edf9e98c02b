"""emailq: a durable, priority-aware outbound email queue."""

from emailq.broker import Broker, Job, NewMessage, State, open_broker
from emailq.lanes import Lane

__all__ = ["Broker", "Job", "Lane", "NewMessage", "State", "open_broker"]
__version__ = "0.1.0"
