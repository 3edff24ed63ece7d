"""The key-scheme contract as plain checks: a secret must give the same condition on every machine and
every run (a released image may need recovery years later), and different secrets different conditions.

Each check takes a registered name (``"mapping"``), a class or a callable accepting ``dim=``, or a built
:class:`~ifadit.keys.schemes.KeyScheme` (then the checks that need a second build are skipped).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ifadit import registry
from ifadit.keys.schemes import KeyScheme
from ifadit.keys.secret import SecretKey
from ifadit.testing._common import CannotBuild, ContractReport, run_checks, seeded

SchemeLike = str | Callable[..., KeyScheme] | KeyScheme


@dataclass(frozen=True)
class KeySchemeContract:
    """Sizes and bounds of the key-scheme checks."""

    dim: int = 512
    batch: int = 5
    samples: int = 32
    # Mean |cosine| between the conditions of fresh keys: keys far apart keep anonymized faces apart.
    # None skips that bound (a scheme meant to feed a pretrained mapping network may not meet it raw).
    max_mean_abs_cosine: float | None = 0.1
    seed: int = 0


def secret_for(label: str) -> SecretKey:
    """A fixed, reproducible secret for tests (never use one outside them)."""
    return SecretKey(hashlib.sha256(b"ifadit.testing/" + label.encode()).digest())


class _Source:
    def __init__(self, scheme: SchemeLike, contract: KeySchemeContract) -> None:
        self.contract = contract
        self.instance = scheme if isinstance(scheme, KeyScheme) else None
        if isinstance(scheme, str):
            self.label = scheme
            self.factory: Callable[..., KeyScheme] | None = lambda **kw: registry.create(
                "key_schemes", scheme, **kw
            )
        elif self.instance is not None:
            self.label, self.factory = type(scheme).__name__, None
        else:
            self.label = getattr(scheme, "__qualname__", repr(scheme))
            self.factory = scheme

    @property
    def dim(self) -> int:
        return self.instance.dim if self.instance is not None else self.contract.dim

    def build(self) -> KeyScheme:
        if self.instance is not None:
            return self.instance
        assert self.factory is not None
        scheme = self.factory(dim=self.contract.dim)
        assert isinstance(scheme, KeyScheme), (
            f"{self.label}: built a {type(scheme).__name__}, not an ifadit.keys.schemes.KeyScheme subclass"
        )
        assert scheme.dim == self.contract.dim, (
            f"{self.label}: asked for dim {self.contract.dim}, got {scheme.dim}"
        )
        return scheme

    def fail(self, message: str) -> str:
        return f"{self.label}: {message}"


def _rebuilt_pair(src: _Source) -> tuple[KeyScheme, KeyScheme]:
    """Two schemes built under different torch seeds (an RNG leaking into a scheme shows up as a mismatch)."""
    if src.instance is not None:
        raise CannotBuild("needs a second scheme built under another torch seed; give a factory")
    with seeded(src.contract.seed):
        first = src.build()
    with seeded(src.contract.seed + 1):
        second = src.build()
    return first, second


def check_expansion_is_deterministic(scheme: SchemeLike, contract: KeySchemeContract | None = None) -> None:
    """``expand`` gives a float32 (dim,) vector that depends on the secret only: equal across calls and
    across schemes built under different torch seeds, untouched by torch's RNG."""
    src = _Source(scheme, contract or KeySchemeContract())
    secret = secret_for("expansion")
    first, second = _rebuilt_pair(src)
    raw = first.expand(secret)
    assert isinstance(raw, np.ndarray), src.fail(f"expand returned a {type(raw).__name__}, not a numpy array")
    assert raw.shape == (src.dim,) and raw.dtype == np.float32, src.fail(
        f"expand gave {raw.dtype} {raw.shape}, expected float32 ({src.dim},)"
    )
    assert np.isfinite(raw).all(), src.fail("expand gave non-finite values")
    with seeded(12345):
        again = first.expand(secret)
    assert np.array_equal(raw, again), src.fail("expand gives another vector on a second call")
    assert np.array_equal(raw, second.expand(secret)), src.fail(
        "two schemes built under different torch seeds expand one secret differently: expansion must come "
        "from the secret (e.g. SecretKey.expand), never from an RNG"
    )
    tensor = first.raw(secret)
    assert tensor.shape == (1, src.dim) and tensor.dtype == torch.float32, src.fail(
        f"raw() gave {tensor.dtype} {tuple(tensor.shape)}, expected float32 (1, {src.dim})"
    )


def check_condition_is_reproducible(scheme: SchemeLike, contract: KeySchemeContract | None = None) -> None:
    """One secret gives one condition, call after call, and a scheme loaded from another's state dict gives
    the same conditions (what a checkpoint must carry for recovery)."""
    src = _Source(scheme, contract or KeySchemeContract())
    secret = secret_for("condition")
    built = src.build()
    with torch.no_grad():
        cond = built(secret)
        assert cond.shape == (1, src.dim) and cond.is_floating_point(), src.fail(
            f"a condition has {cond.dtype} {tuple(cond.shape)}, expected floating (1, {src.dim})"
        )
        assert torch.isfinite(cond).all(), src.fail("a condition has non-finite values")
        assert torch.equal(cond, built(secret)), src.fail(
            "one secret gives another condition on a second call"
        )
    if src.instance is not None:
        raise CannotBuild("needs a second scheme to load the state dict into; give a factory")
    first, second = _rebuilt_pair(src)
    second.load_state_dict(first.state_dict(), strict=True)
    with torch.no_grad():
        same = torch.equal(first(secret), second(secret))
    assert same, src.fail("a scheme loaded from another's state dict gives another condition for one secret")


