"""Every registered flow (built-in or installed plugin) against the flow contract of ``ifadit.testing``:
exact inversion in float32 and float64 at init and after training, a log-det equal to the autograd
Jacobian's, key sensitivity, input validation, autocast safety and checkpoint round trips. One test per
flow and property, so a failure names both."""

from __future__ import annotations

import functools

import pytest
import torch

from ifadit import registry
from ifadit.flows.base import KeyedFlow
from ifadit.testing import FLOW_CHECKS, SLOW_FLOW_CHECKS, FlowContract, check_flow

FLOW_NAMES = sorted(registry.available("flows"))
CONTRACT = FlowContract()  # 512-d identities and conditions, 4 blocks, batch 256: ifadit's sizes

CASES = [
    pytest.param(
        name, check, id=f"{name}-{check}", marks=[pytest.mark.slow] if check in SLOW_FLOW_CHECKS else []
    )
    for name in FLOW_NAMES
    for check in FLOW_CHECKS
]


@pytest.mark.parametrize(("name", "check"), CASES)
def test_flow_contract(name: str, check: str) -> None:
    FLOW_CHECKS[check](name, CONTRACT)


def test_builtins_are_all_checked() -> None:
    assert {"glow", "realnvp", "spline", "allinone"} <= set(FLOW_NAMES)


def test_check_flow_runs_every_fast_check_and_skips_what_an_instance_cannot_rebuild() -> None:
    small = FlowContract(dim=16, cond_dim=8, num_blocks=2, batch=32)
    report = check_flow(functools.partial(registry.get("flows", "realnvp"), hidden=(32,)), small)
    assert report.passed == tuple(n for n in FLOW_CHECKS if n not in SLOW_FLOW_CHECKS) and not report.skipped
    instance = registry.create("flows", "glow", dim=16, cond_dim=8, num_blocks=2)
    report = check_flow(instance, small)
    assert set(report.skipped) == {"unconditional", "state_dict_round_trip"}
    assert "logdet_matches_jacobian" in report.passed and "input_validation" in report.passed


class _LeakyFlow(KeyedFlow):
    """A broken flow: its inverse forgets the key's shift, and its log-det is off by one."""

    def __init__(self, dim: int, cond_dim: int, num_blocks: int) -> None:
        super().__init__(dim, cond_dim, num_blocks)
        self.proj = torch.nn.Linear(max(cond_dim, 1), dim)

    def _shift(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.proj(cond) if cond is not None else torch.zeros_like(z)

    def _forward(self, z, cond):
        return 2 * z + self._shift(z, cond), z.new_full((z.shape[0],), self.dim * 0.6931471805599453 + 1)

    def _inverse(self, z, cond):
        return z / 2


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ("round_trip_float32", r"_LeakyFlow: float32 round trip \(grad=off\) max-abs error"),
        ("logdet_matches_jacobian", "logdet differs from the autograd Jacobian"),
    ],
)
def test_a_broken_flow_fails_with_a_message_naming_it_and_the_property(check: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        FLOW_CHECKS[check](_LeakyFlow, FlowContract(dim=8, cond_dim=4, num_blocks=1, batch=4))


def test_unknown_check_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown checks"):
        check_flow("glow", include=("no_such_check",))
