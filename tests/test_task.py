"""Task wiring that the CLI tests do not reach."""

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ifadit import registry
from ifadit.keys import SecretKey
from ifadit.nets.image import as_stored
from ifadit.task import IFADITTask
from ifadit.training import (
    Adversary,
    LossWeights,
    OptimizerConfig,
    encoding_each_image_once,
    flow_terms,
    reconstruction_terms,
)


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
    terms, _ = reconstruction_terms(task.model, task.losses, x, swap_target=None)
    assert "swap_pixel" not in terms
    terms, _ = reconstruction_terms(task.model, task.losses, x, swap_target=torch.zeros_like(x))
    m = task.model
    with torch.no_grad():
        z = m.identity_encoder(x)
        expected = m.render(z.roll(1, dims=0), m.attribute_encoder(x)).abs().mean()
    torch.testing.assert_close(terms["swap_pixel"].detach(), expected, rtol=1e-4, atol=1e-5)


def test_the_joint_phase_reuses_the_phase_one_encodings_with_the_same_losses_and_gradients():
    """The joint step hands phase 1's (z, a, render) to the flow terms instead of computing them again."""
    task = IFADITTask(**_parts(), phase="joint")
    task.losses.swap_identity = 0.0
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    params = [p for p in task.parameters() if p.requires_grad]

    def step(reuse: bool) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        reconstruction, encoded = reconstruction_terms(task.model, task.losses, x)
        torch.manual_seed(7)  # the same training keys both times
        flow = _flow_terms(task, x, encoded if reuse else None, frozen_front=False)
        grads = torch.autograd.grad(sum({**reconstruction, **flow}.values()), params, allow_unused=True)
        return flow, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]

    reused, reused_grads = step(reuse=True)
    fresh, fresh_grads = step(reuse=False)
    assert set(reused) == set(fresh) and {"image", "anonymity", "recovery_image"} <= set(reused)
    for name in fresh:
        torch.testing.assert_close(reused[name], fresh[name], rtol=1e-5, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in fresh_grads[:5])
    for a, b in zip(reused_grads, fresh_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _only(**weights: float) -> LossWeights:
    """Every loss weight 0 except ``weights`` (margins and thresholds keep their defaults)."""
    losses = LossWeights()
    for name in vars(losses):
        if isinstance(getattr(losses, name), float) and name != "margin":
            setattr(losses, name, 0.0)
    for name, value in weights.items():
        setattr(losses, name, value)
    return losses


def _flow_task(**weights: float) -> IFADITTask:
    return IFADITTask(**_parts(), phase="flow", losses=_only(**weights))


def _flow_terms(task: IFADITTask, x: torch.Tensor, encoded=None, adversary=None, frozen_front=None):
    """The phase-2 terms as the task's training step computes them."""
    frozen = task.phase == "flow" if frozen_front is None else frozen_front
    return flow_terms(task.model, task.losses, x, task.sample_keys, encoded, adversary, frozen)


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
        z_anon, _ = m.flow(m.identity_encoder(x), task.sample_keys(4))
        read = m.identity_encoder(as_stored(m.render(z_anon, m.attribute_encoder(x))))
    torch.testing.assert_close(task._replay.pairs, torch.cat((read, z_anon), dim=1))
    # renders only until it is full (6 pairs), then the steps reuse them
    task._replay.loss(m, x, task.sample_keys)
    full = task._replay.pairs.clone()
    assert full.shape == (6, 64) and task._replay.full
    torch.testing.assert_close(full[:4], torch.cat((read, z_anon), dim=1))
    loss = task._replay.loss(m, torch.rand(4, 3, 32, 32), task.sample_keys)
    assert torch.equal(task._replay.pairs, full) and loss.item() > 0


def test_the_compensator_phase_checks_its_parts_and_settings():
    with pytest.raises(ValueError, match="needs the components: compensator"):
        IFADITTask(**_parts(), phase="compensator")
    with pytest.raises(ValueError, match="replay_size and replay_batch must be >= 1"):
        _compensator_task(replay_batch=0)
    with pytest.raises(ValueError, match=r"fits losses\.latent_recovery, which is 0: nothing trains"):
        _compensator_task(latent_recovery=0.0)


def test_latent_two_key_is_the_clamped_cosine_of_two_keys_identities_and_trains_only_the_flow():
    task = _flow_task(latent_two_key=2.0)
    task.losses.margin = -1.0  # no clamp: the plain mean cosine
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.manual_seed(5)
    terms = _flow_terms(task, x)
    assert set(terms) == {"latent_two_key"}
    torch.manual_seed(5)
    with torch.no_grad():
        z = task.model.identity_encoder(x)
        z_a, _ = task.model.flow(z, task.sample_keys(4))
        z_b, _ = task.model.flow(z, task.sample_keys(4))
    cos = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(terms["latent_two_key"].detach(), 2 * cos(z_a, z_b).mean())
    terms["latent_two_key"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.flow.parameters())
    assert all(p.grad is None for p in task.model.generator.parameters())
    assert _flow_terms(_flow_task(), x) == {}  # every weight 0: nothing computed


def test_latent_recovery_trains_the_compensator_and_reaches_the_flow_through_the_render():
    task = _flow_task(latent_recovery=1.0)
    task.model.compensator = registry.create("mappers", "compensator", dim=32, hidden=[16])
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    terms = _flow_terms(task, x)
    assert set(terms) == {"latent_recovery"}
    terms["latent_recovery"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.compensator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.flow.parameters())


def _joint_task(**weights: float) -> IFADITTask:
    joint = IFADITTask(**_parts(), phase="joint", losses=_only(**weights))
    joint.model.compensator = registry.create("mappers", "compensator", dim=32, hidden=[16])
    return joint


@pytest.mark.parametrize("term", ["anonymity", "two_key_diversity", "wrong_key", "recovery_image"])
def test_joint_phase_renders_train_the_flow_encoders_mapper_and_generator(term):
    task = _joint_task(**{term: 1.0})
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.manual_seed(0)
    terms = _flow_terms(task, x)
    assert set(terms) == {term}
    terms[term].backward()
    for part in ("flow", "attribute_encoder", "generator", "mapper"):
        assert _reached(getattr(task.model, part)), part


def test_latent_batch_diversity_is_l_inter_on_the_batch_under_one_fresh_key():
    task = _flow_task(latent_batch_diversity=0.5, diversity_threshold=0.1)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = task.model.identity_encoder(x)
    torch.manual_seed(3)
    terms = _flow_terms(task, x)
    torch.manual_seed(3)
    task.sample_keys(6)  # the anonymizing key comes first
    z_same, _ = task.model.flow(z, task.model.key_scheme.sample(1).expand(6, -1))
    unit = torch.nn.functional.normalize(z_same, dim=1)
    pairs = (unit @ unit.T)[torch.tril(torch.ones(6, 6, dtype=torch.bool), diagonal=-1)]
    torch.testing.assert_close(terms["latent_batch_diversity"], 0.5 * (pairs * (pairs >= 0.1)).sum())
    # six copies of one face: one key sends them to one point, all 15 pairs at cosine 1
    same = _flow_terms(task, x[:1].expand(6, -1, -1, -1))["latent_batch_diversity"]
    torch.testing.assert_close(same.detach(), torch.tensor(7.5), rtol=1e-5, atol=1e-5)


def test_training_keys_per_batch_share_one_fresh_key_per_step():
    task = IFADITTask(**_parts(), phase="flow", training_keys="per_batch")
    first, second = task.sample_keys(5), task.sample_keys(5)
    assert first.shape == (5, 32)
    assert torch.equal(first, first[:1].expand(5, -1))
    assert not torch.allclose(first[0], second[0])
    per_sample = IFADITTask(**_parts(), phase="flow").sample_keys(5)
    assert not torch.allclose(per_sample[0], per_sample[1])
    with pytest.raises(ValueError, match="training_keys must be 'per_sample' or 'per_batch', got 'each'"):
        IFADITTask(**_parts(), phase="flow", training_keys="each")



class _RandomFaces(L.LightningDataModule):
    """24 fixed random 32 px 'faces' in FaceDataModule's batch format."""

    def __init__(self) -> None:
        super().__init__()
        images = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        parameters = torch.rand(24, 86, generator=torch.Generator().manual_seed(1)) * 2 - 1
        self.items = [
            {"image": image, "identity": torch.tensor(i % 6), "parameters": parameters[i]}
            for i, image in enumerate(images)
        ]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=8)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.items[:8], batch_size=8)


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
    adversary = Adversary(critic, 0.0, 16, step=0)
    terms, encoded = reconstruction_terms(m, task.losses, x, adversary=adversary)
    assert set(terms) == {"adversarial"} and len(adversary.fakes) == 1
    softplus = torch.nn.functional.softplus
    with torch.no_grad():
        torch.testing.assert_close(terms["adversarial"], 0.5 * softplus(-critic(encoded.render)).mean())
    terms["adversarial"].backward()
    assert _reached(m.generator) and _reached(m.mapper) and _reached(m.attribute_encoder)
    assert not _reached(critic)
    task.zero_grad(set_to_none=True)
    loss = adversary.critic_loss(x)
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

    def critic_loss(r1: float, step: int) -> torch.Tensor:
        adversary = Adversary(task.discriminator, r1, task.losses.r1_interval, step)
        adversary.fakes.append(fake)
        return adversary.critic_loss(x)

    with_penalty = critic_loss(2.0, step=8)  # a penalty step
    inputs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(task.discriminator(inputs).sum(), inputs)
    without = critic_loss(0.0, step=8)
    torch.testing.assert_close(critic_loss(2.0, step=9), without)  # not every step
    penalty = 2.0 / 2 * 4 * grad.pow(2).flatten(1).sum(dim=1).mean()
    torch.testing.assert_close(with_penalty - without, penalty, rtol=1e-4, atol=1e-6)
    assert penalty > 0


