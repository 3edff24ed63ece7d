"""Key-conditioned normalizing flows on the identity vector."""

from ifadit.flows.base import FlowLayer, KeyedFlow, SequentialFlow

__all__ = ["FlowLayer", "KeyedFlow", "SequentialFlow"]
