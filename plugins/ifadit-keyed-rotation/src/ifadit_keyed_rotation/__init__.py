"""A third-party ifadit flow: a keyed rotation in the base space of an unconditional flow."""

from ifadit_keyed_rotation.flow import KeyedRotationFlow

__all__ = ["KeyedRotationFlow"]
