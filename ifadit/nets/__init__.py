"""Plain ``nn.Module`` face networks (no Lightning): generators, discriminators, encoders, mappers."""

from ifadit.nets.base import AttributeEncoder, Discriminator, Generator, IdentityEncoder

__all__ = ["AttributeEncoder", "Discriminator", "Generator", "IdentityEncoder"]
