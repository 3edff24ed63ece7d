"""Attacks by someone who holds the model but not the key (Kerckhoffs' principle).

The suite's ``security/wrong_key`` tries one wrong key per face. An attacker who has the trained model (flow,
key scheme, encoders, generator, compensator) can do more; these metrics measure what three such attacks get:

- **learned inversion** (:func:`attack_pairs`, :func:`train_inverter`): the attacker anonymizes training
  faces under random keys, reads each stored anonymized face back with the model's identity encoder, and fits
  a compensator-sized MLP from that embedding to the original identity; held-out anonymized faces are then
  "restored" by rendering its output with the anonymized face's attributes and judged against the original;
- **key search** (:class:`KeySearch`): recovery under N random wrong keys, per face and per key;
- **linkability** (:class:`Linkability`): AUROC of telling from two faces' embeddings whether they show one
  person, for anonymized faces under one key and under a key per photo.

:class:`ModelAttacks` runs all three inside :class:`~ifadit.metrics.suite.AnonymizationSuite` (which hands it
the images and embeddings it has already computed). Every key here is public, derived from a label, so two
evaluations repeat; none is a secret and none is reported.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat

from ifadit.anonymizer import IFADIT
from ifadit.keys import SecretKey
from ifadit.metrics.identity import IdentitySimilarity
from ifadit.nets.image import as_stored
from ifadit.nets.mappers import CompensationMLP
from ifadit.recognizers.base import Recognition, Recognizer

#: the model's own view (identity-encoder space) in result names, next to the judges'
LATENT = "latent"


def attack_key(label: str) -> SecretKey:
    """A public "random" key the attacks use. Derived from a label (not from an RNG) so runs repeat; anyone
    can derive it, so it is nobody's secret."""
    return SecretKey(hashlib.sha256(f"ifadit/metrics/attack-key/{label}".encode()).digest())


# -- metrics on plain tensors ----------------------------------------------------------------------------


class Linkability(Metric):
    """Can a pair's cosine tell whether two faces show one person? Over every pair of faces seen:

    - ``auc``: AUROC of the pair cosine against "same identity" (0.5: pairs cannot be linked; 1.0: always);
    - ``same_cos`` / ``different_cos``: mean cosine of same-identity / different-identity pairs (on original
      faces, ``different_cos`` is *chance*: how alike two different people look to this recognizer);
    - ``faces``: faces scored (those a recognizer found no face in are left out).

    Past ``max_faces`` an evenly spaced subset is scored (the pair count grows with its square).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, max_faces: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_faces = max_faces
        self.add_state("embeddings", [], dist_reduce_fx="cat")
        self.add_state("labels", [], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, labels: Tensor, found: Tensor | None = None) -> None:
        if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
            shapes = f"{tuple(embeddings.shape)}, {tuple(labels.shape)}"
            raise ValueError(f"expected embeddings (B, D) and labels (B,), got {shapes}")
        keep = torch.ones_like(labels, dtype=torch.bool) if found is None else found.bool()
        self.embeddings.append(embeddings[keep].detach().float())
        self.labels.append(labels[keep].detach().long().to(embeddings.device))

    def compute(self) -> dict[str, Tensor]:
        nan = torch.tensor(float("nan"))
        if isinstance(self.labels, list) and not self.labels:
            return {"auc": nan, "same_cos": nan, "different_cos": nan, "faces": torch.tensor(0)}
        e, labels = F.normalize(dim_zero_cat(self.embeddings), dim=1), dim_zero_cat(self.labels)
        if e.shape[0] > self.max_faces:
            chosen = torch.linspace(0, e.shape[0] - 1, self.max_faces, device=e.device).long()
            e, labels = e[chosen], labels[chosen]
        first, second = torch.triu_indices(e.shape[0], e.shape[0], offset=1, device=e.device)
        cos = (e[first] * e[second]).sum(dim=1).nan_to_num(-1.0).clamp(-1.0, 1.0)
        same = labels[first] == labels[second]
        both = bool(same.any()) and bool((~same).any())
        # binary_auroc would read scores outside [0, 1] as logits; AUROC depends on the order only.
        auc = binary_auroc((cos + 1) / 2, same.long()) if both else nan
        return {
            "auc": auc,
            "same_cos": cos[same].double().mean() if same.any() else nan,
            "different_cos": cos[~same].double().mean() if (~same).any() else nan,
            "faces": torch.tensor(e.shape[0]),
        }


class KeySearch(Metric):
    """Recovery under N wrong keys: ``wrong`` (B, N) is each face's recovery score under each key (e.g. the
    cosine of the recovered identity to the original), ``right`` (B,) the right key's.

    - ``best_key``: the best single wrong key over all faces (max over keys of the mean over faces): what an
      attacker who tried N keys and somehow knew which one was best would get;
    - ``best_per_face``: the mean over faces of each face's best wrong key (an upper bound: picking it needs
      the original);
    - ``mean_key``: a typical wrong key; ``right_key``: the right key; ``keys``: N.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("wrong", [], dist_reduce_fx="cat")
        self.add_state("right", [], dist_reduce_fx="cat")

    def update(self, wrong: Tensor, right: Tensor) -> None:
        if wrong.dim() != 2 or right.shape != wrong.shape[:1]:
            shapes = f"{tuple(wrong.shape)}, {tuple(right.shape)}"
            raise ValueError(f"expected wrong (B, N) and right (B,), got {shapes}")
        self.wrong.append(wrong.detach().double())
        self.right.append(right.detach().double())

    def compute(self) -> dict[str, Tensor]:
        if isinstance(self.wrong, list) and not self.wrong:
            nan = torch.tensor(float("nan"))
            return {"best_key": nan, "best_per_face": nan, "mean_key": nan, "right_key": nan,
                    "keys": torch.tensor(0)}
        wrong, right = dim_zero_cat(self.wrong), dim_zero_cat(self.right)
        per_key = wrong.mean(dim=0)
        return {
            "best_key": per_key.max(),
            "best_per_face": wrong.max(dim=1).values.mean(),
            "mean_key": per_key.mean(),
            "right_key": right.mean(),
            "keys": torch.tensor(wrong.shape[1]),
        }