def check_key_sensitivity(scheme: SchemeLike, contract: KeySchemeContract | None = None) -> None:
    """Different secrets give different conditions, down to a single flipped bit (first or last)."""
    src = _Source(scheme, contract or KeySchemeContract())
    built = src.build()
    a, b = secret_for("a"), secret_for("b")
    with torch.no_grad():
        base = built(a)
        others = {
            "another secret": b,
            "bit 0 flipped": a.with_bit_flipped(0),
            "bit 255 flipped": a.with_bit_flipped(255),
        }
        for what, other in others.items():
            assert not torch.allclose(base, built(other)), src.fail(f"{what} gives the same condition")


def check_batch_expansion(scheme: SchemeLike, contract: KeySchemeContract | None = None) -> None:
    """One secret broadcasts over ``batch_size``; a list gives one condition per secret; a count mismatch
    is a ValueError and anything but SecretKeys a TypeError."""
    src = _Source(scheme, contract or KeySchemeContract())
    c = src.contract
    built = src.build()
    a, b = secret_for("a"), secret_for("b")
    with torch.no_grad():
        broadcast = built(a, batch_size=c.batch)
        assert broadcast.shape == (c.batch, src.dim), src.fail(
            f"batch_size={c.batch} gave shape {tuple(broadcast.shape)}, expected ({c.batch}, {src.dim})"
        )
        assert all(torch.equal(row, broadcast[0]) for row in broadcast), src.fail(
            "a broadcast secret's rows differ"
        )
        # A network sees a batch of 5 and of 1 with other kernels: equal up to float rounding.
        single = built(a)[0]
        assert torch.allclose(broadcast[0], single, rtol=1e-5, atol=1e-5), src.fail(
            "broadcasting changed the condition"
        )
        per_sample = built([a, b, a])
        assert per_sample.shape == (3, src.dim), src.fail(
            f"three secrets gave shape {tuple(per_sample.shape)}"
        )
        assert torch.equal(per_sample[0], per_sample[2]), src.fail(
            "one secret twice in a list gives two conditions"
        )
        assert not torch.equal(per_sample[0], per_sample[1]), src.fail(
            "two secrets in a list give one condition"
        )
    for call, error, fragment in (
        (lambda: built([a, b], batch_size=3), ValueError, "2 secrets for a batch of 3"),
        (lambda: built("not a key"), TypeError, ""),
        (lambda: built([]), TypeError, ""),
    ):
        try:
            call()
        except error as exc:
            assert fragment in str(exc), src.fail(f"{error.__name__} {str(exc)!r} does not say {fragment!r}")
            continue
        raise AssertionError(src.fail(f"expected a {error.__name__} {fragment!r}, nothing was raised"))


def check_sample(scheme: SchemeLike, contract: KeySchemeContract | None = None) -> None:
    """``sample(n)`` gives n conditions of fresh keys through the same path: (n, dim), distinct rows that
    spread apart, and the same keys again under the same torch seed (a seeded run repeats)."""
    src = _Source(scheme, contract or KeySchemeContract())
    c = src.contract
    built = src.build()
    with torch.no_grad(), seeded(c.seed):
        conds = built.sample(c.samples)
    with torch.no_grad(), seeded(c.seed):
        again = built.sample(c.samples)
    assert conds.shape == (c.samples, src.dim), src.fail(
        f"sample({c.samples}) gave shape {tuple(conds.shape)}"
    )
    assert torch.equal(conds, again), src.fail(
        "sample() under one torch seed gives other keys: a seeded run won't repeat"
    )
    cos = F.cosine_similarity(conds[:, None].double(), conds[None].double(), dim=-1)
    off_diagonal = cos[~torch.eye(c.samples, dtype=torch.bool)]
    assert (off_diagonal < 1 - 1e-6).all(), src.fail("sample() drew two keys with one condition")
    if c.max_mean_abs_cosine is not None:
        spread = off_diagonal.abs().mean().item()
        assert spread < c.max_mean_abs_cosine, src.fail(
            f"fresh keys' conditions have mean |cosine| {spread:.3f} "
            f"(>= {c.max_mean_abs_cosine:g}): keys too alike"
        )


SchemeCheck = Callable[[SchemeLike, KeySchemeContract | None], None]

#: Every key-scheme check by name, in the order :func:`check_key_scheme` runs them.
KEY_SCHEME_CHECKS: dict[str, SchemeCheck] = {
    "expansion_is_deterministic": check_expansion_is_deterministic,
    "condition_is_reproducible": check_condition_is_reproducible,
    "key_sensitivity": check_key_sensitivity,
    "batch_expansion": check_batch_expansion,
    "sample": check_sample,
}


def check_key_scheme(
    scheme: SchemeLike,
    contract: KeySchemeContract | None = None,
    *,
    include: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
) -> ContractReport:
    """Run the key-scheme contract; AssertionError at the first violated property."""
    contract = contract or KeySchemeContract()
    checks = {
        name: (lambda check=check: check(scheme, contract)) for name, check in KEY_SCHEME_CHECKS.items()
    }
    return run_checks(checks, include, exclude)
