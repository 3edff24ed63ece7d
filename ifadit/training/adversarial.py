"""The optional adversarial game of one training step: renders try to fool a discriminator, which learns
to tell them from the training images.

The discriminator's loss is summed into the same loss as the generator's terms, so one backward pass trains
both from the same weights (simultaneous GAN updates). That keeps Lightning's automatic optimisation —
precision, gradient accumulation, DDP, schedules and ``--ckpt_path`` resume work unchanged — where
alternating updates would need a second optimizer and manual optimisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ifadit.nets import Discriminator


def detached_state(module: nn.Module) -> dict[str, Tensor]:
    """``module``'s tensors cut from autograd: a call through them passes gradients to its inputs only."""
    return {name: tensor.detach() for name, tensor in module.state_dict(keep_vars=True).items()}


class Adversary:
    """One step's game: :meth:`fool` scores renders (and remembers them as fakes), :meth:`critic_loss`
    trains the discriminator on the training images against every remembered fake."""

    def __init__(self, discriminator: Discriminator, r1: float, r1_interval: int, step: int) -> None:
        self.discriminator = discriminator
        self.r1 = r1
        self.r1_interval = r1_interval
        self.step = step
        self.fakes: list[Tensor] = []

    def fool(self, renders: Tensor) -> Tensor:
        """Non-saturating generator loss through the discriminator's weights, detached: its gradient
        reaches the renders only."""
        critic = self.discriminator
        logits = functional_call(critic, detached_state(critic), (renders,))
        self.fakes.append(renders)
        return F.softplus(-logits).mean()

    def critic_loss(self, real: Tensor) -> Tensor:
        """Logistic loss on real images and this step's renders (detached: it trains the discriminator
        only), plus the lazy R1 penalty every ``r1_interval`` steps."""
        critic = self.discriminator
        fake = torch.cat([f.detach() for f in self.fakes])
        loss = F.softplus(critic(fake)).mean() + F.softplus(-critic(real.detach())).mean()
        if self.r1 and self.step % self.r1_interval == 0:
            # float32: a double backward through bf16 loses the small gradient norms the penalty measures
            inputs = real.detach().float().requires_grad_(True)
            with torch.autocast(device_type=inputs.device.type, enabled=False):
                (grad,) = torch.autograd.grad(critic(inputs).sum(), inputs, create_graph=True)
            loss = loss + self.r1 / 2 * self.r1_interval * grad.pow(2).flatten(1).sum(dim=1).mean()
        return loss
