"""Shared plumbing of the contract checks: deterministic randomness and a report of what ran."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch


class CannotBuild(Exception):
    """A check needs a component built with other arguments than the instance it was given."""


@dataclass(frozen=True)
class ContractReport:
    """What a ``check_*`` run did: the checks that passed, and those skipped with the reason."""

    passed: tuple[str, ...]
    skipped: Mapping[str, str]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run with torch's CPU generator at ``seed`` and restore the caller's state afterwards, so a check
    neither depends on nor disturbs the order tests run in."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def run_checks(
    checks: Mapping[str, Callable[[], None]],
    include: tuple[str, ...] | None,
    exclude: tuple[str, ...],
) -> ContractReport:
    """Run the selected checks in order; a ``CannotBuild`` marks a check skipped, an AssertionError
    propagates (the first failing property stops the run with its own message)."""
    unknown = sorted((set(include or ()) | set(exclude)) - set(checks))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; known: {', '.join(checks)}")
    passed: list[str] = []
    skipped: dict[str, str] = {}
    for name, check in checks.items():
        if (include is not None and name not in include) or name in exclude:
            continue
        try:
            check()
        except CannotBuild as reason:
            skipped[name] = str(reason)
            continue
        passed.append(name)
    return ContractReport(tuple(passed), skipped)
