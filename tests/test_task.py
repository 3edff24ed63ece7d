"""Task wiring that the CLI tests do not reach."""

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ifadit import registry
from ifadit.flows.subspace import PrincipalSubspace, SubspaceFlow
from ifadit.keys import SecretKey
from ifadit.nets.image import as_stored
from ifadit.task import IFADITTask, LossWeights, OptimizerConfig


def _parts(scheme: str = "mapping"):
    return dict(
        identity_encoder=registry.create(
            "identity_encoders", "timm", backbone="resnet10t", embedding_dim=32, in_size=32
        ),
        attribute_encoder=registry.create(
            "attribute_encoders", "timm", backbone="resnet10t", n_styles=8, style_dim=32
        ),
        mapper=registry.create("mappers", "latent", id_dim=32, style_dim=32, n_styles=8, hidden=32),
        generator=registry.create("generators", "stylegan2", size=32, style_dim=32, n_mlp=2, max_channels=16),
        flow=registry.create("flows", "allinone", dim=32, cond_dim=32, num_blocks=2),
        key_scheme=registry.create("key_schemes", scheme, dim=32),
    )


def _phase_one_task() -> IFADITTask:
    parts = _parts()
    for name in ("flow", "key_scheme"):
        del parts[name]
    return IFADITTask(**parts, phase="disentangle")


def test_key_mapping_from_generator_uses_the_generator_mapping_network():
    parts = _parts()
    task = IFADITTask(**parts, phase="flow", key_mapping_from_generator=True)
    secret = SecretKey.generate()
    scheme = task.model.key_scheme
    torch.testing.assert_close(scheme(secret), parts["generator"].map(scheme.raw(secret)))
    assert not any(k.startswith("model.key_scheme._external") for k in task.state_dict())


def test_key_mapping_from_generator_needs_a_mapping_scheme():
    with pytest.raises(ValueError, match="cannot use a generator's mapping network"):
        IFADITTask(**_parts("bits"), phase="flow", key_mapping_from_generator=True)


def test_a_phase_without_its_components_is_refused():
    parts = _parts()
    del parts["flow"]
    with pytest.raises(ValueError, match="needs the components: flow"):
        IFADITTask(**parts, phase="flow")


def test_swap_pixel_loss_uses_the_rendered_target():
    task = _phase_one_task()
    task.losses.swap_pixel = 1.0
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    terms, _ = task._reconstruction_terms(x, swap_target=None)
    assert "swap_pixel" not in terms
    terms, _ = task._reconstruction_terms(x, swap_target=torch.zeros_like(x))
    m = task.model
    with torch.no_grad():
        z = m.identity_encoder(x)
        expected = m.render(z.roll(1, dims=0), m.attribute_encoder(x)).abs().mean()
    torch.testing.assert_close(terms["swap_pixel"].detach(), expected, rtol=1e-4, atol=1e-5)


def test_synthetic_identities_are_gaussian_with_the_queue_mean_and_covariance():
    task = _phase_one_task()
    task.losses.realism_queue_size = 64
    z = torch.nn.functional.normalize(torch.randn(64, 32) + torch.linspace(-1, 1, 32), dim=1)
    torch.manual_seed(0)
    samples = torch.cat([task._synthetic_identities(z) for _ in range(400)])  # the queue stays z
    torch.testing.assert_close(task._identity_queue, z)
    torch.testing.assert_close(samples.mean(dim=0), z.mean(dim=0), atol=0.01, rtol=0)
    torch.testing.assert_close(samples.T.cov(), z.T.cov(), atol=0.004, rtol=0)
    # not the real identities themselves: a new one is at most moderately close to its nearest queued one
    nearest = (torch.nn.functional.normalize(samples[:64], dim=1) @ z.T).max(dim=1).values
    assert nearest.mean() < 0.95


