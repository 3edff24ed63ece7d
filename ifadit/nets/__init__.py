"""Plain ``nn.Module`` face networks (no Lightning): generators, encoders, mappers."""

from ifadit.nets.base import AttributeEncoder, Generator, IdentityEncoder

__all__ = ["AttributeEncoder", "Generator", "IdentityEncoder"]