def test_the_anonymized_adversarial_term_trains_the_flow_not_the_frozen_generator():
    task = IFADITTask(**_parts(), phase="flow", discriminator=_critic(),
                      losses=_only(anonymized_adversarial=1.0))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    adversary = Adversary(task.discriminator, 0.0, 16, step=0)
    terms = _flow_terms(task, x, adversary=adversary)
    assert set(terms) == {"anonymized_adversarial"} and len(adversary.fakes) == 1
    terms["anonymized_adversarial"].backward()
    assert _reached(task.model.flow)
    assert not _reached(task.model.generator) and not _reached(task.discriminator)


def test_a_training_step_trains_the_critic_on_the_training_images_as_real(tmp_path, monkeypatch):
    """phase 2, one step: the critic learns on the training images, the frozen generator stays."""
    losses = _only(anonymized_adversarial=1.0)
    task = IFADITTask(**_parts(), phase="flow", discriminator=_critic(), losses=losses)
    seen: list[torch.Tensor] = []
    original = Adversary.critic_loss
    spy = lambda self, real: seen.append(real) or original(self, real)  # noqa: E731
    monkeypatch.setattr(Adversary, "critic_loss", spy)
    critic_before = [p.detach().clone() for p in task.discriminator.parameters()]
    generator_before = [p.detach().clone() for p in task.model.generator.parameters()]
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    data = _RandomFaces()
    trainer.fit(task, data)
    torch.testing.assert_close(seen[0], torch.stack([d["image"] for d in data.items[:8]]))
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
    with pytest.raises(ValueError, match="r1_interval must be >= 1, got 0"):
        IFADITTask(**parts, phase="flow", losses=_only(r1_interval=0))
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