def test_the_synthetic_identity_term_trains_the_generator_through_the_frozen_identity_encoder():
    task = _phase_one_task()
    for name in ("l1", "ssim", "identity", "swap_identity"):
        setattr(task.losses, name, 0.0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    terms, _ = task._reconstruction_terms(x)
    assert terms == {}
    task.losses.synthetic_identity = 0.5
    terms, _ = task._reconstruction_terms(x)
    assert set(terms) == {"synthetic_identity"} and terms["synthetic_identity"].item() > 0
    terms["synthetic_identity"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.generator.parameters())
    assert all(p.grad is None for p in task.model.identity_encoder.parameters())


def test_the_joint_phase_reuses_the_phase_one_encodings_with_the_same_losses_and_gradients():
    """The joint step hands phase 1's (z, a, render) to the flow terms instead of computing them again."""
    task = IFADITTask(**_parts(), phase="joint")
    task.losses.swap_identity = 0.0
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    params = [p for p in task.parameters() if p.requires_grad]

    def step(reuse: bool) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        reconstruction, encoded = task._reconstruction_terms(x)
        torch.manual_seed(7)  # the same training keys both times
        flow = task._flow_terms(x, encoded if reuse else None)
        grads = torch.autograd.grad(sum({**reconstruction, **flow}.values()), params, allow_unused=True)
        return flow, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]

    reused, reused_grads = step(reuse=True)
    fresh, fresh_grads = step(reuse=False)
    assert set(reused) == set(fresh) and {"image", "anonymity", "recovery_image"} <= set(reused)
    for name in fresh:
        torch.testing.assert_close(reused[name], fresh[name], rtol=1e-5, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in fresh_grads[:5])
    for a, b in zip(reused_grads, fresh_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _only(**weights: float) -> LossWeights:
    """Every loss weight 0 except ``weights`` (margins and thresholds keep their defaults)."""
    losses = LossWeights()
    for name in vars(losses):
        if isinstance(getattr(losses, name), float) and name not in ("margin", "realism_threshold"):
            setattr(losses, name, 0.0)
    for name, value in weights.items():
        setattr(losses, name, value)
    return losses


def _flow_task(**weights: float) -> IFADITTask:
    return IFADITTask(**_parts(), phase="flow", losses=_only(**weights))


def _compensator_task(**losses) -> IFADITTask:
    compensator = registry.create("mappers", "compensator", dim=32, hidden=[16])
    return IFADITTask(**_parts(), compensator=compensator, phase="compensator", losses=LossWeights(**losses))


def test_the_compensator_phase_fits_only_the_compensator_on_replayed_stored_renders():
    task = _compensator_task(replay_size=6, replay_batch=5)
    m = task.model
    assert {n for n, p in task.named_parameters() if p.requires_grad} == {
        f"model.compensator.{n}" for n, _ in m.compensator.named_parameters()
    }
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.manual_seed(3)
    task.training_step({"image": x}, 0).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.compensator.parameters())
    assert not any(p.grad is not None for name, p in task.named_parameters() if "compensator" not in name)
    # the buffer holds (E_id(x_anon as stored), z_anon) under the step's fresh keys
    torch.manual_seed(3)
    with torch.no_grad():
        z_anon, _ = m.flow(m.identity_encoder(x), task._training_keys(4, x.device))
        read = m.identity_encoder(as_stored(m.render(z_anon, m.attribute_encoder(x))))
    torch.testing.assert_close(task._replay, torch.cat((read, z_anon), dim=1))
    # renders only until it is full (6 pairs), then the steps reuse them
    task._replayed_compensator_loss(x)
    full = task._replay.clone()
    assert full.shape == (6, 64)
    torch.testing.assert_close(full[:4], torch.cat((read, z_anon), dim=1))
    loss = task._replayed_compensator_loss(torch.rand(4, 3, 32, 32))
    assert torch.equal(task._replay, full) and loss.item() > 0


def test_the_compensator_phase_checks_its_parts_and_settings():
    with pytest.raises(ValueError, match="needs the components: compensator"):
        IFADITTask(**_parts(), phase="compensator")
    with pytest.raises(ValueError, match="replay_size and replay_batch must be >= 1"):
        _compensator_task(replay_batch=0)
    with pytest.raises(ValueError, match=r"fits losses\.latent_recovery, which is 0: nothing trains"):
        _compensator_task(latent_recovery=0.0)


