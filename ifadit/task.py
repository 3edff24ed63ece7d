"""The Lightning task: one module, four phases, every component received typed by its base class.

Phases (``phase``):

- ``recognizer``  — train the identity encoder with an ArcFace margin head on identity labels (the stand-in
  for a pretrained ArcFace where none is available);
- ``disentangle`` — phase 1: attribute encoder + mapper (+ the generator when it is not pretrained) learn to
  reconstruct ``x`` from ``(E_id(x), E_attr(x))``; a swapped identity must show up in the render;
- ``flow``        — phase 2: flow + compensator (+ a trainable key scheme) with anonymity, diversity,
  recovery and wrong-key losses, everything else frozen;
- ``joint``       — phase-1 and phase-2 losses, all trainable parts at once: the single-phase ablation, or,
  started from a phase-1 checkpoint, a phase 2 in which a generator trained here keeps learning (tried
  for the quickstart, README "Training"; a pretrained generator stays frozen in ``flow``, as in the paper);
- ``compensator`` — after phase 2: the compensator alone, on the finished flow, reading stored anonymized
  renders back (in phase 2 it chases a moving flow and sees each face once).

Each phase loads what it needs from the previous phase's checkpoint (``init_from``). Loss weights are
config; a weight of 0 switches the term off and skips its computation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import kornia
import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.func import functional_call

from ifadit.anonymizer import IFADIT
from ifadit.flows import KeyedFlow, PrincipalSubspace, SubspaceFlow
from ifadit.keys import KeyScheme, SecretKey
from ifadit.losses import anonymity_loss, batch_diversity_loss, identity_loss
from ifadit.metrics import AnonymizationSuite
from ifadit.nets import AttributeEncoder, Discriminator, Generator, IdentityEncoder
from ifadit.nets.image import as_stored
from ifadit.nets.timm_encoders import ArcFaceHead
from ifadit.recognizers import EncoderRecognizer
from ifadit.weights import WeightsError, load_checkpoint

Phase = Literal["recognizer", "disentangle", "flow", "joint", "compensator"]
PHASES: tuple[str, ...] = ("recognizer", "disentangle", "flow", "joint", "compensator")

# Public, fixed validation keys: validation numbers stay comparable across epochs and runs. They are not
# secrets (anyone can derive them from this source), and no user key is ever used in training or logged.
VALIDATION_KEYS = tuple(
    SecretKey(hashlib.sha256(f"ifadit/validation-key/{i}".encode()).digest()) for i in range(2)
)


# Verification threshold of the model's own encoder in the logged suite (re-identification rates): a
# cosine of 0.5 lies between the same-identity (~0.7) and different-identity (~0) means of the quickstart's.
SUITE_OWN_THRESHOLD = 0.5


@dataclass
class LossWeights:
    """Every loss weight of every phase; 0 switches a term off (the ablations)."""

    # phase 1: reconstruction and disentanglement
    l1: float = 1.0
    l2: float = 0.0
    ssim: float = 0.5
    identity: float = 1.0  # E_id(G(M(z, a))) keeps z
    swap_identity: float = 0.5  # E_id(G(M(z_other, a))) carries z_other: the generator must use the identity
    swap_pixel: float = (
        0.0  # G(M(z_other, a)) equals the rendered swap (batch["swap_image"], SynthFaces only)
    )
    # E_id(G(M(z_syn, a))) carries z_syn, a new identity drawn from a Gaussian with the covariance of recent
    # real ones (the queue below): the generator learns to render identities no training face has, like those
    # a subspace flow (``identity_subspace``) makes. Measured: their read-back 0.66 -> 0.82 at 0.3, but no
    # better recovery and a worse reconstruction (README, "Training", eighth session).
    synthetic_identity: float = 0.0
    # Non-saturating GAN loss (needs ``model.discriminator``): the generator's renders must look like the
    # training images to a discriminator trained on the same step. ``adversarial`` judges phase 1's
    # reconstructions and swaps; ``anonymized_adversarial`` the anonymized render, whose gradient reaches
    # the flow (and in the joint phase the generator): anonymized identities must render as faces.
    adversarial: float = 0.0
    anonymized_adversarial: float = 0.0
    # What the discriminator sees as real: "image" (the training images) or "reconstruction" (phase 2's
    # G(M(z, a)) of real identities: the critic then tells anonymized identities from real ones rendered by
    # the same generator, not rendered faces from photos). "reconstruction" excludes ``adversarial``.
    adversarial_reference: Literal["image", "reconstruction"] = "image"
    r1: float = 0.0  # R1 gradient penalty on the discriminator's real inputs (StyleGAN2: 10)
    r1_interval: int = 16  # lazy R1: every N steps, weighted by N (StyleGAN2's choice)
    # phase 2: the keyed identity transform
    anonymity: float = 1.0  # privacy: E_id(x_anon) far from z
    two_key_diversity: float = 1.0  # two keys give two identities
    batch_diversity: float = 0.0  # the official L_inter over the batch (a sum over pairs)
    image: float = 0.2  # x_anon keeps the rest of the face (L1 to the reconstruction)
    anonymized_identity: float = 0.5  # E_id(x_anon) carries z_anon, so the compensator's job is small
    latent_norm: float = 0.1  # z_anon stays on the identity sphere the generator was trained on
    latent_recovery: float = 1.0  # compensator: C(E_id(x_anon)) = z_anon
    # False: latent_recovery trains the compensator alone. True (default): its gradient also reaches the flow
    # (and, in the joint phase, the generator) through the anonymized render. Measured in joint phase-2 runs:
    # two keys kept apart for 9 of 12 key-run pairs with False, 5 of 10 with True (README, "Training").
    latent_recovery_through_render: bool = True
    # joint phase only. False: the mapper and generator learn only from renders whose target image is known
    # (reconstruction, swaps, the recovered face); the anonymized, second-key and wrong-key renders pass
    # gradients to the flow and encoders but leave the generator's weights alone. True trained the generator
    # to render anonymized identities as featureless dark heads (seventh session); False keeps them faces but
    # recovers less (0.61-0.79 against 0.79-0.84; README, "Training", eighth session).
    anonymized_render_trains_generator: bool = True
    # True: the phase-2 terms read the anonymized face as an 8-bit file stores it (straight-through rounding),
    # as every recovery does; False: the generator's floats, as the paper's code does. On the quickstart
    # (2 seeds, 7 keys) True lifted one seed's worst key (0.53 -> 0.76) but not the other's, and kept fewer
    # keys apart (README, "Training", tenth session), so it stays off.
    store_anonymized: bool = False
    recovery_identity: float = 1.0  # E_id(x_rec) keeps z
    recovery_image: float = 1.0  # x_rec equals the reconstruction
    wrong_key: float = 1.0  # a wrong key's recovery stays anonymous
    # phase 2 in identity space: no recognizer in the loop, so nothing to win by fooling one (see
    # ``_latent_terms``); they need a generator that renders a real-looking identity vector faithfully.
    latent_anonymity: float = 0.0  # cos(F(z, c), z) below the margin
    latent_two_key: float = 0.0  # cos(F(z, c), F(z, c')) below the margin
    # L_inter on F(z, c) over the batch, all faces under one key: without it the flow learns one target
    # identity per key whatever the input (quickstart, measured: 50 test identities under one key at
    # pairwise cosine 0.64-0.96, 0.02 for the real ones), so two keys collide and the inverse is
    # ill-conditioned.
    latent_batch_diversity: float = 0.0
    latent_wrong_key: float = 0.0  # cos(F^-1(F(z, c), c'), z) below the margin
    latent_realism: float = 0.0  # F(z, c) lies among real identities (a queue of recent embeddings)
    # phase "compensator": steps render their faces under fresh keys into a replay buffer of
    # (E_id(stored x_anon), z_anon) pairs until it holds replay_size, and every step fits C on replay_batch
    # pairs drawn from it, so each costly render serves many cheap steps (weight: ``latent_recovery``).
    replay_size: int = 9600
    replay_batch: int = 256
    # |F^-1(C(E_id(x_anon)), c) - z|^2, error after the inverse. Measured on the quickstart (with latent_norm
    # 1.0): latent recovery 0.42 -> 0.91, but the flow learns to ignore the key (two keys' faces 0.998 alike,
    # a wrong key recovers the face): pair it with stronger key losses, and check the suite's security rows.
    inverse_recovery: float = 0.0
    density: float = 0.0  # NLL per dimension of real identities under the flow's own density model
    density_noise: float = 0.05  # identities are unit vectors: noise gives the sphere a thickness to model
    realism_threshold: float = 0.9  # mean cosine to the nearest queued real identities that needs no push
    realism_neighbours: int = 4
    realism_queue_size: int = 1024  # real identity embeddings kept for ``latent_realism`` and ``density``
    queue_warmup_images: int = 0  # training images encoded into that queue before the first step
    # shared
    margin: float = 0.1  # cosine margin of the identity/anonymity losses (official default)
    diversity_threshold: float = 0.1


class Encoded(NamedTuple):
    """One batch's encodings and their render, G(M(z, a))."""

    identity: Tensor
    attributes: Tensor
    render: Tensor


