"""Passing weights between phases: each phase takes, from the previous phase's checkpoint, the tensors whose
names it has, memory-mapped so that nothing else in the file (optimizer state, other parts) is read."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ifadit.weights import WeightsError, load_checkpoint


def canonical(key: str) -> str:
    """A checkpoint key with its phase-specific container removed (``model.``, or ``recognizer.`` for the
    identity encoder trained in the recognizer phase)."""
    if key.startswith("recognizer."):
        return "identity_encoder." + key[len("recognizer.") :]
    return key[len("model.") :] if key.startswith("model.") else key


def needed_from_previous_phase(phase: str) -> list[str]:
    """The parts (canonical prefixes) a phase cannot start without."""
    if phase in ("recognizer", "render"):
        return []
    if phase in ("disentangle", "joint"):
        return ["identity_encoder."]
    front = ["identity_encoder.", "attribute_encoder.", "mapper.", "generator."]
    return [*front, "flow."] if phase == "compensator" else front


def load_components(module: nn.Module, path: str | Path, phase: str) -> None:
    """Take every tensor of ``path`` whose canonical name exists in ``module`` (shapes checked).

    A recognizer checkpoint feeds the identity encoder of phase 1 and a phase-1 checkpoint every part of
    phase 2. The file is memory-mapped: only the tensors taken are read from disk."""
    checkpoint = load_checkpoint(path, weights_only=True, mmap=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds no state dict")
    own = module.state_dict()
    by_canonical = {canonical(k): k for k in own}
    updates = {}
    for key, value in state.items():
        target = by_canonical.get(canonical(key))
        if target is None:
            continue
        if tuple(own[target].shape) != tuple(value.shape):
            raise WeightsError(
                f"{path}: tensor {key!r} has shape {tuple(value.shape)}, here {tuple(own[target].shape)}"
            )
        updates[target] = value
    loaded = {canonical(k) for k in updates}
    for prefix in needed_from_previous_phase(phase):
        if not any(k.startswith(prefix) for k in loaded):
            raise WeightsError(
                f"{path} has no weights for {prefix.rstrip('.')!r}, which phase {phase!r} needs"
            )
    module.load_state_dict(updates, strict=False)
