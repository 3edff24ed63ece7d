"""``AnonymizationSuite``: one object that drives an :class:`~ifadit.anonymizer.IFADIT` model with a key and
feeds every metric of :mod:`ifadit.metrics`, judged by one or more recognizers.

Per batch it anonymizes the faces with the user's key (and with K-1 public keys for diversity), stores them
as 8-bit images would hold them, recovers the stored faces with that key, with a wrong key and with the key
one bit away, reconstructs the originals without the flow, and scores

- anonymity: identity cosine and re-identification rate original vs anonymized, top-1 retrieval of the
  original identity from the gallery of originals (per recognizer);
- reversibility: the flow's latent round trip (exact), PSNR / SSIM / LPIPS and identity cosine and re-id
  rate of the image-level recovery, and the reconstruction ceiling the recovery can reach;
- security: the same for wrong-key and one-bit-off recoveries and for the anonymized image itself, and key
  indistinguishability: AUROC of the flow density (and of the distance to the identity sphere) of
  correct-key vs wrong-key recovered latents (0.5 ideal);
- diversity: mean pairwise identity cosine among the K anonymizations of one face, pixel / LPIPS diversity;
- quality: FID of anonymized vs original images with an injected feature extractor;
- utility: MTCNN detection rate on anonymized images, bbox IoU and landmark error to the original's;
- optionally, attacks by someone who has the model but not the key (:mod:`ifadit.metrics.attacks`): a
  learned inversion, a search over N wrong keys, and linkability of anonymized faces.

Wrong keys and the diversity keys are public and fixed (derived from labels, like the task's validation
keys), so two evaluations of one model with one user key give the same numbers. No key is ever stored or
reported here, only what the metrics compute.

The suite holds its recognizers, detector and perceptual distance as plain attributes, not sub-modules
(``suite.to(device)`` still moves them). A LightningModule should keep the suite itself in a plain dict too,
so that nothing of it (FID's feature network included) reaches the module's state dict and checkpoints.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance

from ifadit.anonymizer import IFADIT
from ifadit.keys import SecretKey
from ifadit.keys.secret import SECRET_BYTES
from ifadit.metrics.attacks import ModelAttacks
from ifadit.metrics.detection import Detections, DetectionUtility
from ifadit.metrics.identity import IdentityRetrieval, IdentitySimilarity, PairwiseIdentityDiversity
from ifadit.metrics.image import Distance, MeanDistance, PairwiseDistance, psnr_metric, ssim_metric
from ifadit.metrics.latent import KeyIndistinguishability, LatentRoundTripError, flow_density, sphere_score
from ifadit.nets.image import as_stored
from ifadit.recognizers.base import Recognizer

Results = dict[str, float | int | None]


def public_key(label: str) -> SecretKey:
    """A fixed, public key for metrics (a wrong key, a second key for diversity). Not a secret: anyone can
    derive it from this source; it only has to differ from the user's key."""
    return SecretKey(hashlib.sha256(f"ifadit/metrics/public-key/{label}".encode()).digest())