# -- the learned-inversion attacker ----------------------------------------------------------------------


@torch.no_grad()
def attack_pairs(
    model: IFADIT, batches: Iterable[Mapping[str, Tensor]], num_pairs: int
) -> tuple[Tensor, Tensor]:
    """The attacker's training set: ``(E_id(stored x_anon), E_id(x))`` for ``num_pairs`` faces of
    ``batches`` (re-iterated while more are needed), each anonymized under its own random public key and
    stored as an 8-bit file holds it, exactly as a published anonymized face would be."""
    if model.flow is None or model.key_scheme is None:
        raise ValueError("the attack needs a keyed model (a trained flow and key scheme)")
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    inputs: list[Tensor] = []
    targets: list[Tensor] = []
    count = 0
    for _ in itertools.count():
        before = count
        for batch in batches:
            x = batch["image"][: num_pairs - count].to(device)
            if x.shape[0] == 0:
                break
            keys = [attack_key(f"train/{count + i}") for i in range(x.shape[0])]
            cond = model.key_scheme(keys, device=device)
            z = model.identity_encoder(x)
            z_anon, _ = model.flow(z, cond)
            stored = as_stored(model.render(z_anon, model.attribute_encoder(x)))
            inputs.append(model.identity_encoder(stored).float())
            targets.append(z.float())
            count += x.shape[0]
        if count >= num_pairs or count == before:
            break
    if count == 0:
        raise ValueError("no training faces to build the attack's pairs from")
    return torch.cat(inputs), torch.cat(targets)


