"""A third-party ifadit flow: a keyed rotation in the Gaussian base space of a density flow."""

from ifadit_keyed_rotation.flow import KeyedRotationFlow

__all__ = ["KeyedRotationFlow"]