def test_latent_terms_match_their_definitions_and_train_only_the_flow():
    task = _flow_task(latent_anonymity=1.0, latent_two_key=2.0, latent_realism=1.0)
    task.losses.margin = -1.0  # no clamp: every term is the plain mean cosine
    task.losses.realism_threshold = 1.0
    task.losses.realism_neighbours = 1
    z = torch.nn.functional.normalize(torch.randn(6, 32), dim=1)
    cond = task.model.key_scheme.sample(6)
    z_a, _ = task.model.flow(z, cond)
    z_b = z_a.roll(1, dims=0)
    terms = task._latent_terms(z, z_a, z_b)
    cos = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(terms["latent_anonymity"], cos(z_a, z).mean())
    torch.testing.assert_close(terms["latent_two_key"], 2 * cos(z_a, z_b).mean())
    # the queue holds this batch's real identities: nearest one per row, threshold 1 -> 1 - max cos
    nearest = (torch.nn.functional.normalize(z_a, dim=1) @ z.T).max(dim=1).values
    torch.testing.assert_close(terms["latent_realism"], (1 - nearest).mean())
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in task.model.flow.parameters() if p.requires_grad)
    assert all(p.grad is None for p in task.model.generator.parameters())


def test_identity_queue_keeps_the_newest_embeddings_up_to_its_size():
    task = _flow_task(latent_realism=1.0)
    task.losses.realism_queue_size = 10
    batches = [torch.randn(4, 32) for _ in range(4)]
    for z in batches:
        queue = task._remember_identities(z)
    assert queue.shape == (10, 32)
    expected = torch.nn.functional.normalize(torch.cat(batches[::-1]), dim=1)[:10]
    torch.testing.assert_close(queue, expected)


def test_latent_wrong_key_inverts_with_a_fresh_key_and_zero_weights_compute_nothing():
    task = _flow_task(latent_wrong_key=1.0)
    z = torch.nn.functional.normalize(torch.randn(4, 32), dim=1)
    z_a, _ = task.model.flow(z, task.model.key_scheme.sample(4))
    terms = task._latent_terms(z, z_a, None)
    assert set(terms) == {"latent_wrong_key"}
    assert 0.1 <= terms["latent_wrong_key"].item() < 1.0  # margin-clamped mean cosine, not a recovery
    assert _flow_task()._latent_terms(z, z_a, z_a) == {}


@pytest.mark.parametrize("through_render", [True, False])
def test_latent_recovery_reaches_the_flow_only_through_the_render_when_asked(through_render):
    task = _flow_task(latent_recovery=1.0)
    task.model.compensator = registry.create("mappers", "compensator", dim=32, hidden=[16])
    task.losses.latent_recovery_through_render = through_render
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    terms = task._flow_terms(x)
    assert set(terms) == {"latent_recovery"}
    terms["latent_recovery"].backward()
    compensator_grads = [p.grad for p in task.model.compensator.parameters()]
    flow_grads = [p.grad for p in task.model.flow.parameters() if p.requires_grad]
    assert all(g is not None and g.abs().sum() > 0 for g in compensator_grads)
    reached_flow = any(g is not None and g.abs().sum() > 0 for g in flow_grads)
    assert reached_flow == through_render


@pytest.mark.parametrize("store", [True, False])
def test_stored_anonymized_faces_are_what_the_phase_two_terms_read_and_still_train_the_flow(store):
    task = _flow_task(anonymity=1.0)
    task.losses.store_anonymized = store
    seen = []
    task.model.identity_encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    terms = task._flow_terms(x)
    anonymized = seen[-1]  # the encoder reads the face first, then its anonymization
    assert torch.allclose(anonymized, as_stored(anonymized), atol=1e-5) == store
    terms["anonymity"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.flow.parameters())


def _joint_task(**weights: float) -> IFADITTask:
    joint = IFADITTask(**_parts(), phase="joint", losses=_only(**weights))
    joint.model.compensator = registry.create("mappers", "compensator", dim=32, hidden=[16])
    return joint


