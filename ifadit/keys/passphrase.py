"""The strength check a passphrase passes before a key is derived from it.

A passphrase key is only as strong as the passphrase: a photo's sealed metadata lets whoever holds the photo
and the key's salt test guesses offline, each costing one scrypt. So short or guessable passphrases are
refused (``--allow-weak-passphrase`` overrides): at least ``MIN_LENGTH`` characters and zxcvbn's top score
(about 10^10 guesses or more). The reason given never quotes the passphrase.
"""

from __future__ import annotations

MIN_LENGTH = 12
MIN_ZXCVBN_SCORE = 4  # zxcvbn's "very unguessable": 10^10 guesses or more
ZXCVBN_MAX_LENGTH = 64  # zxcvbn's cost grows with the length; the first 64 characters decide


class WeakPassphraseError(ValueError):
    """A passphrase too weak to derive a key from; the message is one line and never holds it."""


def passphrase_weakness(passphrase: str | bytes) -> str | None:
    """Why ``passphrase`` is too weak for a key (one line, without the passphrase), or None when it is not."""
    from zxcvbn import zxcvbn

    text = passphrase.decode("utf-8", "replace") if isinstance(passphrase, bytes) else passphrase
    reasons = []
    if len(text) < MIN_LENGTH:
        reasons.append(f"{len(text)} characters, fewer than {MIN_LENGTH}")
    estimate = zxcvbn(text[:ZXCVBN_MAX_LENGTH], max_length=ZXCVBN_MAX_LENGTH)
    if estimate["score"] < MIN_ZXCVBN_SCORE:
        reasons.append(
            f"guessed in about 10^{estimate['guesses_log10']:.0f} tries "
            f"(zxcvbn score {estimate['score']} of 4, {MIN_ZXCVBN_SCORE} needed)"
        )
        warning = str(estimate["feedback"].get("warning") or "").strip().rstrip(".")
        # zxcvbn's warnings are fixed sentences; still, never pass on one that could hold part of the text
        if warning and "\n" not in warning and not any(
            text[i : i + 4] in warning for i in range(max(len(text) - 3, 1))
        ):
            reasons.append(warning[0].lower() + warning[1:])
    return "; ".join(reasons) or None


def require_strong_passphrase(passphrase: str | bytes) -> None:
    """Raise :class:`WeakPassphraseError` (one line: the reason and how to override) for a weak passphrase."""
    reason = passphrase_weakness(passphrase)
    if reason:
        raise WeakPassphraseError(f"weak passphrase: {reason} (--allow-weak-passphrase uses it anyway)")


__all__ = [
    "MIN_LENGTH",
    "MIN_ZXCVBN_SCORE",
    "WeakPassphraseError",
    "passphrase_weakness",
    "require_strong_passphrase",
]
