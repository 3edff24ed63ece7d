"""The plugin's tests run beside ifadit's: one torch thread (the machine is shared), a fixed seed per test."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
