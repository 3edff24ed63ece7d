"""Flow-level metrics by hand: the latent round trip and the key-indistinguishability AUROC."""

from __future__ import annotations

import math

import pytest
import torch

from ifadit import registry
from ifadit.metrics import KeyIndistinguishability, LatentRoundTripError, flow_density, sphere_score


def test_latent_round_trip_by_hand_and_merged() -> None:
    metric = LatentRoundTripError()
    metric.update(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.1, 0.0]]))
    other = LatentRoundTripError()
    other.update(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.7]]))
    metric.merge_state(other)
    result = metric.compute()
    assert result["max_abs"].item() == pytest.approx(0.3)
    assert result["mean_abs"].item() == pytest.approx(0.1)


def test_key_auc_by_hand() -> None:
    metric = KeyIndistinguishability()
    metric.update(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 0.0]))
    # correct > wrong in 3 of the 4 (correct, wrong) pairs
    assert metric.compute()["auc"].item() == pytest.approx(0.75)
    reverse = KeyIndistinguishability()
    reverse.update(torch.tensor([2.0, 0.0]), torch.tensor([3.0, 1.0]))
    assert reverse.compute()["auc"].item() == pytest.approx(0.25)
    tied = KeyIndistinguishability()
    tied.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))
    assert tied.compute()["auc"].item() == pytest.approx(0.5)


def test_key_auc_does_not_saturate_on_log_densities() -> None:
    """binary_auroc would squash -300 and -100 to one sigmoid value; the ranks must survive."""
    metric = KeyIndistinguishability()
    metric.update(torch.tensor([-300.0, -100.0]), torch.tensor([-200.0]))
    metric.update(torch.tensor([]), torch.tensor([-400.0]))
    assert metric.compute()["auc"].item() == pytest.approx(0.75)
    metric.update(torch.tensor([math.nan]), torch.tensor([math.inf]))
    result = metric.compute()
    assert result["auc"].item() == pytest.approx(0.75) and result["nonfinite"].item() == 2


def test_key_auc_merges_and_handles_no_data() -> None:
    first, second = KeyIndistinguishability(), KeyIndistinguishability()
    first.update(torch.tensor([3.0]), torch.tensor([2.0]))
    second.update(torch.tensor([1.0]), torch.tensor([0.0]))
    first.merge_state(second)
    assert first.compute()["auc"].item() == pytest.approx(0.75)
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert math.isnan(KeyIndistinguishability().compute()["auc"].item())


def test_flow_density_is_the_flows_log_prob_and_sphere_score() -> None:
    flow = registry.create("flows", "realnvp", dim=4, cond_dim=2, num_blocks=1)
    z, cond = torch.randn(3, 4), torch.randn(3, 2)
    u, logdet = flow(z, cond)
    expected = -0.5 * (u.pow(2).sum(1) + 4 * math.log(2 * math.pi)) + logdet
    torch.testing.assert_close(flow_density(flow, z, cond), expected)
    torch.testing.assert_close(
        sphere_score(torch.tensor([[3.0, 4.0], [0.6, 0.8]])), torch.tensor([-4.0, 0.0], dtype=torch.float64)
    )
