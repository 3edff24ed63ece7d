"""ifadit: key-controlled, invertible face anonymization (after iFADIT, Yuan et al., 2025)."""

__version__ = "0.1.0"