@pytest.mark.parametrize("trains", [True, False])
@pytest.mark.parametrize("term", ["anonymity", "two_key_diversity", "wrong_key", "recovery_image"])
def test_untargeted_renders_train_the_generator_only_when_asked(term, trains):
    """Joint phase: the anonymized, second-key and wrong-key renders have no target image; with
    ``anonymized_render_trains_generator: false`` their losses reach the flow but not the generator."""
    task = _joint_task(**{term: 1.0})
    task.losses.anonymized_render_trains_generator = trains
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.manual_seed(0)
    terms = task._flow_terms(x)
    assert set(terms) == {term}
    terms[term].backward()

    def reached(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert reached(task.model.flow) and reached(task.model.attribute_encoder)
    # the recovered face has a target (the original): its render trains the generator either way
    assert reached(task.model.generator) == (trains or term == "recovery_image")
    assert reached(task.model.mapper) == (trains or term == "recovery_image")


def test_the_frozen_render_computes_the_same_image():
    task = _joint_task()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z, a = task.model.identity_encoder(x), task.model.attribute_encoder(x)
    torch.testing.assert_close(task._render_without_training_the_renderer(z, a), task.model.render(z, a))


def test_density_loss_needs_a_flow_with_a_density_model():
    with pytest.raises(ValueError, match="needs a flow with its own density model"):
        IFADITTask(**_parts(), phase="flow", losses=LossWeights(density=1.0))


def test_latent_batch_diversity_is_l_inter_on_the_batch_under_one_fresh_key():
    task = _flow_task(latent_batch_diversity=0.5, diversity_threshold=0.1)
    z = torch.nn.functional.normalize(torch.randn(6, 32), dim=1)
    torch.manual_seed(3)
    terms = task._latent_terms(z, z, None)
    torch.manual_seed(3)
    z_same, _ = task.model.flow(z, task.model.key_scheme.sample(1).expand(6, -1))
    unit = torch.nn.functional.normalize(z_same, dim=1)
    pairs = (unit @ unit.T)[torch.tril(torch.ones(6, 6, dtype=torch.bool), diagonal=-1)]
    torch.testing.assert_close(terms["latent_batch_diversity"], 0.5 * (pairs * (pairs >= 0.1)).sum())
    # six copies of one identity: one key sends them to one point, all 15 pairs at cosine 1
    same = task._latent_terms(z[:1].expand(6, -1), z, None)["latent_batch_diversity"]
    torch.testing.assert_close(same, torch.tensor(7.5))


def test_training_keys_per_batch_share_one_fresh_key_per_step():
    task = IFADITTask(**_parts(), phase="flow", training_keys="per_batch")
    first, second = task._training_keys(5, torch.device("cpu")), task._training_keys(5, torch.device("cpu"))
    assert first.shape == (5, 32)
    assert torch.equal(first, first[:1].expand(5, -1))
    assert not torch.allclose(first[0], second[0])
    per_sample = IFADITTask(**_parts(), phase="flow")._training_keys(5, torch.device("cpu"))
    assert not torch.allclose(per_sample[0], per_sample[1])
    with pytest.raises(ValueError, match="training_keys must be 'per_sample' or 'per_batch', got 'each'"):
        IFADITTask(**_parts(), phase="flow", training_keys="each")



class _RandomFaces(L.LightningDataModule):
    """24 fixed random 32 px 'faces' in FaceDataModule's batch format."""

    def __init__(self) -> None:
        super().__init__()
        images = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.items = [{"image": image, "identity": torch.tensor(i % 6)} for i, image in enumerate(images)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=8)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.items[:8], batch_size=8)


def test_the_identity_subspace_is_fitted_from_training_faces_when_phase_two_starts(tmp_path):
    parts = _parts()
    parts["flow"] = registry.create("flows", "allinone", dim=4, cond_dim=32, num_blocks=2)
    subspace = PrincipalSubspace(32, 4, fit_images=16)
    task = IFADITTask(**parts, phase="flow", identity_subspace=subspace)
    assert isinstance(task.model.flow, SubspaceFlow) and task.model.flow.subspace is subspace
    z = torch.nn.functional.normalize(torch.randn(2, 32), dim=1)
    with pytest.raises(RuntimeError, match="identity subspace is not fitted"):
        task.model.flow(z, task.model.key_scheme.sample(2))
    data = _RandomFaces()
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=tmp_path)
    before = [p.detach().clone() for p in task.model.flow.flow.parameters()]
    trainer.fit(task, data)
    # the basis is that of the first 16 training faces' identities, in the encoder's eval mode
    with torch.no_grad():
        expected = PrincipalSubspace(32, 4)
        expected.fit(task.model.identity_encoder.eval()(torch.stack([d["image"] for d in data.items[:16]])))
    torch.testing.assert_close(subspace.basis @ subspace.basis.T, expected.basis @ expected.basis.T)
    assert any(not torch.equal(a, b) for a, b in zip(before, task.model.flow.flow.parameters(), strict=True))
    # saved with the model, and never refitted over a fitted (e.g. resumed) one
    state = task.state_dict()
    assert {"model.flow.subspace.basis", "model.flow.subspace.fitted"} <= set(state)
    fitted_basis = subspace.basis.clone()
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    data.items = data.items[8:]  # other faces: a refit would change the basis
    trainer.fit(task, data)
    assert torch.equal(subspace.basis, fitted_basis)


