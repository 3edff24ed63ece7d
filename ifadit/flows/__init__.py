"""Key-conditioned normalizing flows on the identity vector."""

from ifadit.flows.base import FlowLayer, KeyedFlow, SequentialFlow
from ifadit.flows.subspace import PrincipalSubspace, SubspaceFlow

__all__ = ["FlowLayer", "KeyedFlow", "PrincipalSubspace", "SequentialFlow", "SubspaceFlow"]
