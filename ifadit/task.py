"""The Lightning task: one LightningModule that wires the components, dispatches each phase's step to
``ifadit.training`` and owns optimisers, logging, validation and sample grids.

Phases (``phase``):

- ``recognizer``  — the identity encoder learns identities with an ArcFace margin head (the stand-in for a
  pretrained ArcFace where none is available): :mod:`ifadit.training.recognizer`;
- ``render``      — on SynthFaces, the generator and a parameter mapper learn to draw faces from their
  parameters (the stand-in for a pretrained StyleGAN2): :mod:`ifadit.training.render`;
- ``disentangle`` — phase 1: attribute encoder + mapper (+ the generator when it is not pretrained) learn to
  reconstruct ``x`` from ``(E_id(x), E_attr(x))``: :mod:`ifadit.training.disentangle`;
- ``flow``        — phase 2: flow + compensator (+ a trainable key scheme), everything else frozen:
  :mod:`ifadit.training.flow`;
- ``joint``       — phase-1 and phase-2 losses on all trainable parts at once: the single-phase ablation;
- ``compensator`` — after phase 2, the compensator alone on the finished flow:
  :mod:`ifadit.training.compensator`.

Each phase loads what it needs from the previous phase's checkpoint (``init_from``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import kornia
import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn

from ifadit.anonymizer import IFADIT
from ifadit.flows import KeyedFlow
from ifadit.keys import KeyScheme, SecretKey
from ifadit.metrics import AnonymizationSuite
from ifadit.nets import AttributeEncoder, Discriminator, Generator, IdentityEncoder
from ifadit.nets.timm_encoders import ArcFaceHead
from ifadit.recognizers import EncoderRecognizer
from ifadit.training import (
    VALIDATION_KEYS,
    Adversary,
    LossWeights,
    OptimizerConfig,
    ReplayBuffer,
    build_model,
    encoding_each_image_once,
    flow_terms,
    keyed_summary,
    latent_targets,
    load_components,
    recognizer_loss,
    reconstruction_terms,
    render_terms,
    sample_columns,
    training_identities,
    training_keys,
    verification_metrics,
)

Phase = Literal["recognizer", "render", "disentangle", "flow", "joint", "compensator"]
PHASES: tuple[str, ...] = ("recognizer", "render", "disentangle", "flow", "joint", "compensator")

# Verification threshold of the model's own encoder in the logged suite (re-identification rates): a
# cosine of 0.5 lies between the same-identity (~0.7) and different-identity (~0) means of the quickstart's.
SUITE_OWN_THRESHOLD = 0.5


class IFADITTask(L.LightningModule):
    """Lightning glue around :class:`ifadit.anonymizer.IFADIT`; no network code and no loss lives here.

    Args:
        identity_encoder: ``E_id``, the face recognizer whose embedding is the identity (trained in the
            recognizer phase, frozen after).
        attribute_encoder: ``E_attr``, everything but the identity, as W+ styles.
        mapper: ``M``, identity and attributes to the generator's styles.
        generator: ``G``, renders the styles (a StyleGAN2).
        flow: ``F``, the key-conditioned normalizing flow on the identity vector.
        key_scheme: ``K``, a secret key to the flow's condition.
        compensator: ``C``, maps the identity read off an anonymized face back to the flow's output.
        parameter_mapper: ``P``, SynthFaces parameters to W+ (trained with the generator in the render
            phase; frozen in phase 1, where its codes are the ``latent_target``).
        discriminator: the critic of the adversarial terms (only kept when one is switched on).
        phase: which parts train and with which losses (see the module doc).
        init_from: a previous phase's checkpoint; every tensor whose name exists here is taken.
        train_generator: phase 1 and joint also train the generator (False: a pretrained, frozen one).
        key_mapping_from_generator: the key scheme maps keys through the generator's mapping network
            (the paper's key mapper).
        num_identities: identity classes of the recognizer phase (default: the datamodule's).
        arcface_scale: the ArcFace head's logit scale (recognizer phase).
        arcface_margin: the ArcFace head's additive angular margin (recognizer phase).
        losses: every loss weight (0 switches a term off).
        optimizer: Adam's settings and the learning-rate schedule.
        val_sample_count: faces per sample grid.
        predict_key_file: the key file ``predict`` anonymizes with (read there, never stored).
        training_keys: ``per_sample`` draws a fresh key per face, ``per_batch`` one per step (the official
            code's choice).
    """

    def __init__(
        self,
        identity_encoder: IdentityEncoder | None = None,
        attribute_encoder: AttributeEncoder | None = None,
        mapper: nn.Module | None = None,
        generator: Generator | None = None,
        flow: KeyedFlow | None = None,
        key_scheme: KeyScheme | None = None,
        compensator: nn.Module | None = None,
        discriminator: Discriminator | None = None,
        parameter_mapper: nn.Module | None = None,
        phase: Phase = "flow",
        init_from: str | None = None,
        train_generator: bool = True,
        key_mapping_from_generator: bool = False,
        num_identities: int | None = None,
        arcface_scale: float = 32.0,
        arcface_margin: float = 0.3,
        losses: LossWeights = LossWeights(),  # noqa: B008 - a frozen default, copied below
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
        val_sample_count: int = 8,
        predict_key_file: str | None = None,
        training_keys: Literal["per_sample", "per_batch"] = "per_sample",
    ) -> None:
        super().__init__()
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        if training_keys not in ("per_sample", "per_batch"):
            raise ValueError(f"training_keys must be 'per_sample' or 'per_batch', got {training_keys!r}")
        components = ["identity_encoder", "attribute_encoder", "mapper", "generator", "flow", "key_scheme"]
        self.save_hyperparameters(
            ignore=[*components, "compensator", "discriminator", "parameter_mapper", "losses", "optimizer"]
        )
        self.phase = phase
        self.losses = LossWeights(**asdict(losses))
        self.losses.check()
        if phase == "compensator" and not self.losses.latent_recovery:
            raise ValueError("phase 'compensator' fits losses.latent_recovery, which is 0: nothing trains")
        self.optim = OptimizerConfig(**asdict(optimizer))
        self.hparams["losses"] = asdict(self.losses)
        self.hparams["optimizer"] = asdict(self.optim)
        self.train_generator = train_generator
        self.val_sample_count = val_sample_count
        self.arcface_head: ArcFaceHead | None = None
        self.model: IFADIT | None = None
        self.recognizer: IdentityEncoder | None = None
        self.discriminator: Discriminator | None = None
        self._predict_secret: SecretKey | None = None
        self._replay = ReplayBuffer(self.losses.replay_size, self.losses.replay_batch)
        self.parameter_mapper = parameter_mapper
        self.generator: Generator | None = None  # the render phase's (inside ``model`` in the others)
        if self.losses.latent_target and phase in ("disentangle", "joint") and parameter_mapper is None:
            raise ValueError("losses.latent_target needs model.parameter_mapper (a trained renderer's)")
        if phase != "render" and identity_encoder is None:
            raise ValueError(f"phase {phase!r} needs the components: identity_encoder")
        if phase == "render":
            if generator is None or parameter_mapper is None:
                raise ValueError("phase 'render' needs the components: generator, parameter_mapper")
            self.generator = generator
            self.discriminator = self._checked_discriminator(discriminator)
        elif phase == "recognizer":
            self.recognizer = identity_encoder
            if num_identities is not None:
                self.arcface_head = ArcFaceHead(
                    identity_encoder.embedding_dim, num_identities, scale=arcface_scale, margin=arcface_margin
                )
        else:
            parts = (identity_encoder, attribute_encoder, mapper, generator, flow, key_scheme, compensator)
            self.model = build_model(phase, *parts, key_mapping_from_generator=key_mapping_from_generator)
            self.discriminator = self._checked_discriminator(discriminator)
        if init_from:
            self.load_components(init_from)
        self._configure_trainable()
        self.train()  # Lightning never calls train() before fitting: frozen parts must start in eval mode

    def _checked_discriminator(self, discriminator: Discriminator | None) -> Discriminator | None:
        """The discriminator when an adversarial term of this phase uses it (else it is not kept)."""
        w = self.losses
        adversarial = w.adversarial if self.phase in ("render", "disentangle", "joint") else 0.0
        anonymized = w.anonymized_adversarial if self.phase in ("flow", "joint") else 0.0
        if not (adversarial or anonymized):
            return None
        if discriminator is None:
            raise ValueError(
                f"losses.adversarial / anonymized_adversarial in phase {self.phase!r} "
                "need model.discriminator"
            )
        if discriminator.size != self.rendering_generator.size:
            raise ValueError(
                f"the discriminator takes {discriminator.size} px images, the generator renders "
                f"{self.rendering_generator.size} px"
            )
        return discriminator

    @property
    def identity_encoder(self) -> IdentityEncoder | None:
        return self.recognizer if self.model is None else self.model.identity_encoder

    @property
    def rendering_generator(self) -> Generator | None:
        """The generator of this phase, wherever it lives (None in the recognizer phase)."""
        return self.generator if self.model is None else self.model.generator

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
        """A flow fitted to the training identities (``identities_to_fit``) is fitted before its first step;
        a restored or ``init_from`` flow that is already fitted keeps its statistics."""
        flow = self.model.flow if self.model is not None else None
        if flow is None or not flow.identities_to_fit:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise ValueError(f"fitting the {type(flow).__name__} to training identities needs a datamodule")
        identities = training_identities(self.model, datamodule.train_dataloader(), flow.identities_to_fit)
        flow.fit_identities(identities)

    def trainable_parts(self) -> list[nn.Module]:
        """The components this phase trains; every other one is frozen and stays in eval mode."""
        m = self.model
        critic = [self.discriminator] if self.discriminator is not None else []
        if self.phase == "render":
            return [self.parameter_mapper, self.generator, *critic]
        if m is None:
            return [self.identity_encoder, *([self.arcface_head] if self.arcface_head is not None else [])]
        generator = [m.generator] if self.train_generator else []
        if self.phase == "disentangle":
            return [m.attribute_encoder, m.mapper, *generator, *critic]
        if self.phase == "compensator":
            return [m.compensator]
        keyed = [p for p in (m.flow, m.compensator) if p is not None]
        if self.phase == "flow":
            return [*keyed, *critic]
        return [m.attribute_encoder, m.mapper, *generator, *keyed, *critic]

    def _configure_trainable(self) -> None:
        scheme = self.model.key_scheme if self.model is not None else None
        scheme_flags = {p: p.requires_grad for p in scheme.parameters()} if scheme is not None else {}
        self.requires_grad_(False)
        for part in self.trainable_parts():
            part.requires_grad_(True)
        # The key scheme keeps its own choice (a frozen random mapping by default), trained with the flow.
        for param, flag in scheme_flags.items():
            param.requires_grad_(flag and self.phase in ("flow", "joint"))

    def train(self, mode: bool = True) -> IFADITTask:
        """Trainable parts in ``mode``; every other module in eval mode (frozen batch norms must not
        drift). The flag is set module by module: a recursive ``train(False)`` on a container such as
        ``model`` would switch the trainable parts it holds to eval as well."""
        super().train(mode)
        if mode:
            parts = self.trainable_parts()
            scheme = self.model.key_scheme if self.model is not None else None
            if scheme is not None and any(p.requires_grad for p in scheme.parameters()):
                parts.append(scheme)
            trainable = {id(module) for part in parts for module in part.modules()}
            for module in self.modules():
                if module is not self and id(module) not in trainable:
                    module.training = False
        return self

    def load_components(self, path: str | Path) -> None:
        """Take the previous phase's weights from ``path`` (see :func:`ifadit.training.load_components`)."""
        load_components(self, path, self.phase)

    def configure_optimizers(self) -> torch.optim.Optimizer | OptimizerLRSchedulerConfig:
        rendering = self.rendering_generator
        generator = {id(p) for p in rendering.parameters()} if rendering is not None else set()
        critic = {id(p) for p in self.discriminator.parameters()} if self.discriminator is not None else set()
        params = [p for p in self.parameters() if p.requires_grad]
        generator_lr = self.optim.generator_lr or self.optim.lr
        groups = [
            {"params": [p for p in params if id(p) not in generator | critic], "lr": self.optim.lr},
            {"params": [p for p in params if id(p) in generator], "lr": generator_lr},
            {
                "params": [p for p in params if id(p) in critic],
                "lr": self.optim.discriminator_lr or generator_lr,
            },
        ]
        # The fused kernel updates every tensor in one pass: the same Adam, 1.6x faster a step than the
        # default per-tensor loop on the CPU for phase 1's 7.3M parameters (benchmarks/training_speed.py).
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
        optimizer = torch.optim.Adam(
            [g for g in groups if g["params"]],
            betas=self.optim.betas,
            weight_decay=self.optim.weight_decay,
            fused=fused or None,
        )
        if self.optim.schedule == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- training ---
    def sample_keys(self, batch: int) -> Tensor:
        """Fresh random key conditions for one step (``training_keys`` decides one per face or per step)."""
        assert self.model is not None and self.model.key_scheme is not None
        per_batch = self.hparams.get("training_keys", "per_sample") == "per_batch"
        return training_keys(self.model.key_scheme, batch, self.device, per_batch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x = batch["image"]
        if self.phase == "recognizer":
            assert self.arcface_head is not None
            loss = recognizer_loss(self.identity_encoder, self.arcface_head, x, batch["identity"])
            self.log("train/loss", loss, prog_bar=True)
            return loss
        m, w = self.model, self.losses
        keys = self.sample_keys
        adversary = None
        if self.discriminator is not None:
            adversary = Adversary(self.discriminator, w.r1, w.r1_interval, self.global_step)
        terms: dict[str, Tensor] = {}
        encoded = None
        if self.phase == "render":
            parts = (self.parameter_mapper, self.generator)
            terms.update(render_terms(*parts, w, x, batch["parameters"], adversary)[0])
        if self.phase == "compensator":
            terms["latent_recovery"] = w.latent_recovery * self._replay.loss(m, x, keys)
        if self.phase in ("disentangle", "joint"):
            reconstruction, encoded = reconstruction_terms(
                m, w, x, batch.get("swap_image"), adversary, latent_targets(self.parameter_mapper, w, batch)
            )
            terms.update(reconstruction)
        if self.phase in ("flow", "joint"):
            terms.update(flow_terms(m, w, x, keys, encoded, adversary, frozen_front=self.phase == "flow"))
        if adversary is not None and adversary.fakes:
            terms["discriminator"] = adversary.critic_loss(x)
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
        """Identity verification (recognizer phase); reconstruction; with a flow, the shared metrics suite
        under validation key A, judged by the model's own identity encoder (``ifadit evaluate`` judges with
        independent recognizers). Each image is encoded once."""
        x = batch["image"]
        if self.phase == "recognizer":
            metrics = verification_metrics(self.identity_encoder(x), batch["identity"])
            self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, sync_dist=True)
            return
        if self.phase == "render":
            x_hat, metrics = self.generator(self.parameter_mapper(batch["parameters"])), {}
        else:
            x_hat, metrics = self._reconstruct_and_score(batch, stage)
        metrics["recon_l1"] = F.l1_loss(x_hat, x)
        metrics["recon_psnr"] = kornia.metrics.psnr((x_hat + 1) / 2, (x + 1) / 2, 1.0)
        if self.phase in ("render", "disentangle"):
            metrics["score"] = metrics["recon_l1"]
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, sync_dist=True)

    def _reconstruct_and_score(self, batch: dict[str, Tensor], stage: str) -> tuple[Tensor, dict]:
        """The reconstruction of the batch, and the suite's update with a flow."""
        m, x = self.model, batch["image"]
        assert m is not None
        with encoding_each_image_once(m.identity_encoder, m.attribute_encoder):
            if self.phase == "disentangle":
                x_hat = m.reconstruct(x)
                identity_cos = F.cosine_similarity(m.identity_encoder(x_hat), m.identity_encoder(x)).mean()
                metrics = {"recon_id_cos": identity_cos}
            else:
                suite = self._suite(stage)
                rendered = suite.update(m, x, VALIDATION_KEYS[0], labels=batch.get("identity"))
                x_hat, metrics = rendered["reconstruction"], {}
        return x_hat, metrics

    def _suite(self, stage: str) -> AnonymizationSuite:
        """The shared metrics suite, judged by the model's own identity encoder. A plain dict keeps it out
        of checkpoints."""
        suites = self.__dict__.setdefault("_suites", {})
        if stage not in suites:
            assert self.model is not None
            own = EncoderRecognizer(self.model.identity_encoder, threshold=SUITE_OWN_THRESHOLD)
            suites[stage] = AnonymizationSuite({"own": own}).to(self.device)
        return suites[stage]

    def _log_suite(self, stage: str) -> None:
        suite = self.__dict__.get("_suites", {}).get(stage)
        if suite is not None and suite.updated:
            results = suite.compute()  # compute() has already synced the states across ranks
            values = {f"{stage}/suite/{k}": float(v) for k, v in results.items() if v is not None}
            values.update({f"{stage}/{k}": float(v) for k, v in keyed_summary(results).items()})
            self.log_dict(values, sync_dist=False)
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

    # -- samples ---
    @torch.no_grad()
    def sample_columns(self, images: Tensor, parameters: Tensor | None = None) -> dict[str, Tensor] | None:
        """The sample grid's columns by label (:func:`ifadit.training.sample_columns`), in eval mode."""
        was_training = self.training
        self.eval()
        try:
            renderer = (self.parameter_mapper, self.generator) if self.phase == "render" else None
            images = images[: self.val_sample_count]
            return sample_columns(self.phase, self.model, images, parameters, renderer)
        finally:
            self.train(was_training)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ifadit_phase"] = self.phase