def test_the_optimizer_is_fused_adam_with_the_generator_at_its_own_rate_and_steps_like_plain_adam():
    parts = _parts()
    parts.pop("flow"), parts.pop("key_scheme")
    task = IFADITTask(**parts, phase="disentangle", optimizer=OptimizerConfig(lr=1e-3, generator_lr=5e-4))
    optimizer = task.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"]
    main, generator = optimizer.param_groups
    assert {id(p) for p in generator["params"]} == {id(p) for p in task.model.generator.parameters()}
    assert (main["lr"], generator["lr"]) == (1e-3, 5e-4)
    assert not any(p.requires_grad for p in task.model.identity_encoder.parameters())
    groups = [[p.detach().clone() for p in group["params"]] for group in optimizer.param_groups]
    plain = torch.optim.Adam(
        [{"params": ps, "lr": g["lr"]} for ps, g in zip(groups, optimizer.param_groups, strict=True)],
        betas=task.optim.betas,
        foreach=False,
    )
    for _ in range(2):
        for ours, theirs in zip(optimizer.param_groups, plain.param_groups, strict=True):
            for p, q in zip(ours["params"], theirs["params"], strict=True):
                p.grad = torch.randn_like(p)
                q.grad = p.grad.clone()
        optimizer.step()
        plain.step()
    for ours, theirs in zip(optimizer.param_groups, plain.param_groups, strict=True):
        for p, q in zip(ours["params"], theirs["params"], strict=True):
            torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)


class _LearningRates(L.Callback):
    def __init__(self) -> None:
        self.seen: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append([group["lr"] for group in trainer.optimizers[0].param_groups])


def test_the_cosine_schedule_takes_every_group_to_zero_at_the_last_step_and_constant_stays(tmp_path):
    rates = {}
    for schedule in ("cosine", "constant"):
        parts = _parts()
        parts.pop("flow"), parts.pop("key_scheme")
        optimizer = OptimizerConfig(lr=1e-3, generator_lr=4e-4, schedule=schedule)
        task = IFADITTask(**parts, phase="disentangle", optimizer=optimizer)
        seen = _LearningRates()
        trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, callbacks=[seen],
                            default_root_dir=tmp_path)
        trainer.fit(task, _RandomFaces())
        rates[schedule] = seen.seen
    half_cosine = [(1 + math.cos(math.pi * step / 4)) / 2 for step in range(4)]
    expected = [[1e-3 * f, 4e-4 * f] for f in half_cosine]
    for got, want in zip(rates["cosine"], expected, strict=True):
        assert got == pytest.approx(want)
    assert rates["constant"] == [[1e-3, 4e-4]] * 4


# -- the adversarial loss ---


def _critic(size: int = 32) -> torch.nn.Module:
    return registry.create("discriminators", "stylegan2", size=size, max_channels=16)