@dataclass
class OptimizerConfig:
    lr: float = 2e-3
    generator_lr: float | None = None  # defaults to lr
    discriminator_lr: float | None = None  # defaults to generator_lr
    betas: tuple[float, float] = (0.5, 0.99)
    weight_decay: float = 0.0
    # "cosine": every group's rate falls along a half cosine to 0 at the fit's last step (per step; a
    # resumed fit continues the curve). Short CPU budgets gain most: measured in the README ("Training").
    schedule: Literal["constant", "cosine"] = "constant"


def _set_trainable(module: nn.Module | None, trainable: bool) -> None:
    if module is not None:
        module.requires_grad_(trainable)


class IFADITTask(L.LightningModule):
    """Lightning glue around :class:`ifadit.anonymizer.IFADIT`; no network code lives here."""

    def __init__(
        self,
        identity_encoder: IdentityEncoder,
        attribute_encoder: AttributeEncoder | None = None,
        mapper: nn.Module | None = None,
        generator: Generator | None = None,
        flow: KeyedFlow | None = None,
        key_scheme: KeyScheme | None = None,
        compensator: nn.Module | None = None,
        phase: Phase = "flow",
        init_from: str | None = None,
        train_generator: bool = True,
        key_mapping_from_generator: bool = False,
        num_identities: int | None = None,
        arcface_scale: float = 32.0,
        arcface_margin: float = 0.3,
        losses: LossWeights | None = None,
        optimizer: OptimizerConfig | None = None,
        val_sample_count: int = 8,
        predict_key_file: str | None = None,
        training_keys: Literal["per_sample", "per_batch"] = "per_sample",
        identity_subspace: PrincipalSubspace | None = None,
        discriminator: Discriminator | None = None,
    ) -> None:
        super().__init__()
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        self.save_hyperparameters(
            ignore=[
                "identity_encoder",
                "attribute_encoder",
                "mapper",
                "generator",
                "flow",
                "key_scheme",
                "compensator",
                "identity_subspace",
                "discriminator",
                "losses",
                "optimizer",
            ]
        )
        if training_keys not in ("per_sample", "per_batch"):
            raise ValueError(f"training_keys must be 'per_sample' or 'per_batch', got {training_keys!r}")
        self.phase = phase
        self.training_keys = training_keys
        self.losses = losses or LossWeights()
        if self.losses.replay_size < 1 or self.losses.replay_batch < 1:
            raise ValueError(
                "losses.replay_size and replay_batch must be >= 1, "
                f"got {self.losses.replay_size} and {self.losses.replay_batch}"
            )
        if phase == "compensator" and not self.losses.latent_recovery:
            raise ValueError("phase 'compensator' fits losses.latent_recovery, which is 0: nothing trains")
        self.optim = optimizer or OptimizerConfig()
        self.hparams["losses"] = asdict(self.losses)
        self.hparams["optimizer"] = asdict(self.optim)
        self.train_generator = train_generator
        self.val_sample_count = val_sample_count
        self._predict_secret: SecretKey | None = None
        self.arcface_head: ArcFaceHead | None = None
        self.model: IFADIT | None = None
        self.recognizer: IdentityEncoder | None = None
        self.discriminator: Discriminator | None = None
        if phase == "recognizer":
            self.recognizer = identity_encoder
            if num_identities is not None:
                self.arcface_head = ArcFaceHead(
                    identity_encoder.embedding_dim, num_identities, scale=arcface_scale, margin=arcface_margin
                )
        else:
            needed = {"attribute_encoder": attribute_encoder, "mapper": mapper, "generator": generator}
            if phase != "disentangle":
                needed.update(flow=flow, key_scheme=key_scheme)
            if phase == "compensator":
                needed.update(compensator=compensator)
            missing = [name for name, part in needed.items() if part is None]
            if missing:
                raise ValueError(f"phase {phase!r} needs the components: {', '.join(missing)}")
            keyed = phase != "disentangle"
            if keyed and losses is not None and losses.density and not hasattr(flow, "base_nll"):
                raise ValueError(
                    f"losses.density needs a flow with its own density model (base_nll), "
                    f"which {type(flow).__name__} lacks"
                )
            if keyed and key_mapping_from_generator:
                # The paper's key mapper: the (frozen, pretrained) StyleGAN2 mapping network.
                if not hasattr(key_scheme, "attach_mapping"):
                    raise ValueError(f"{type(key_scheme).__name__} cannot use a generator's mapping network")
                key_scheme.attach_mapping(generator.map)
            if keyed and identity_subspace is not None:
                # the flow acts on the principal coordinates of real identities only (ifadit.flows.subspace)
                flow = SubspaceFlow(flow, identity_subspace)
            self.model = IFADIT(
                identity_encoder,
                attribute_encoder,
                mapper,
                generator,
                flow if keyed else None,
                key_scheme if keyed else None,
                compensator,
            )
            self.discriminator = self._checked_discriminator(discriminator)
        if init_from:
            self.load_components(init_from)
        self._configure_trainable()
        self.train()  # Lightning never calls train() before fitting: frozen parts must start in eval mode

    def _checked_discriminator(self, discriminator: Discriminator | None) -> Discriminator | None:
        """The discriminator when an adversarial term of this phase uses it (else it is not kept)."""
        w = self.losses
        adversarial = w.adversarial if self.phase in ("disentangle", "joint") else 0.0
        anonymized = w.anonymized_adversarial if self.phase in ("flow", "joint") else 0.0
        if w.adversarial_reference not in ("image", "reconstruction"):
            raise ValueError(
                "losses.adversarial_reference must be 'image' or 'reconstruction', "
                f"got {w.adversarial_reference!r}"
            )
        if w.adversarial_reference == "reconstruction" and adversarial:
            raise ValueError(
                "losses.adversarial_reference 'reconstruction' makes reconstructions the real class: "
                "it cannot also train them as fakes (losses.adversarial must be 0)"
            )
        if w.r1_interval < 1:
            raise ValueError(f"losses.r1_interval must be >= 1, got {w.r1_interval}")
        if not (adversarial or anonymized):
            return None
        if discriminator is None:
            raise ValueError(
                f"losses.adversarial / anonymized_adversarial in phase {self.phase!r} "
                "need model.discriminator"
            )
        assert self.model is not None
        if discriminator.size != self.model.generator.size:
            raise ValueError(
                f"the discriminator takes {discriminator.size} px images, the generator renders "
                f"{self.model.generator.size} px"
            )
        return discriminator

    @property
    def identity_encoder(self) -> IdentityEncoder:
        return self.recognizer if self.model is None else self.model.identity_encoder

    # -- set-up ---
    def setup(self, stage: str) -> None:
        if self.phase == "recognizer" and self.arcface_head is None:
            datamodule = self.trainer.datamodule if self.trainer else None
            count = getattr(datamodule, "num_classes", None) or getattr(datamodule, "num_identities", None)
            if not count:
                raise ValueError("the recognizer phase needs num_identities (or a datamodule that knows it)")
            self.hparams["num_identities"] = count
            self.arcface_head = ArcFaceHead(
                self.identity_encoder.embedding_dim,
                count,
                scale=self.hparams.arcface_scale,
                margin=self.hparams.arcface_margin,
            )

    def on_fit_start(self) -> None:
        """Before the first step: fit the identity subspace (when the flow has one and no checkpoint
        brought it) and fill the queue of real identities (``losses.queue_warmup_images``)."""
        if self.model is None or self.phase == "recognizer":
            return
        subspace = self.model.flow.subspace if isinstance(self.model.flow, SubspaceFlow) else None
        if subspace is not None and not bool(subspace.fitted):
            subspace.fit(torch.cat(list(self._training_embeddings(subspace.fit_images))))
            for buffer in subspace.buffers():  # every rank keeps rank 0's basis
                buffer.copy_(self.trainer.strategy.broadcast(buffer, src=0))
            self.print(f"identity subspace: {subspace.rank} of {subspace.dim} directions fitted")
        if self.losses.queue_warmup_images:
            for embeddings in self._training_embeddings(self.losses.queue_warmup_images):
                self._remember_identities(embeddings)

    def _training_embeddings(self, count: int) -> Iterator[Tensor]:
        """Identity embeddings of ``count`` training faces (fewer if the data is smaller), in eval mode."""
        datamodule = self.trainer.datamodule if self.trainer else None
        if datamodule is None:
            raise ValueError("the identity subspace and queue are filled from a datamodule's training faces")
        assert self.model is not None
        encoder, seen = self.model.identity_encoder, 0
        was_training = encoder.training
        encoder.eval()
        try:
            with torch.no_grad():
                for batch in datamodule.train_dataloader():
                    embeddings = encoder(batch["image"].to(self.device))
                    yield embeddings
                    seen += embeddings.shape[0]
                    if seen >= count:
                        return
        finally:
            encoder.train(was_training)

    def _trainable_parts(self) -> list[nn.Module]:
        m = self.model
        if m is None:
            return [self.identity_encoder, *([self.arcface_head] if self.arcface_head is not None else [])]
        generator = [m.generator] if self.train_generator else []
        critic = [self.discriminator] if self.discriminator is not None else []
        if self.phase == "disentangle":
            return [m.attribute_encoder, m.mapper, *generator, *critic]
        if self.phase == "compensator":
            return [m.compensator]
        keyed = [p for p in (m.flow, m.compensator) if p is not None]
        if self.phase == "flow":
            return [*keyed, *critic]
        return [m.attribute_encoder, m.mapper, *generator, *keyed, *critic]

    def _configure_trainable(self) -> None:
        key_scheme_trainable = {}
        if self.model is not None and self.model.key_scheme is not None:
            key_scheme_trainable = {p: p.requires_grad for p in self.model.key_scheme.parameters()}
        self.requires_grad_(False)
        for part in self._trainable_parts():
            _set_trainable(part, True)
        # The key scheme keeps its own choice (frozen random mapping by default), trained only with the flow.
        for param, flag in key_scheme_trainable.items():
            param.requires_grad_(flag and self.phase in ("flow", "joint"))

    def train(self, mode: bool = True) -> IFADITTask:
        """Frozen parts stay in eval mode (their batch norms must not drift)."""
        super().train(mode)
        if mode:
            trainable = {id(m) for part in self._trainable_parts() for m in part.modules()}
            for module in self.modules():
                if id(module) not in trainable and module is not self:
                    module.train(False)
        return self

    def load_components(self, path: str | Path) -> None:
        """Take every tensor of a previous phase's checkpoint whose name exists here (shapes checked).

        Names are compared without their container (see ``_canonical``), so a recognizer checkpoint feeds
        the identity encoder of phase 1 and a phase-1 checkpoint every part of phase 2."""
        checkpoint = load_checkpoint(path, weights_only=True)
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise WeightsError(f"{path} holds no state dict")
        own = self.state_dict()
        by_canonical = {_canonical(k): k for k in own}
        updates = {}
        for key, value in state.items():
            target = by_canonical.get(_canonical(key))
            if target is None:
                continue
            if tuple(own[target].shape) != tuple(value.shape):
                raise WeightsError(
                    f"{path}: tensor {key!r} has shape {tuple(value.shape)}, here {tuple(own[target].shape)}"
                )
            updates[target] = value
        loaded = {_canonical(k) for k in updates}
        for prefix in self._needed_from_previous_phase():
            if not any(k.startswith(prefix) for k in loaded):
                raise WeightsError(
                    f"{path} has no weights for {prefix.rstrip('.')!r}, which phase {self.phase!r} needs"
                )
        self.load_state_dict(updates, strict=False)

    def _needed_from_previous_phase(self) -> list[str]:
        if self.phase == "recognizer":
            return []
        if self.phase in ("disentangle", "joint"):
            return ["identity_encoder."]
        front = ["identity_encoder.", "attribute_encoder.", "mapper.", "generator."]
        return [*front, "flow."] if self.phase == "compensator" else front

    def configure_optimizers(self) -> torch.optim.Optimizer | OptimizerLRSchedulerConfig:
        generator_params: set[int] = set()
        critic_params: set[int] = set()
        if self.model is not None:
            generator_params = {id(p) for p in self.model.generator.parameters()}
        if self.discriminator is not None:
            critic_params = {id(p) for p in self.discriminator.parameters()}
        params = [p for p in self.parameters() if p.requires_grad]
        main = [p for p in params if id(p) not in generator_params | critic_params]
        gen = [p for p in params if id(p) in generator_params]
        critic = [p for p in params if id(p) in critic_params]
        generator_lr = self.optim.generator_lr or self.optim.lr
        groups = [{"params": main, "lr": self.optim.lr}]
        if gen:
            groups.append({"params": gen, "lr": generator_lr})
        if critic:
            groups.append({"params": critic, "lr": self.optim.discriminator_lr or generator_lr})
        # The fused kernel updates every tensor in one pass: the same Adam, 1.6x faster a step than the
        # default per-tensor loop on the CPU for phase 1's 7.3M parameters (benchmarks/training_speed.py).
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
        optimizer = torch.optim.Adam(
            groups, betas=self.optim.betas, weight_decay=self.optim.weight_decay, fused=fused or None
        )
        if self.optim.schedule == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- losses ---
    def _reconstruction_terms(
        self, x: Tensor, swap_target: Tensor | None = None, fakes: list[Tensor] | None = None
    ) -> tuple[dict[str, Tensor], Encoded]:
        """Phase-1 terms, and the encodings and render they computed (the joint phase's flow terms reuse
        them). ``fakes`` collects the renders the discriminator must learn to reject."""
        m, w = self.model, self.losses
        assert m is not None
        with torch.no_grad():
            z = m.identity_encoder(x)
        a = m.attribute_encoder(x)
        x_hat = m.render(z, a)
        terms: dict[str, Tensor] = {}
        if w.l1:
            terms["l1"] = w.l1 * F.l1_loss(x_hat, x)
        if w.l2:
            terms["l2"] = w.l2 * F.mse_loss(x_hat, x)
        if w.ssim:
            # kornia's SSIM loss is (1 - SSIM) / 2 on [0, 1] images
            terms["ssim"] = w.ssim * kornia.losses.ssim_loss((x_hat + 1) / 2, (x + 1) / 2, window_size=7)
        if w.identity:
            terms["identity"] = w.identity * identity_loss(m.identity_encoder(x_hat), z, w.margin)
        x_swap = None
        if (w.swap_identity or (w.swap_pixel and swap_target is not None)) and x.shape[0] > 1:
            z_other = z.roll(1, dims=0)  # image i-1's identity on image i's attributes
            x_swap = m.render(z_other, a)
            if w.swap_identity:
                terms["swap_identity"] = w.swap_identity * identity_loss(
                    m.identity_encoder(x_swap), z_other, w.margin
                )
            if w.swap_pixel and swap_target is not None:
                terms["swap_pixel"] = w.swap_pixel * F.l1_loss(x_swap, swap_target)
        if w.synthetic_identity:
            z_syn = self._synthetic_identities(z)
            terms["synthetic_identity"] = w.synthetic_identity * identity_loss(
                m.identity_encoder(m.render(z_syn, a)), z_syn, w.margin
            )
        if w.adversarial and fakes is not None:
            renders = x_hat if x_swap is None else torch.cat((x_hat, x_swap))
            terms["adversarial"] = w.adversarial * self._fool_discriminator(renders, fakes)
        return terms, Encoded(z, a, x_hat)

    def _encode_and_render(self, x: Tensor) -> Encoded:
        """``(E_id(x), E_attr(x), G(M(z, a)))`` without gradients (phase 2's frozen front)."""
        m = self.model
        assert m is not None
        with torch.no_grad():
            z, a = m.identity_encoder(x), m.attribute_encoder(x)
            return Encoded(z, a, m.render(z, a))

    def _fool_discriminator(self, renders: Tensor, fakes: list[Tensor]) -> Tensor:
        """Non-saturating generator loss through the discriminator's weights, detached: its gradient
        reaches the renders only. The renders join ``fakes`` for the discriminator's own loss."""
        assert self.discriminator is not None
        critic = self.discriminator
        logits = functional_call(critic, _detached_state(critic), (renders,))
        fakes.append(renders)
        return F.softplus(-logits).mean()

    def _discriminator_loss(self, real: Tensor, fakes: list[Tensor]) -> Tensor:
        """The discriminator's logistic loss on real images and the step's renders (detached: it trains the
        discriminator only), plus the lazy R1 penalty.

        Summed into the same loss as the generator's terms, one backward pass trains both, from the same
        weights (simultaneous GAN updates). That keeps Lightning's automatic optimisation, so precision,
        gradient accumulation, DDP, schedules and ``--ckpt_path`` resume work unchanged, where alternating
        updates would need a second optimizer and manual optimisation."""
        assert self.discriminator is not None
        critic, w = self.discriminator, self.losses
        fake = torch.cat([f.detach() for f in fakes])
        loss = F.softplus(critic(fake)).mean() + F.softplus(-critic(real.detach())).mean()
        if w.r1 and self.global_step % w.r1_interval == 0:
            # float32: a double backward through bf16 loses the small gradient norms the penalty measures
            inputs = real.detach().float().requires_grad_(True)
            with torch.autocast(device_type=inputs.device.type, enabled=False):
                (grad,) = torch.autograd.grad(critic(inputs).sum(), inputs, create_graph=True)
            loss = loss + w.r1 / 2 * w.r1_interval * grad.pow(2).flatten(1).sum(dim=1).mean()
        return loss

    def _synthetic_identities(self, z: Tensor) -> Tensor:
        """One new identity per face: ``mean + sum_i e_i (q_i - mean) / sqrt(N - 1)`` over the queue ``q`` of
        recent real identities, ``e ~ N(0, I)`` — a Gaussian with their mean and covariance."""
        queue = self._remember_identities(z)
        mean = queue.mean(dim=0)
        weights = torch.randn(z.shape[0], queue.shape[0], device=z.device, dtype=z.dtype)
        return mean + weights @ (queue - mean) / max(queue.shape[0] - 1, 1) ** 0.5

    def _training_keys(self, batch: int, device: torch.device) -> Tensor:
        """Fresh random key conditions for one step. ``per_batch`` (the official code's choice) gives the
        whole batch one key, so the batch-diversity terms compare different faces under the same key."""
        assert self.model is not None and self.model.key_scheme is not None
        if self.training_keys == "per_batch":
            return self.model.key_scheme.sample(1, device=device).expand(batch, -1)
        return self.model.key_scheme.sample(batch, device=device)

    def _flow_terms(
        self, x: Tensor, encoded: Encoded | None = None, fakes: list[Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Phase-2 terms. ``encoded``: this batch's encodings and render from the phase-1 terms (joint phase),
        which are the same tensors this would compute again: one identity-encoder, one attribute-encoder
        and one generator pass fewer a step. ``fakes`` collects renders for the discriminator."""
        m, w = self.model, self.losses
        assert m is not None
        batch = x.shape[0]
        frozen_front = self.phase == "flow"
        if encoded is not None:
            z, a = encoded.identity.detach(), encoded.attributes
        else:
            with torch.set_grad_enabled(not frozen_front and torch.is_grad_enabled()):
                z = m.identity_encoder(x).detach()
                a = m.attribute_encoder(x)
        if frozen_front:
            a = a.detach()
        cond_a = self._training_keys(batch, x.device)
        z_a, _ = m.flow(z, cond_a)
        render_untargeted = (
            m.render
            if frozen_front or w.anonymized_render_trains_generator
            else self._render_without_training_the_renderer
        )
        x_a = render_untargeted(z_a, a)
        if w.store_anonymized:
            x_a = as_stored(x_a, straight_through=True)
        f_a = m.identity_encoder(x_a)
        terms: dict[str, Tensor] = {}
        if w.anonymity:
            terms["anonymity"] = w.anonymity * anonymity_loss(f_a, z, w.margin)
        if w.anonymized_identity:
            terms["anonymized_identity"] = w.anonymized_identity * identity_loss(f_a, z_a, w.margin)
        if w.anonymized_adversarial and fakes is not None:
            terms["anonymized_adversarial"] = w.anonymized_adversarial * self._fool_discriminator(x_a, fakes)
        if w.latent_norm:
            terms["latent_norm"] = w.latent_norm * (z_a.norm(dim=1) - 1).pow(2).mean()
        z_b = None
        if w.two_key_diversity or w.latent_two_key:
            z_b, _ = m.flow(z, self._training_keys(batch, x.device))
        if w.two_key_diversity:
            f_b = m.identity_encoder(render_untargeted(z_b, a))
            terms["two_key_diversity"] = w.two_key_diversity * anonymity_loss(f_a, f_b, w.margin)
        terms.update(self._latent_terms(z, z_a, z_b))
        if w.batch_diversity:
            terms["batch_diversity"] = w.batch_diversity * batch_diversity_loss(f_a, w.diversity_threshold)
        if w.image:
            if encoded is not None:
                x_hat = encoded.render.detach()
            else:
                with torch.no_grad():
                    x_hat = m.render(z, a)
            terms["image"] = w.image * F.l1_loss(x_a, x_hat)
        needs_recovery = (
            w.latent_recovery or w.recovery_identity or w.recovery_image or w.wrong_key or w.inverse_recovery
        )
        if needs_recovery:
            flow_input = f_a if m.compensator is None else m.compensator(f_a)
            if w.latent_recovery and m.compensator is not None:
                estimate = flow_input if w.latent_recovery_through_render else m.compensator(f_a.detach())
                terms["latent_recovery"] = w.latent_recovery * F.mse_loss(estimate, z_a.detach()) * z.shape[1]
            a_anon = m.attribute_encoder(x_a)
            if w.inverse_recovery:
                z_rec = m.flow.inverse(flow_input, cond_a)
                terms["inverse_recovery"] = w.inverse_recovery * F.mse_loss(z_rec, z) * z.shape[1]
            if w.recovery_identity or w.recovery_image:
                z_rec = m.flow.inverse(flow_input, cond_a)
                x_rec = m.render(z_rec, a_anon)
                if w.recovery_identity:
                    terms["recovery_identity"] = w.recovery_identity * identity_loss(
                        m.identity_encoder(x_rec), z, w.margin
                    )
                if w.recovery_image:
                    terms["recovery_image"] = w.recovery_image * F.l1_loss(x_rec, x)
            if w.wrong_key:
                z_wrong = m.flow.inverse(flow_input, self._training_keys(batch, x.device))
                f_wrong = m.identity_encoder(render_untargeted(z_wrong, a_anon))
                terms["wrong_key"] = w.wrong_key * anonymity_loss(f_wrong, z, w.margin)
        return terms

    def _render_without_training_the_renderer(self, identity: Tensor, attributes: Tensor) -> Tensor:
        """G(M(z, a)) whose gradient reaches ``z`` and ``a`` but not the mapper's or generator's weights."""
        m = self.model
        assert m is not None
        styles = functional_call(m.mapper, _detached_state(m.mapper), (identity, attributes))
        return functional_call(m.generator, _detached_state(m.generator), (styles,))

    def _latent_terms(self, z: Tensor, z_a: Tensor, z_b: Tensor | None) -> dict[str, Tensor]:
        """Phase-2 losses on identity vectors alone. Losses through the recognizer can be met by changes
        only that recognizer sees (an independent judge then sees one face for every key); these can't.
        ``latent_realism`` keeps ``F(z, c)`` where real identities live, the only place a generator
        trained on real identities renders a face that looks like the vector says."""
        m, w = self.model, self.losses
        assert m is not None
        terms: dict[str, Tensor] = {}
        if w.latent_anonymity:
            terms["latent_anonymity"] = w.latent_anonymity * anonymity_loss(z_a, z, w.margin)
        if w.latent_two_key and z_b is not None:
            terms["latent_two_key"] = w.latent_two_key * anonymity_loss(z_a, z_b, w.margin)
        if w.latent_batch_diversity:
            # The batch's faces under one fresh key (one more flow pass; the training keys differ per sample).
            z_same, _ = m.flow(z, self._training_keys(1, z.device).expand(z.shape[0], -1))
            terms["latent_batch_diversity"] = w.latent_batch_diversity * batch_diversity_loss(
                z_same, w.diversity_threshold
            )
        if w.latent_wrong_key:
            wrong = self._training_keys(z.shape[0], z.device)
            z_wrong = m.flow.inverse(z_a, wrong)
            terms["latent_wrong_key"] = w.latent_wrong_key * anonymity_loss(z_wrong, z, w.margin)
        queue = None
        if w.density or w.latent_realism:
            # in the joint phase the synthetic-identity term has queued this batch already
            queued = self.phase == "joint" and w.synthetic_identity
            queue = self._identity_queue if queued else self._remember_identities(z)
        if w.density:
            # The whole queue, not just this batch: a density in identity space needs many samples per step.
            noisy = queue + w.density_noise * torch.randn_like(queue)
            terms["density"] = w.density * m.flow.base_nll(noisy) / z.shape[1]
        if w.latent_realism:
            cos = F.normalize(z_a, dim=1) @ queue.T
            nearest = cos.topk(min(w.realism_neighbours, queue.shape[0]), dim=1).values.mean(dim=1)
            terms["latent_realism"] = w.latent_realism * F.relu(w.realism_threshold - nearest).mean()
        return terms

    def _replayed_compensator_loss(self, x: Tensor) -> Tensor:
        """``|C(E_id(x_anon)) - z_anon|^2`` on a batch drawn from the replay buffer. Until the buffer holds
        ``replay_size`` pairs each step adds its faces under fresh keys; then the steps only fit ``C``, which
        costs milliseconds. Everything but ``C`` is frozen, so the pairs stay valid."""
        m, w = self.model, self.losses
        assert m is not None and m.compensator is not None
        buffer = getattr(self, "_replay", None)  # not saved: a resumed fit refills it
        if buffer is None or buffer.shape[0] < w.replay_size:
            with torch.no_grad():
                z_anon, _ = m.flow(m.identity_encoder(x), self._training_keys(x.shape[0], x.device))
                stored = as_stored(m.render(z_anon, m.attribute_encoder(x)))
                pair = torch.cat((m.identity_encoder(stored), z_anon), dim=1)
            buffer = pair if buffer is None else torch.cat((buffer, pair))[: w.replay_size]
            self._replay = buffer
        drawn = buffer[torch.randint(0, buffer.shape[0], (w.replay_batch,), device=buffer.device)]
        embedding, target = drawn.split(m.identity_encoder.embedding_dim, dim=1)
        return F.mse_loss(m.compensator(embedding), target) * target.shape[1]

    def _remember_identities(self, z: Tensor) -> Tensor:
        """A first-in-first-out queue of real identity embeddings (this batch's included), not saved."""
        queue = getattr(self, "_identity_queue", None)
        fresh = F.normalize(z.detach(), dim=1)
        queue = fresh if queue is None or queue.shape[1] != z.shape[1] else torch.cat((fresh, queue))
        self._identity_queue = queue[: self.losses.realism_queue_size]
        return self._identity_queue

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x = batch["image"]
        if self.phase == "recognizer":
            assert self.arcface_head is not None
            embeddings = self.identity_encoder(x)
            logits = self.arcface_head(embeddings, batch["identity"])
            loss = F.cross_entropy(logits, batch["identity"])
            self.log("train/loss", loss, prog_bar=True)
            return loss
        terms: dict[str, Tensor] = {}
        if self.phase == "compensator":
            terms["latent_recovery"] = self.losses.latent_recovery * self._replayed_compensator_loss(x)
        encoded = None
        fakes: list[Tensor] | None = [] if self.discriminator is not None else None
        reference_is_render = self.losses.adversarial_reference == "reconstruction"
        if self.phase in ("disentangle", "joint"):
            reconstruction, encoded = self._reconstruction_terms(x, batch.get("swap_image"), fakes)
            terms.update(reconstruction)
        if self.phase in ("flow", "joint"):
            if encoded is None and fakes is not None and reference_is_render:
                encoded = self._encode_and_render(x)  # the critic's real class; the flow terms reuse it
            terms.update(self._flow_terms(x, encoded, fakes))
        if fakes:
            real = encoded.render if reference_is_render and encoded is not None else x
            terms["discriminator"] = self._discriminator_loss(real, fakes)
        loss = torch.stack(list(terms.values())).sum()
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=True, on_epoch=False)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    # -- validation ---
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        """Identity verification (recognizer), reconstruction, and with a flow the keyed metrics, judged
        by the model's own identity encoder (``ifadit.metrics`` judges with an independent recognizer)."""
        x = batch["image"]
        if self.phase == "recognizer":
            self._log_verification(self.identity_encoder(x), batch["identity"], stage)
            return
        m = self.model
        assert m is not None
        z = m.identity_encoder(x)
        rendered = None
        if self.phase != "disentangle":
            # the suite renders the reconstruction, key A's anonymization and its recovery: reused below
            rendered = self._suite(stage).update(m, x, VALIDATION_KEYS[0], labels=batch.get("identity"))
        x_hat = m.reconstruct(x) if rendered is None else rendered["reconstruction"]
        metrics = {
            "recon_l1": F.l1_loss(x_hat, x),
            "recon_psnr": kornia.metrics.psnr((x_hat + 1) / 2, (x + 1) / 2, 1.0),
            "recon_id_cos": F.cosine_similarity(m.identity_encoder(x_hat), z).mean(),
        }
        if self.phase == "disentangle":
            metrics["score"] = metrics["recon_l1"]
        else:
            metrics.update(self._keyed_metrics(x, z, rendered["anonymized"][:, 0], rendered["recovered"]))
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, sync_dist=True)

    def _suite(self, stage: str) -> AnonymizationSuite:
        """The shared metrics suite, judged by the model's own identity encoder (``ifadit evaluate`` and
        ``ifadit score`` judge with independent recognizers). A plain dict keeps it out of checkpoints."""
        suites = self.__dict__.setdefault("_suites", {})
        if stage not in suites:
            assert self.model is not None
            own = EncoderRecognizer(self.model.identity_encoder, threshold=SUITE_OWN_THRESHOLD)
            suites[stage] = AnonymizationSuite({"own": own}).to(self.device)
        return suites[stage]

    def _log_suite(self, stage: str) -> None:
        suite = self.__dict__.get("_suites", {}).get(stage)
        if suite is not None and suite.updated:
            values = {f"{stage}/suite/{k}": float(v) for k, v in suite.compute().items() if v is not None}
            self.log_dict(values, sync_dist=False)  # compute() has already synced the states across ranks
            suite.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_suite("val")

    def on_test_epoch_end(self) -> None:
        self._log_suite("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Anonymize and recover with the key in ``predict_key_file`` (read here, never stored)."""
        m = self.model
        if m is None or not m.keyed:
            raise ValueError("predict needs a trained flow: run it on a flow-phase checkpoint")
        if not self.hparams.get("predict_key_file"):
            raise ValueError("predict needs --model.predict_key_file KEYFILE (written by 'ifadit keygen')")
        if self._predict_secret is None:
            self._predict_secret = SecretKey.load(self.hparams.predict_key_file)
        x = batch["image"]
        cond = m.key_scheme(self._predict_secret, batch_size=x.shape[0]).to(x.device)
        anonymized, recovered = m.anonymize_and_recover(x, cond)
        return {"image": x, "anonymized": anonymized.image, "recovered": recovered.image}

    def _keyed_metrics(
        self, x: Tensor, z: Tensor, anonymized: Tensor, recovered: Tensor
    ) -> dict[str, Tensor]:
        """``anonymized``, ``recovered``: ``x`` under validation key A and its recovery (the suite's)."""
        m = self.model
        assert m is not None
        n = x.shape[0]
        cond_a = m.key_scheme(VALIDATION_KEYS[0], batch_size=n).to(x.device)
        cond_b = m.key_scheme(VALIDATION_KEYS[1], batch_size=n).to(x.device)
        anon_b = m.anonymize(x, cond_b)
        wrong = m.recover(anonymized, cond_b)
        cos = lambda img: F.cosine_similarity(m.identity_encoder(img), z).mean()  # noqa: E731
        latent_error = (m.flow.inverse(m.flow(z, cond_a)[0], cond_a) - z).abs().max()
        metrics = {
            "anon_id_cos": cos(anonymized),
            "recovered_id_cos": cos(recovered),
            "wrong_key_id_cos": cos(wrong.image),
            "two_key_id_cos": F.cosine_similarity(
                m.identity_encoder(anonymized), m.identity_encoder(anon_b.image)
            ).mean(),
            "recovered_psnr": kornia.metrics.psnr((recovered + 1) / 2, (x + 1) / 2, 1.0),
            "latent_roundtrip_error": latent_error,
        }
        # one number to pick the best checkpoint by: recovery high, everything else low
        metrics["score"] = (
            metrics["anon_id_cos"]
            + metrics["wrong_key_id_cos"]
            + metrics["two_key_id_cos"]
            - metrics["recovered_id_cos"]
        )
        return metrics

    def _log_verification(self, embeddings: Tensor, labels: Tensor, stage: str) -> None:
        cos = embeddings @ embeddings.T
        same = labels[:, None] == labels[None, :]
        off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        same_pairs, diff_pairs = cos[same & off_diagonal], cos[~same]
        if len(same_pairs) and len(diff_pairs):
            gap = same_pairs.mean() - diff_pairs.mean()
            self.log_dict(
                {
                    f"{stage}/same_id_cos": same_pairs.mean(),
                    f"{stage}/diff_id_cos": diff_pairs.mean(),
                    f"{stage}/score": -gap,
                },
                sync_dist=True,
            )

    # -- samples ---
    @torch.no_grad()
    def sample_grid(self, images: Tensor) -> Tensor | None:
        """Columns: original | anonymized (key A) | anonymized (key B) | recovered | wrong-key recovery;
        phase 1 shows original | reconstruction. Returns a [0, 1] image (3, H, W)."""
        import torchvision

        if self.model is None:
            return None
        images = images[: self.val_sample_count]
        n = images.shape[0]
        was_training = self.training
        self.eval()
        try:
            m = self.model
            columns = [images]
            if self.phase == "disentangle":
                columns.append(m.reconstruct(images))
            else:
                cond_a = m.key_scheme(VALIDATION_KEYS[0], batch_size=n).to(images.device)
                cond_b = m.key_scheme(VALIDATION_KEYS[1], batch_size=n).to(images.device)
                anon_a, rec = m.anonymize_and_recover(images, cond_a)
                columns += [
                    anon_a.image,
                    m.anonymize(images, cond_b).image,
                    rec.image,
                    m.recover(anon_a.image, cond_b).image,
                ]
        finally:
            self.train(was_training)
        rows = torch.stack(columns, dim=1).flatten(0, 1)
        return torchvision.utils.make_grid((rows.clamp(-1, 1) + 1) / 2, nrow=len(columns), padding=2)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ifadit_phase"] = self.phase


def _detached_state(module: nn.Module) -> dict[str, Tensor]:
    return {name: tensor.detach() for name, tensor in module.state_dict(keep_vars=True).items()}


def _canonical(key: str) -> str:
    """A checkpoint key with its phase-specific container removed (``model.``, or ``recognizer.`` for the
    identity encoder trained in the recognizer phase)."""
    if key.startswith("recognizer."):
        return "identity_encoder." + key[len("recognizer.") :]
    return key[len("model.") :] if key.startswith("model.") else key