# -- train and eval modes ---

_TRAINED = {
    "recognizer": ("recognizer", "arcface_head"),
    "render": ("parameter_mapper", "generator"),
    "disentangle": ("model.attribute_encoder", "model.mapper", "model.generator"),
    "flow": ("model.flow", "model.compensator"),
    "joint": (
        "model.attribute_encoder", "model.mapper", "model.generator", "model.flow", "model.compensator"
    ),
    "compensator": ("model.compensator",),
}


class _ModeSpy(IFADITTask):
    """Records every module's mode inside its first training step."""

    def training_step(self, batch, batch_idx):
        self.modes = {name: module.training for name, module in self.named_modules() if name}
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("phase", sorted(_TRAINED))
def test_trainable_parts_train_and_frozen_parts_stay_in_eval_mode_inside_training_step(tmp_path, phase):
    parts = _parts()
    parameter_mapper = registry.create("mappers", "parameters", n_parameters=86, n_styles=8, style_dim=32)
    if phase == "recognizer":
        task = _ModeSpy(identity_encoder=parts["identity_encoder"], phase=phase, num_identities=6)
    elif phase == "render":
        task = _ModeSpy(generator=parts["generator"], parameter_mapper=parameter_mapper, phase=phase)
    elif phase == "disentangle":  # with a frozen parameter mapper giving W+ targets
        parts.pop("flow"), parts.pop("key_scheme")
        task = _ModeSpy(**parts, parameter_mapper=parameter_mapper, phase=phase,
                        losses=LossWeights(latent_target=1.0))
    else:
        compensator = registry.create("mappers", "compensator", dim=32, hidden=[16])
        task = _ModeSpy(**parts, compensator=compensator, phase=phase,
                        losses=LossWeights(replay_size=8, replay_batch=4))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(task, _RandomFaces())
    trained = _TRAINED[phase]
    wrong = [
        name for name, training in task.modes.items()
        if training != any(name == part or name.startswith(part + ".") for part in trained)
    ]
    assert not wrong, f"{len(wrong)} modules in the wrong mode, e.g. {wrong[:3]}"
    assert any(task.modes.values())