def train_inverter(
    inputs: Tensor,
    targets: Tensor,
    hidden: Sequence[int] = (256, 512, 256),
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
) -> CompensationMLP:
    """Fit a compensator-shaped MLP ``inputs -> targets`` (cosine loss, Adam, cosine learning-rate decay, as
    the compensator phase trains ``C``): the attacker's best guess of the original identity."""
    if inputs.shape != targets.shape or inputs.dim() != 2:
        shapes = f"{tuple(inputs.shape)}, {tuple(targets.shape)}"
        raise ValueError(f"expected inputs and targets (N, D), got {shapes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = CompensationMLP(inputs.shape[1], hidden).to(inputs.device)
    draw = torch.Generator(device="cpu").manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    net.train()
    with torch.enable_grad():
        for _ in range(steps):
            chosen = torch.randint(0, inputs.shape[0], (batch_size,), generator=draw).to(inputs.device)
            loss = 1 - F.cosine_similarity(net(inputs[chosen]), targets[chosen], dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval().requires_grad_(False)


# -- all three on a model, fed by the suite --------------------------------------------------------------


class ModelAttacks(nn.Module):
    """The three attacks on one ifadit model, scored by the suite's recognizers and by the model's own
    identity encoder (``latent``). Results (``security/…``):

    - ``learned_inversion/<judge>``: original vs the inverter's restored face (``cos``, ``reid_rate``), with
      ``…/chance`` (mean cosine of two different people's originals) beside it, and
      ``learned_inversion/<judge>/mean_identity``: original vs the *mean* training identity rendered with the
      anonymized face's attributes (what the attributes alone give an attacker who learned nothing);
      ``learned_inversion/latent``: ``cos`` of the inverter's identity to the original's (identity-encoder
      space);
    - ``key_search/latent``: :class:`KeySearch` on ``cos(F^-1(C(E_id(x_anon)), k), E_id(x))`` for N keys;
      ``key_search/<judge>``: original vs each face's best wrong key's recovery (an upper bound);
    - ``linkability/<judge or latent>/{original,same_key,per_photo_key}``: :class:`Linkability` of the
      originals, of the anonymized faces under the user's key, and under a different key for every photo.

    Args:
        recognizers: the judges (their rules only are kept; :meth:`update` receives the recognizers).
        num_keys: N wrong keys for the key search (0: no key search).
        inverter: a fitted :func:`train_inverter` network (None: no learned inversion).
        mean_identity: the mean identity of the inverter's training targets (D,), for the attributes-only
            reference (None: not reported).
        key_chunk: flow inversions per call during the key search (memory vs speed).
    """

    def __init__(
        self,
        recognizers: Mapping[str, Recognizer],
        num_keys: int = 100,
        inverter: nn.Module | None = None,
        mean_identity: Tensor | None = None,
        key_chunk: int = 16384,
    ) -> None:
        super().__init__()
        if num_keys < 0:
            raise ValueError(f"num_keys must be >= 0, got {num_keys}")
        self.num_keys, self.key_chunk = num_keys, key_chunk
        self.__dict__["inverter"] = inverter  # not a sub-module: never in a state dict
        self.mean_identity = None if mean_identity is None else F.normalize(mean_identity.float(), dim=0)
        self._conditions: Tensor | None = None
        metrics: dict[str, Metric] = {}
        for name in (*recognizers, LATENT):
            for view in ("original", "same_key", "per_photo_key"):
                metrics[f"security/linkability/{name}/{view}"] = Linkability()
        for name, recognizer in recognizers.items():
            if inverter is not None:
                metrics[f"security/learned_inversion/{name}"] = IdentitySimilarity(recognizer.rule)
            if mean_identity is not None:
                reference = IdentitySimilarity(recognizer.rule)
                metrics[f"security/learned_inversion/{name}/mean_identity"] = reference
            if num_keys:
                metrics[f"security/key_search/{name}"] = IdentitySimilarity(recognizer.rule)
        if inverter is not None:
            metrics[f"security/learned_inversion/{LATENT}"] = MeanMetric()
        if num_keys:
            metrics[f"security/key_search/{LATENT}"] = KeySearch()
        self.metrics = nn.ModuleDict(metrics)
        self.judges = tuple(recognizers)

    def _search_conditions(self, model: IFADIT, device: torch.device) -> Tensor:
        if self._conditions is None or self._conditions.device != device:
            assert model.key_scheme is not None
            keys = [attack_key(f"search/{k}") for k in range(self.num_keys)]
            self._conditions = model.key_scheme(keys, device=device)
        return self._conditions

    def _search(self, model: IFADIT, flow_input: Tensor, identity: Tensor) -> Tensor:
        """(B, N): cosine of each face's recovery under each search key to its original identity."""
        assert model.flow is not None
        conditions = self._search_conditions(model, flow_input.device)
        b, d = flow_input.shape
        step = max(1, self.key_chunk // b)
        scores = []
        for start in range(0, self.num_keys, step):
            cond = conditions[start : start + step]
            n = cond.shape[0]
            z = model.flow.inverse(
                flow_input.unsqueeze(0).expand(n, b, d).reshape(n * b, d),
                cond.unsqueeze(1).expand(n, b, cond.shape[1]).reshape(n * b, -1),
            ).view(n, b, d)
            scores.append(F.cosine_similarity(z, identity.unsqueeze(0).to(z.dtype), dim=2).T)
        # a key whose inverse leaves the finite numbers recovers nothing: the worst score
        return torch.cat(scores, dim=1).nan_to_num(-1.0, -1.0, -1.0)

    @torch.no_grad()
    def update(
        self,
        model: IFADIT,
        recognizers: Mapping[str, Recognizer],
        x: Tensor,
        labels: Tensor,
        index: Sequence[int],
        identity: Tensor,
        attributes: Tensor,
        anonymized: Tensor,
        anonymized_attributes: Tensor,
        flow_input: Tensor,
        recovered_identity: Tensor,
        judged: Mapping[str, Mapping[str, Recognition]],
    ) -> dict[str, Tensor]:
        """One batch. ``identity``/``attributes``: E_id(x)/E_attr(x); ``anonymized``: the stored faces under
        the user's key; ``flow_input``: C(E_id(anonymized)); ``recovered_identity``: the right key's inverse;
        ``judged[name]``: each judge's ``Recognition`` of ``"x"`` and ``"anon"``. Returns the attack's images
        (``inverted``, ``mean_identity``, ``best_wrong_key``, ``per_photo_key``)."""
        assert model.flow is not None and model.key_scheme is not None
        metrics, images = self.metrics, {}
        photo_cond = model.key_scheme([attack_key(f"photo/{i}") for i in index], device=x.device)
        per_photo = as_stored(model.render(model.flow(identity, photo_cond)[0], attributes))
        images["per_photo_key"] = per_photo
        link = f"security/linkability/{LATENT}"
        metrics[f"{link}/original"].update(identity, labels)
        metrics[f"{link}/same_key"].update(flow_input, labels)
        metrics[f"{link}/per_photo_key"].update(model.flow_input_from_image(per_photo), labels)
        if self.inverter is not None:
            guess = F.normalize(self.inverter(model.identity_encoder(anonymized).float()), dim=1)
            metrics[f"security/learned_inversion/{LATENT}"].update(
                F.cosine_similarity(guess, identity.float())
            )
            images["inverted"] = model.render(guess.to(identity.dtype), anonymized_attributes)
        if self.mean_identity is not None:
            prior = self.mean_identity.to(identity).expand_as(identity)
            images["mean_identity"] = model.render(prior, anonymized_attributes)
        if self.num_keys:
            scores = self._search(model, flow_input, identity)
            right = F.cosine_similarity(recovered_identity, identity.to(recovered_identity.dtype), dim=1)
            metrics[f"security/key_search/{LATENT}"].update(scores, right)
            best = self._search_conditions(model, x.device)[scores.argmax(dim=1)]
            best_identity = model.flow.inverse(flow_input, best)
            images["best_wrong_key"] = model.render(best_identity, anonymized_attributes)
        for name in self.judges:
            recognizer, ref, anon = recognizers[name], judged[name]["x"], judged[name]["anon"]
            probe = recognizer(per_photo)
            metrics[f"security/linkability/{name}/original"].update(ref.embeddings, labels, ref.found)
            metrics[f"security/linkability/{name}/same_key"].update(anon.embeddings, labels, anon.found)
            metrics[f"security/linkability/{name}/per_photo_key"].update(
                probe.embeddings, labels, probe.found
            )
            for target, image_key in (
                (f"security/learned_inversion/{name}", "inverted"),
                (f"security/learned_inversion/{name}/mean_identity", "mean_identity"),
                (f"security/key_search/{name}", "best_wrong_key"),
            ):
                if image_key in images:
                    probe = recognizer(images[image_key])
                    metrics[target].update(
                        ref.embeddings, probe.embeddings, ref.found, probe.found
                    )
        return images

    def compute(self) -> dict[str, Tensor | float]:
        """Flat ``security/…`` results; ``learned_inversion/<judge>/chance`` is the judge's
        ``linkability/<judge>/original/different_cos``."""
        results: dict[str, Tensor | float] = {}
        for name, metric in self.metrics.items():
            if metric.update_count == 0:
                continue
            value = metric.compute()
            if isinstance(value, Mapping):
                results.update({f"{name}/{key}": item for key, item in value.items()})
            else:
                results[f"{name}/cos"] = value
        if self.inverter is not None:
            for name in (*self.judges, LATENT):
                chance = results.get(f"security/linkability/{name}/original/different_cos")
                if chance is not None:
                    results[f"security/learned_inversion/{name}/chance"] = chance
        return results

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()


__all__ = [
    "LATENT",
    "KeySearch",
    "Linkability",
    "ModelAttacks",
    "attack_key",
    "attack_pairs",
    "train_inverter",
]

