"""ifadit: key-controlled, invertible face anonymization (after iFADIT, Yuan et al., 2025)."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``ifadit.Anonymizer`` without importing torch and the photo pipeline on ``import ifadit``."""
    if name == "Anonymizer":
        from ifadit.api import Anonymizer

        return Anonymizer
    raise AttributeError(f"module 'ifadit' has no attribute {name!r}")