class RecognizerFeatures(nn.Module):
    """A recognizer's embeddings as FID features (for ``FrechetInceptionDistance(feature=...)``), where the
    Inception weights cannot be had. Not comparable with published (Inception) FIDs."""

    def __init__(self, recognizer: Recognizer) -> None:
        super().__init__()
        self.recognizer = recognizer
        self.num_features = int(recognizer.embedding_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.recognizer(images).embeddings


class _Features(nn.Module):
    """FID's feature module when the features are a judge's embeddings the suite has already computed:
    the "images" handed to FID are those embeddings (no second pass through the judge)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def _to_python(value: Tensor | float | int) -> float | int | None:
    if isinstance(value, Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class AnonymizationSuite(nn.Module):
    """Every anonymization metric for one model and key, per recognizer.

    Args:
        recognizers: judges by name (or one recognizer, named ``judge``); each must have a threshold.
        num_anonymizations: K >= 1 keys per face for the diversity metrics (the user's key + K-1 public ones).
        detector: a module mapping images to :class:`~ifadit.metrics.detection.Detections` (e.g.
            :class:`~ifadit.metrics.detection.MTCNNDetector`); None skips the utility metrics.
        fid_features: the feature extractor for FID (None: no FID).
        perceptual: a per-image distance such as LPIPS (:func:`ifadit.metrics.image.default_lpips`); None
            reports LPIPS as n/a.
        keep_samples: how many faces of the first batch to keep in :attr:`samples` (for a sample grid).
        attacks: the model-holder attacks (:class:`~ifadit.metrics.attacks.ModelAttacks`, built for the
            same recognizers); None skips them (their inverter is trained for one model, so only a one-model
            evaluation gives them).
    """

    def __init__(
        self,
        recognizers: Mapping[str, Recognizer] | Recognizer,
        num_anonymizations: int = 2,
        detector: Callable[[Tensor], Detections] | None = None,
        fid_features: nn.Module | None = None,
        perceptual: Distance | None = None,
        keep_samples: int = 0,
        attacks: ModelAttacks | None = None,
    ) -> None:
        super().__init__()
        if isinstance(recognizers, Recognizer):
            recognizers = {"judge": recognizers}
        if not recognizers:
            raise ValueError("the suite needs at least one recognizer to judge identities")
        if num_anonymizations < 1:
            raise ValueError(f"num_anonymizations must be >= 1, got {num_anonymizations}")
        for name in recognizers:
            if not name or "." in name or "/" in name:
                raise ValueError(f"recognizer name {name!r} must be non-empty, without '.' or '/'")
        # Plain attributes (see the module doc): never sub-modules, never in a state dict.
        self.__dict__["recognizers"] = dict(recognizers)
        self.__dict__["detector"] = detector
        self.__dict__["perceptual"] = perceptual
        self.num_anonymizations = num_anonymizations
        self.keep_samples = keep_samples
        self.samples: dict[str, Tensor] = {}
        self._seen = 0
        metrics: dict[str, Metric] = {}
        for name, recognizer in self.recognizers.items():
            rule = recognizer.rule  # a clear error now if a recognizer has no threshold
            metrics[f"anonymity/{name}"] = IdentitySimilarity(rule)
            metrics[f"anonymity/{name}/retrieval"] = IdentityRetrieval(rule)
            metrics[f"reversibility/{name}"] = IdentitySimilarity(rule)
            metrics[f"reversibility/{name}/reconstruction"] = IdentitySimilarity(rule)
            metrics[f"security/wrong_key/{name}"] = IdentitySimilarity(rule)
            metrics[f"security/one_bit_key/{name}"] = IdentitySimilarity(rule)
            if num_anonymizations > 1:
                metrics[f"diversity/{name}"] = PairwiseIdentityDiversity(rule)
        metrics["reversibility/latent"] = LatentRoundTripError()
        for group in ("reversibility", "security/wrong_key", "security/one_bit_key", "security/no_key"):
            metrics[f"{group}/psnr"] = psnr_metric()
            metrics[f"{group}/ssim"] = ssim_metric()
            if perceptual is not None:
                metrics[f"{group}/lpips"] = MeanDistance(perceptual)
        metrics["security/key_auc_density"] = KeyIndistinguishability()
        metrics["security/key_auc_sphere"] = KeyIndistinguishability()
        if num_anonymizations > 1:
            metrics["diversity/pixel"] = PairwiseDistance()
            if perceptual is not None:
                metrics["diversity/lpips"] = PairwiseDistance(perceptual)
        # FID on a judge's embeddings reuses the ones computed for the identity metrics.
        self._fid_judge: str | None = None
        if isinstance(fid_features, RecognizerFeatures):
            self._fid_judge = next(
                (n for n, r in self.recognizers.items() if r is fid_features.recognizer), None
            )
        if fid_features is not None:
            feature = _Features(fid_features.num_features) if self._fid_judge else fid_features
            metrics["quality/fid"] = FrechetInceptionDistance(feature=feature)
        if detector is not None:
            metrics["utility"] = DetectionUtility()
        self.metrics = nn.ModuleDict(metrics)
        if attacks is not None and set(attacks.judges) != set(self.recognizers):
            raise ValueError("the attacks must be built for the suite's recognizers")
        self.attacks = attacks

    def _all_metrics(self) -> dict[str, Metric]:
        extra = {} if self.attacks is None else {f"attacks:{k}": m for k, m in self.attacks.metrics.items()}
        return {**self.metrics, **extra}

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> AnonymizationSuite:
        super()._apply(fn, recurse)
        for module in (*self.recognizers.values(), self.detector, self.perceptual):
            if isinstance(module, nn.Module):
                module._apply(fn, recurse)
        return self

    # -- accumulate ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(
        self,
        model: IFADIT,
        images: Tensor,
        secret: SecretKey,
        labels: Tensor | None = None,
        start: int | None = None,
    ) -> dict[str, Tensor]:
        """Score one batch (the model in eval mode). ``labels`` are identity ids for retrieval; without them
        each image is its own identity (retrieval then finds the exact source image). ``start`` is the
        index of the first image in the whole evaluation (each image's wrong key and flipped bit follow
        from it); by default the count continues from the previous batch (under DDP give ``labels``, or a
        ``start`` unique across ranks, or images on two ranks share indices). Returns the batch's images by
        variant (``original``, ``anonymized`` (B, K, ...), ``recovered``, ``wrong_key``, ``one_bit_key``,
        ``reconstruction``)."""
        if model.flow is None or model.key_scheme is None:
            raise ValueError("the suite needs a keyed model (a trained flow and key scheme)")
        x = images
        n = x.shape[0]
        device = x.device
        first = self._seen if start is None else start
        index = range(first, first + n)
        self._seen = first + n
        if labels is None:
            labels = torch.tensor(list(index), device=device)
        labels = labels.to(device)
        m, scheme, flow = model, model.key_scheme, model.flow
        cond = scheme(secret, batch_size=n, device=device)
        wrong_cond = scheme([public_key(f"wrong/{i}") for i in index], device=device)
        bits = 8 * SECRET_BYTES
        bit_cond = scheme([secret.with_bit_flipped(i % bits) for i in index], device=device)

        z = m.identity_encoder(x)
        attributes = m.attribute_encoder(x)
        z_anon, _ = flow(z, cond)
        # Every anonymized face is scored as its 8-bit file holds it, and recovered from that file: a user
        # never has the generator's floats, and some keys lose 0.1 of recovery to the rounding alone.
        anonymized = [as_stored(m.render(z_anon, attributes))]
        for k in range(1, self.num_anonymizations):
            other = scheme(public_key(f"other/{k}"), batch_size=n, device=device)
            anonymized.append(as_stored(m.render(flow(z, other)[0], attributes)))
        anon = anonymized[0]
        reconstruction = m.render(z, attributes)
        # Recovery from the stored image, as IFADIT.recover does, sharing the encoders across the three keys.
        flow_input = m.flow_input_from_image(anon)
        anon_attributes = m.attribute_encoder(anon)
        z_rec = flow.inverse(flow_input, cond)
        z_wrong = flow.inverse(flow_input, wrong_cond)
        z_bit = flow.inverse(flow_input, bit_cond)
        recovered = m.render(z_rec, anon_attributes)
        wrong = m.render(z_wrong, anon_attributes)
        one_bit = m.render(z_bit, anon_attributes)

        metrics = self.metrics
        every_judged: dict[str, dict[str, Any]] = {}
        metrics["reversibility/latent"].update(z, flow.inverse(z_anon, cond))
        for group, image in (
            ("reversibility", recovered),
            ("security/wrong_key", wrong),
            ("security/one_bit_key", one_bit),
            ("security/no_key", anon),
        ):
            for name in ("psnr", "ssim", "lpips"):
                key = f"{group}/{name}"
                if key in metrics:
                    metrics[key].update(image, x)
        metrics["security/key_auc_density"].update(
            flow_density(flow, z_rec, cond), flow_density(flow, z_wrong, wrong_cond)
        )
        metrics["security/key_auc_sphere"].update(sphere_score(z_rec), sphere_score(z_wrong))
        stack = torch.stack(anonymized, dim=1)
        for name in ("diversity/pixel", "diversity/lpips"):
            if name in metrics:
                metrics[name].update(stack)
        if "quality/fid" in metrics and self._fid_judge is None:
            metrics["quality/fid"].update(x, real=True)
            metrics["quality/fid"].update(anon, real=False)
        if "utility" in metrics:
            metrics["utility"].update(self.detector(x), self.detector(anon))

        for name, recognizer in self.recognizers.items():
            judged = {
                key: recognizer(image)
                for key, image in (
                    ("x", x), ("anon", anon), ("rec", recovered), ("wrong", wrong), ("bit", one_bit),
                    ("recon", reconstruction),
                )
            }
            ref = judged["x"]
            every_judged[name] = judged

            def pair(metric: str, probe: str, _ref=ref, _judged=judged) -> None:
                p = _judged[probe]
                metrics[metric].update(_ref.embeddings, p.embeddings, _ref.found, p.found)

            pair(f"anonymity/{name}", "anon")
            pair(f"reversibility/{name}", "rec")
            pair(f"reversibility/{name}/reconstruction", "recon")
            pair(f"security/wrong_key/{name}", "wrong")
            pair(f"security/one_bit_key/{name}", "bit")
            metrics[f"anonymity/{name}/retrieval"].update(
                judged["anon"].embeddings, ref.embeddings, labels, judged["anon"].found, ref.found
            )
            if name == self._fid_judge:
                metrics["quality/fid"].update(ref.embeddings, real=True)
                metrics["quality/fid"].update(judged["anon"].embeddings, real=False)
            if self.num_anonymizations > 1:
                others = [judged["anon"]] + [recognizer(image) for image in anonymized[1:]]
                metrics[f"diversity/{name}"].update(
                    torch.stack([o.embeddings for o in others], dim=1),
                    torch.stack([o.found for o in others], dim=1),
                )

        batch = {
            "original": x,
            "anonymized": stack,
            "recovered": recovered,
            "wrong_key": wrong,
            "one_bit_key": one_bit,
            "reconstruction": reconstruction,
        }
        if self.attacks is not None:
            batch |= self.attacks.update(
                m, self.recognizers, x, labels, index, z, attributes, anon, anon_attributes, flow_input,
                z_rec, every_judged,
            )
        if self.keep_samples and not self.samples:
            self.samples = {k: v[: self.keep_samples].detach().cpu() for k, v in batch.items()}
        return batch

    # -- results ------------------------------------------------------------------------------------------
    def compute(self) -> Results:
        """Flat ``group/.../name -> value`` (None: not computable or not configured, printed "n/a")."""
        results: Results = {}
        for name, metric in self.metrics.items():
            if name == "utility" and "quality/fid" not in self.metrics:
                results["quality/fid"] = None  # not configured
            if metric.update_count == 0:
                continue
            try:
                value: Any = metric.compute()
            except RuntimeError as exc:  # e.g. FID with fewer than two images
                warnings.warn(f"{name}: {exc}", stacklevel=2)
                value = float("nan")
            if isinstance(value, Mapping):
                for key, item in value.items():
                    results[f"{name}/{key}"] = _to_python(item)
            else:
                results[name] = _to_python(value)
            if self.perceptual is None and name.endswith(("/ssim", "diversity/pixel")):
                results[name.rsplit("/", 1)[0] + "/lpips"] = None  # not configured: "n/a" in its place
        if "quality/fid" not in self.metrics:
            results.setdefault("quality/fid", None)
        if self.attacks is not None:
            results.update({name: _to_python(value) for name, value in self.attacks.compute().items()})
            for name in self.recognizers:
                if f"security/learned_inversion/{name}/cos" in results:
                    results[f"security/learned_inversion/{name}/right_key"] = results.get(
                        f"reversibility/{name}/cos"
                    )
        return results

    def reset(self) -> None:
        for metric in self._all_metrics().values():
            metric.reset()
        self._seen = 0
        self.samples = {}

    def merge_state(self, other: AnonymizationSuite) -> None:
        """Add another suite's accumulated state (same configuration) to this one."""
        mine, theirs = self._all_metrics(), other._all_metrics()
        if set(theirs) != set(mine):
            raise ValueError("cannot merge suites with different metrics")
        for name, metric in mine.items():
            # merge_state leaves the update count alone, but a suite merged into a fresh one must compute,
            # and "mean"-reduced states (PSNR's data range) are averaged with it: count first, then merge.
            metric._update_count += theirs[name]._update_count
            metric.merge_state(theirs[name])
            # FrechetInceptionDistance learns its output dtype in update() only
            if hasattr(theirs[name], "orig_dtype") and not hasattr(metric, "orig_dtype"):
                metric.orig_dtype = theirs[name].orig_dtype
        self._seen = max(self._seen, other._seen)

    @property
    def updated(self) -> bool:
        return any(metric.update_count for metric in self._all_metrics().values())
