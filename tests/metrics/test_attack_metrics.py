"""The model-holder attacks (ifadit.metrics.attacks): each metric's formula on plain tensors, and, through the
suite on a toy model whose images carry the identity vector exactly, that each attack tells a sound keyed flow
(a random rotation per key) from a broken one (one rotation whatever the key)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifadit.anonymizer import IFADIT
from ifadit.flows.base import KeyedFlow
from ifadit.keys import SecretKey
from ifadit.keys.schemes import BitsKeyScheme
from ifadit.metrics import AnonymizationSuite, KeySearch, Linkability, ModelAttacks
from ifadit.metrics.attacks import attack_pairs, train_inverter
from ifadit.nets import AttributeEncoder, Generator, IdentityEncoder
from ifadit.recognizers import EncoderRecognizer

D, SIZE = 8, 8


def _people(n: int, photos: int, spread: float = 0.15, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Unit identity vectors: ``photos`` noisy copies of each of ``n`` people, and their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n, D, generator=g), dim=1)
    labels = torch.arange(n).repeat_interleave(photos)
    return F.normalize(centres[labels] + spread * torch.randn(n * photos, D, generator=g), dim=1), labels


def test_linkability_is_one_for_people_apart_and_one_half_for_independent_vectors() -> None:
    metric = Linkability()
    z, labels = _people(20, 4)
    metric.update(z[:40], labels[:40])
    metric.update(z[40:], labels[40:])
    linked = metric.compute()
    assert linked["auc"] > 0.99 and linked["faces"] == 80
    assert linked["same_cos"] > 0.8 > 0.3 > abs(float(linked["different_cos"]))
    metric.reset()
    metric.update(torch.randn(400, D), torch.arange(100).repeat_interleave(4))  # labels unrelated to vectors
    assert abs(float(metric.compute()["auc"]) - 0.5) < 0.05
    # faces a recognizer did not find are left out; one identity only: no AUROC
    metric.reset()
    metric.update(z[:4], torch.zeros(4, dtype=torch.long), torch.tensor([True, True, False, True]))
    result = metric.compute()
    assert result["faces"] == 3 and torch.isnan(result["auc"])


def test_key_search_summaries() -> None:
    metric = KeySearch()
    wrong = torch.tensor([[0.1, 0.5, 0.0], [0.3, -0.1, 0.9]])
    metric.update(wrong[:1], torch.tensor([0.8]))
    metric.update(wrong[1:], torch.tensor([1.0]))
    r = metric.compute()
    assert r["best_key"] == pytest.approx(0.45)  # key 2: (0.0 + 0.9) / 2
    assert r["best_per_face"] == pytest.approx(0.7)  # (0.5 + 0.9) / 2
    assert r["mean_key"] == pytest.approx(wrong.mean().item())
    assert r["right_key"] == pytest.approx(0.9) and r["keys"] == 3


def test_the_inverter_undoes_a_fixed_map_but_not_a_random_rotation_per_key() -> None:
    z, _ = _people(300, 1, spread=0.0)
    held_out, _ = _people(100, 1, spread=0.0, seed=1)
    fixed = torch.linalg.qr(torch.randn(D, D))[0]
    net = train_inverter(z @ fixed.T, z, hidden=(64,), steps=400, batch_size=64, lr=3e-3)
    restored = F.cosine_similarity(net(held_out @ fixed.T), held_out).mean()
    assert restored > 0.95

    def keyed(v: Tensor) -> Tensor:  # a uniformly random rotation per sample (QR with R's diagonal > 0)
        q, r = torch.linalg.qr(torch.randn(v.shape[0], D, D))
        rotations = q * r.diagonal(dim1=1, dim2=2).sign().unsqueeze(1)
        return (rotations @ v.unsqueeze(-1)).squeeze(-1)

    net = train_inverter(keyed(z), z, hidden=(64,), steps=400, batch_size=64, lr=3e-3)
    assert abs(F.cosine_similarity(net(keyed(held_out)), held_out).mean()) < 0.15


# -- a toy model whose images hold the identity vector in their first pixels --------------------------------


class PixelIdentity(IdentityEncoder):
    embedding_dim = D

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(images[:, 0].flatten(1)[:, :D], dim=1)


class PixelAttributes(AttributeEncoder):
    n_styles, style_dim = 1, D

    def forward(self, images: Tensor) -> Tensor:
        return images[:, 1].flatten(1)[:, :D].unsqueeze(1)


class StackMapper(nn.Module):
    def forward(self, identity: Tensor, attributes: Tensor) -> Tensor:
        return torch.stack([identity, attributes[:, 0]], dim=1)


class PixelGenerator(Generator):
    size, n_latent, style_dim = SIZE, 2, D

    def forward(self, w_plus: Tensor) -> Tensor:
        pad = w_plus.new_zeros(w_plus.shape[0], 2, SIZE * SIZE - D)
        planes = torch.cat([w_plus, pad], dim=2).view(-1, 2, SIZE, SIZE)
        return torch.cat([planes, planes[:, :1] * 0], dim=1).clamp(-1, 1)

    def map(self, z: Tensor) -> Tensor:
        return z


class Rotation(KeyedFlow):
    """z -> Q z, Q orthogonal from the QR of the condition read as a D x D matrix; or one fixed Q whatever
    the key (``ignore_key``: a broken flow)."""

    def __init__(self, ignore_key: bool = False) -> None:
        super().__init__(D, D * D, 1)
        self.ignore_key = ignore_key
        self.register_buffer("fixed", torch.linalg.qr(torch.randn(D, D))[0])

    def _rotation(self, cond: Tensor) -> Tensor:
        if self.ignore_key:
            return self.fixed.expand(cond.shape[0], D, D)
        q, r = torch.linalg.qr(cond.view(-1, D, D))
        return q * torch.where(r.diagonal(dim1=1, dim2=2) >= 0, 1.0, -1.0).unsqueeze(1)

    def _forward(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        assert cond is not None
        return (self._rotation(cond) @ z.unsqueeze(-1)).squeeze(-1), z.new_zeros(z.shape[0])

    def _inverse(self, z: Tensor, cond: Tensor | None) -> Tensor:
        assert cond is not None
        return (self._rotation(cond).transpose(1, 2) @ z.unsqueeze(-1)).squeeze(-1)


def _faces(model: IFADIT, n: int, photos: int, seed: int) -> tuple[Tensor, Tensor]:
    z, labels = _people(n, photos, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    attributes = (torch.rand(z.shape[0], 1, D, generator=g) - 0.5)
    return model.render(z, attributes), labels


def _toy(ignore_key: bool = False) -> IFADIT:
    torch.manual_seed(0)
    return IFADIT(PixelIdentity(), PixelAttributes(), StackMapper(), PixelGenerator(),
                  Rotation(ignore_key), BitsKeyScheme(D * D)).eval()


def _attacked(ignore_key: bool) -> dict:
    model = _toy(ignore_key)
    train, _ = _faces(model, 60, 2, seed=1)
    inputs, targets = attack_pairs(model, [{"image": train[:64]}, {"image": train[64:]}], 240)
    assert inputs.shape == targets.shape == (240, D)  # 120 faces, read twice under other keys
    inverter = train_inverter(inputs, targets, hidden=(64,), steps=300, batch_size=64, lr=3e-3)
    judge = EncoderRecognizer(PixelIdentity(), threshold=0.5)
    attacks = ModelAttacks({"judge": judge}, 40, inverter, mean_identity=targets.mean(dim=0))
    suite = AnonymizationSuite({"judge": judge}, num_anonymizations=1, attacks=attacks)
    x, labels = _faces(model, 12, 4, seed=2)
    secret = SecretKey(bytes(range(32)))
    suite.update(model, x[:24], secret, labels[:24])
    suite.update(model, x[24:], secret, labels[24:])
    return suite.compute()


def test_attacks_tell_a_keyed_flow_from_one_that_ignores_the_key() -> None:
    sound, broken = _attacked(ignore_key=False), _attacked(ignore_key=True)
    s, b = "security/", "security/"
    # learned inversion: at chance on the sound flow, near-perfect on the broken one
    chance = sound[s + "learned_inversion/judge/chance"]
    assert sound[s + "learned_inversion/judge/cos"] < chance + 0.15
    assert broken[b + "learned_inversion/judge/cos"] > 0.9
    assert broken[b + "learned_inversion/latent/cos"] > 0.9
    # ... where the mean training identity rendered with the anonymized attributes learns nothing either way
    for result in (sound, broken):
        assert abs(result[s + "learned_inversion/judge/mean_identity/cos"] - chance) < 0.15
    assert sound[s + "learned_inversion/judge/right_key"] == pytest.approx(sound["reversibility/judge/cos"])
    assert sound["reversibility/judge/cos"] > 0.99  # the toy recovers exactly with the right key
    # key search: no wrong key comes near the right one, unless the key does nothing
    assert sound[s + "key_search/latent/right_key"] > 0.99 > 0.6 > sound[s + "key_search/latent/best_key"]
    assert sound[s + "key_search/latent/best_per_face"] >= sound[s + "key_search/latent/best_key"]
    assert sound[s + "key_search/latent/keys"] == 40 and sound[s + "key_search/judge/pairs"] == 48
    assert broken[b + "key_search/latent/best_key"] > 0.99 and broken[b + "key_search/judge/cos"] > 0.99
    # linkability: one key keeps one pseudonym per person; a key per photo unlinks, unless the key is ignored
    for view in ("judge", "latent"):
        assert sound[f"{s}linkability/{view}/original/auc"] > 0.99
        assert sound[f"{s}linkability/{view}/same_key/auc"] > 0.99
        assert abs(sound[f"{s}linkability/{view}/per_photo_key/auc"] - 0.5) < 0.15
        assert broken[f"{b}linkability/{view}/per_photo_key/auc"] > 0.99


def test_attacks_must_match_the_suites_recognizers() -> None:
    judge = EncoderRecognizer(PixelIdentity(), threshold=0.5)
    with pytest.raises(ValueError, match="recognizers"):
        AnonymizationSuite({"judge": judge}, attacks=ModelAttacks({"other": judge}, num_keys=1))


def test_two_half_suites_with_attacks_merge_into_the_whole() -> None:
    model, judge = _toy(), EncoderRecognizer(PixelIdentity(), threshold=0.5)
    train, _ = _faces(model, 10, 2, seed=1)
    pairs = attack_pairs(model, [{"image": train}], 20)
    inverter = train_inverter(*pairs, hidden=(16,), steps=5, batch_size=8)
    x, labels = _faces(model, 6, 4, seed=2)
    secret = SecretKey(bytes(range(32)))

    def suite() -> AnonymizationSuite:
        attacks = ModelAttacks({"judge": judge}, num_keys=5, inverter=inverter)
        return AnonymizationSuite({"judge": judge}, num_anonymizations=1, attacks=attacks)

    whole, first, second, merged = suite(), suite(), suite(), suite()
    whole.update(model, x, secret, labels)
    first.update(model, x[:12], secret, labels[:12], start=0)
    second.update(model, x[12:], secret, labels[12:], start=12)
    merged.merge_state(first)
    merged.merge_state(second)
    expected, got = whole.compute(), merged.compute()
    assert expected["security/linkability/judge/same_key/faces"] == 24
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if value is None:  # not configured (FID, LPIPS)
            assert got[name] is None, name
        else:
            assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), name
