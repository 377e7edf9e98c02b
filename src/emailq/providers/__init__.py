"""Delivery providers behind one interface: rendered messages in, one result each out."""

from emailq.providers.base import Accepted, Permanent, Provider, Rendered, SendResult, Transient

__all__ = ["Accepted", "Permanent", "Provider", "Rendered", "SendResult", "Transient"]