@pytest.mark.parametrize("phase", ["disentangle", "flow"])
def test_a_validation_step_encodes_each_image_once(phase):
    parts = _parts()
    if phase == "disentangle":
        parts.pop("flow"), parts.pop("key_scheme")
    task = IFADITTask(**parts, phase=phase).eval()
    task.log_dict = lambda *args, **kwargs: None  # no trainer to log to
    m = task.model
    asked: dict[str, set[int]] = {"identity": set(), "attributes": set()}
    computed = {"identity": 0, "attributes": 0}
    for name, encoder in (("identity", m.identity_encoder), ("attributes", m.attribute_encoder)):
        encoder.register_forward_pre_hook(lambda _, args, name=name: asked[name].add(id(args[0])))
        def count(*_, name=name) -> None:
            computed[name] += 1

        next(encoder.children()).register_forward_pre_hook(count)  # runs only when the encoder computes
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        task.validation_step({"image": x, "identity": torch.arange(4)}, 0)
    # phase 1: x and its reconstruction; phase 2: x, the two keys' anonymizations, the reconstruction and
    # the three recoveries (right key, wrong key, one bit off); attributes of x and of the anonymized face
    assert computed["identity"] == len(asked["identity"]) == (2 if phase == "disentangle" else 7)
    assert computed["attributes"] == len(asked["attributes"]) == (1 if phase == "disentangle" else 2)


def test_encoding_each_image_once_recomputes_a_modified_tensor_and_accepts_inference_tensors():
    encoder = torch.nn.Linear(3, 2)
    x = torch.ones(1, 3)
    with encoding_each_image_once(encoder):
        first = encoder(x)
        assert encoder(x) is first and encoder(x.clone()) is not first
        x.mul_(2)  # modified in place: computed again
        torch.testing.assert_close(encoder(x), torch.nn.functional.linear(x, encoder.weight, encoder.bias))
        with torch.inference_mode():
            y = torch.ones(1, 3)
            assert encoder(y) is encoder(y)
    assert "forward" not in vars(encoder)  # the class's forward is back
