"""CPU cost of the quickstart's training-step parts, each against the slower form it replaced.

Three rows, each timed interleaved with its reference rep by rep (machine load hits both alike):

- the quickstart StyleGAN2 (64 px) forward+backward, batch 8: the non-fused modulated conv ifadit uses
  against the per-sample grouped conv (StyleGAN2's fused form, re-implemented below as the reference);
- the resnet10t identity encoder's forward+backward, batch 64 at 64 px (the recognizer phase): channels-last
  (ifadit's timm encoders) against the contiguous layout;
- one Adam step over phase 1's trainable parameters: the fused kernel against the per-tensor loop.

Outputs and gradients of each pair are compared too: the faster forms compute the same function.
Run: ``python benchmarks/training_speed.py [--threads 2] [--reps 20]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import describe  # benchmarks/ is on sys.path when a script runs
from torch import Tensor

from ifadit.nets.stylegan2 import ModulatedConv2d, StyleGAN2Generator
from ifadit.nets.timm_encoders import TimmAttributeEncoder, TimmIdentityEncoder

QUICKSTART_CHANNELS = {4: 128, 8: 128, 16: 96, 32: 64, 64: 32}
QUICKSTART_GENERATOR = {"size": 64, "style_dim": 128, "n_mlp": 2, "channels": QUICKSTART_CHANNELS}


def grouped_modulated_conv(self: ModulatedConv2d, x: Tensor, w: Tensor) -> Tensor:
    """The reference: one modulated (and demodulated) weight per sample, one grouped conv over the batch."""
    batch, in_ch, height, width = x.shape
    k = self.kernel_size
    weight = self.scale * self.weight * self.modulation(w).view(batch, 1, in_ch, 1, 1)
    if self.demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
    x = x.reshape(1, batch * in_ch, height, width)
    if self.upsample:
        weight = weight.transpose(1, 2).reshape(batch * in_ch, self.out_channels, k, k)
        out = F.conv_transpose2d(x, weight, stride=2, groups=batch)
        return self.blur(out.view(batch, self.out_channels, out.shape[2], out.shape[3]))
    weight = weight.reshape(batch * self.out_channels, in_ch, k, k)
    out = F.conv2d(x, weight, padding=self.padding, groups=batch)
    return out.view(batch, self.out_channels, out.shape[2], out.shape[3])


def _train_step(module: torch.nn.Module, *inputs: Tensor) -> Callable[[], tuple[Tensor, list[Tensor]]]:
    upstream: list[Tensor] = []  # a fixed random gradient (a norm-based loss is flat on unit embeddings)

    def step() -> tuple[Tensor, list[Tensor]]:
        module.zero_grad(set_to_none=True)
        out = module(*inputs)
        if not upstream:
            upstream.append(torch.randn(out.shape, generator=torch.Generator().manual_seed(0)))
        out.backward(upstream[0])
        return out.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]

    return step


def generator_pair() -> dict[str, Callable[[], tuple[Tensor, list[Tensor]]]]:
    torch.manual_seed(0)
    generator = StyleGAN2Generator(**QUICKSTART_GENERATOR)
    w_plus = torch.randn(8, generator.n_latent, QUICKSTART_GENERATOR["style_dim"])
    step = _train_step(generator, w_plus)
    ours = ModulatedConv2d.forward

    def reference() -> tuple[Tensor, list[Tensor]]:
        ModulatedConv2d.forward = grouped_modulated_conv  # type: ignore[method-assign]
        try:
            return step()
        finally:
            ModulatedConv2d.forward = ours  # type: ignore[method-assign]

    return {"grouped conv per sample (reference)": reference, "non-fused modulated conv (ifadit)": step}


def encoder_pair() -> dict[str, Callable[[], tuple[Tensor, list[Tensor]]]]:
    torch.manual_seed(0)
    channels_last = TimmIdentityEncoder("resnet10t", embedding_dim=128, in_size=64)
    contiguous = TimmIdentityEncoder("resnet10t", embedding_dim=128, in_size=64)
    contiguous.load_state_dict(channels_last.state_dict())
    contiguous.backbone.to(memory_format=torch.contiguous_format)
    adapter = contiguous.adapter.forward
    contiguous.adapter.forward = lambda images: adapter(images).contiguous()  # type: ignore[method-assign]
    images = torch.rand(64, 3, 64, 64) * 2 - 1
    return {
        "contiguous (reference)": _train_step(contiguous, images),
        "channels-last (ifadit)": _train_step(channels_last, images),
    }


def adam_pair() -> dict[str, Callable[[], tuple[Tensor, list[Tensor]]]]:
    torch.manual_seed(0)
    modules = [StyleGAN2Generator(**QUICKSTART_GENERATOR), TimmAttributeEncoder("resnet10t", 10, 128)]
    params = {"loop": [], "fused": []}
    for kind in params:
        for module in modules:
            for p in module.parameters():
                q = p.detach().clone().requires_grad_()
                q.grad = torch.randn_like(q, generator=torch.Generator().manual_seed(q.numel()))
                params[kind].append(q)
    loop = torch.optim.Adam(params["loop"], lr=1e-3, foreach=False)
    fused = torch.optim.Adam(params["fused"], lr=1e-3, fused=True)

    def stepper(opt: torch.optim.Optimizer, ps: list[Tensor]) -> Callable[[], tuple[Tensor, list[Tensor]]]:
        def step() -> tuple[Tensor, list[Tensor]]:
            opt.step()
            return ps[0].detach(), [p.detach() for p in ps]

        return step

    return {
        "per-tensor loop (reference)": stepper(loop, params["loop"]),
        "fused (ifadit)": stepper(fused, params["fused"]),
    }


def _relative_difference(a: list[Tensor], b: list[Tensor]) -> float:
    """|a - b| / |b| over all tensors together (per tensor, exactly-zero gradients would divide by zero)."""
    diff = sum((x - y).square().sum() for x, y in zip(a, b, strict=True))
    return (diff / sum(y.square().sum() for y in b)).sqrt().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = {
        "StyleGAN2 64 px, fwd+bwd, batch 8": generator_pair(),
        "resnet10t identity encoder 64 px, fwd+bwd, batch 64": encoder_pair(),
        "Adam step, phase-1 parameters (generator + attribute encoder)": adam_pair(),
    }
    rows = []
    for part, pair in parts.items():
        (ref_label, reference), (label, ours) = pair.items()
        ref_out, ref_grads = reference()
        out, grads = ours()
        diff = max((out - ref_out).abs().max().item(), _relative_difference(grads, ref_grads))
        for _ in range(args.warmup - 1):
            reference(), ours()
        times: dict[str, list[float]] = {ref_label: [], label: []}
        for _ in range(args.reps):
            for name, fn in ((ref_label, reference), (label, ours)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        ref_ms, ms = (statistics.median(times[n]) * 1e3 for n in (ref_label, label))
        rows.append({"part": part, "reference": ref_label, "ifadit": label, "reference_ms": ref_ms,
                     "ifadit_ms": ms, "speedup": ref_ms / ms, "max_difference": diff})
    machine = describe(args.threads)
    lines = [
        f"Training-step parts — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — {machine}",
        f"(median of {args.reps} interleaved reps after {args.warmup} warm-ups; max difference: outputs "
        "absolute, gradients or updated parameters relative, all tensors together)",
        "",
        "| part | reference | ms | ifadit | ms | speed-up | max difference |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['part']} | {r['reference']} | {r['reference_ms']:.1f} | {r['ifadit']} "
            f"| {r['ifadit_ms']:.1f} | {r['speedup']:.2f}x | {r['max_difference']:.1e} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training_speed.md").write_text(text)
    (args.out / "training_speed.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