def _reached(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_the_adversarial_term_trains_the_generator_and_the_critic_loss_only_the_critic():
    parts = _parts()
    parts.pop("flow"), parts.pop("key_scheme")
    task = IFADITTask(**parts, phase="disentangle", discriminator=_critic(), losses=_only(adversarial=0.5))
    critic, m = task.discriminator, task.model
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    fakes: list[torch.Tensor] = []
    terms, encoded = task._reconstruction_terms(x, fakes=fakes)
    assert set(terms) == {"adversarial"} and len(fakes) == 1
    softplus = torch.nn.functional.softplus
    with torch.no_grad():
        torch.testing.assert_close(terms["adversarial"], 0.5 * softplus(-critic(encoded.render)).mean())
    terms["adversarial"].backward()
    assert _reached(m.generator) and _reached(m.mapper) and _reached(m.attribute_encoder)
    assert not _reached(critic)
    task.zero_grad(set_to_none=True)
    loss = task._discriminator_loss(x, fakes)
    with torch.no_grad():
        expected = softplus(critic(encoded.render)).mean() + softplus(-critic(x)).mean()
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert _reached(critic) and not _reached(m.generator) and not _reached(m.attribute_encoder)


def test_the_lazy_r1_penalty_is_the_squared_input_gradient_on_real_images_every_nth_step():
    parts = _parts()
    parts.pop("flow"), parts.pop("key_scheme")
    losses = _only(adversarial=1.0, r1=2.0, r1_interval=4)
    task = IFADITTask(**parts, phase="disentangle", discriminator=_critic(), losses=losses)
    x, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    with_penalty = task._discriminator_loss(x, [fake])  # no trainer: step 0, a penalty step
    inputs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(task.discriminator(inputs).sum(), inputs)
    task.losses.r1 = 0.0
    without = task._discriminator_loss(x, [fake])
    penalty = 2.0 / 2 * 4 * grad.pow(2).flatten(1).sum(dim=1).mean()
    torch.testing.assert_close(with_penalty - without, penalty, rtol=1e-4, atol=1e-6)
    assert penalty > 0


def test_the_anonymized_adversarial_term_trains_the_flow_not_the_frozen_generator():
    task = IFADITTask(**_parts(), phase="flow", discriminator=_critic(),
                      losses=_only(anonymized_adversarial=1.0))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    fakes: list[torch.Tensor] = []
    terms = task._flow_terms(x, fakes=fakes)
    assert set(terms) == {"anonymized_adversarial"} and len(fakes) == 1
    terms["anonymized_adversarial"].backward()
    assert _reached(task.model.flow)
    assert not _reached(task.model.generator) and not _reached(task.discriminator)


@pytest.mark.parametrize("reference", ["image", "reconstruction"])
def test_a_training_step_trains_the_critic_on_its_reference_as_real(tmp_path, reference):
    """phase 2, one step: the critic's real class is the training images or their reconstructions."""
    losses = _only(anonymized_adversarial=1.0, adversarial_reference=reference)
    task = IFADITTask(**_parts(), phase="flow", discriminator=_critic(), losses=losses)
    seen: list[torch.Tensor] = []
    original = task._discriminator_loss
    task._discriminator_loss = lambda real, fakes: seen.append(real) or original(real, fakes)  # spy
    critic_before = [p.detach().clone() for p in task.discriminator.parameters()]
    generator_before = [p.detach().clone() for p in task.model.generator.parameters()]
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    data = _RandomFaces()
    trainer.fit(task, data)
    first = torch.stack([d["image"] for d in data.items[:8]])
    if reference == "image":
        torch.testing.assert_close(seen[0], first)
    else:
        m = task.model
        with torch.no_grad():
            z, a = m.identity_encoder(first), m.attribute_encoder(first)
            torch.testing.assert_close(seen[0], m.render(z, a), rtol=1e-4, atol=1e-5)
    after = list(task.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, after, strict=True))
    generator_after = task.model.generator.parameters()
    assert all(torch.equal(a, b) for a, b in zip(generator_before, generator_after, strict=True))


def test_adversarial_settings_are_checked():
    parts = _parts()
    with pytest.raises(ValueError, match=r"need model\.discriminator"):
        IFADITTask(**parts, phase="flow", losses=_only(anonymized_adversarial=1.0))
    with pytest.raises(ValueError, match="renders 32 px"):
        IFADITTask(**parts, phase="flow", discriminator=_critic(64), losses=_only(anonymized_adversarial=1.0))
    losses = _only(adversarial=1.0, adversarial_reference="reconstruction")
    with pytest.raises(ValueError, match=r"losses\.adversarial must be 0"):
        IFADITTask(**parts, phase="joint", discriminator=_critic(), losses=losses)
    with pytest.raises(ValueError, match="must be 'image' or 'reconstruction', got 'photo'"):
        IFADITTask(**parts, phase="flow", losses=_only(adversarial_reference="photo"))
    # a term of another phase needs no critic, and none is kept
    task = IFADITTask(**parts, phase="flow", discriminator=_critic(), losses=_only(adversarial=1.0))
    assert task.discriminator is None and not any(k.startswith("discriminator.") for k in task.state_dict())


def test_the_critic_has_its_own_learning_rate_group():
    parts = _parts()
    parts.pop("flow"), parts.pop("key_scheme")
    task = IFADITTask(**parts, phase="disentangle", discriminator=_critic(), losses=_only(adversarial=1.0),
                      optimizer=OptimizerConfig(lr=1e-3, generator_lr=5e-4, discriminator_lr=2e-4))
    main, generator, critic = task.configure_optimizers().param_groups
    assert {id(p) for p in critic["params"]} == {id(p) for p in task.discriminator.parameters()}
    assert (main["lr"], generator["lr"], critic["lr"]) == (1e-3, 5e-4, 2e-4)
