"""Official iFADIT release loaders: files written in the official layout load strictly by name."""

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# Facts: the official test code reads every file with torch.load and iterates `.items()` calling `.size()`
# on each value (utils/utils.py:loading_pretrianed), so the files are flat tensor mappings. The names below
# are the state-dict names of the official modules they were saved from.
from official_layouts import FUSE_MLP, G_NET_BLOCK, MLP_BEST, random_flow_state, random_state

from ifadit.flows.allinone import AllInOneFlow
from ifadit.nets.mappers import CompensationMLP, LatentMapper
from ifadit.nets.psp import GradualStyleEncoder, n_styles_for
from ifadit.release import (
    OfficialAttributeEncoder,
    load_official_attribute_encoder,
    load_official_compensator,
    load_official_flow,
    load_official_mapper,
    read_official_state_dict,
)
from ifadit.weights import MANIFEST, WeightsError


@pytest.fixture(autouse=True)
def _empty_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("IFADIT_WEIGHTS", str(tmp_path / "weights"))


def _official_mlp(state: dict[str, torch.Tensor], x: torch.Tensor, layers: int) -> torch.Tensor:
    """The official forward: Linear layers at indices 0, 2, 4... with LeakyReLU(0.2) between them."""
    for i in range(layers):
        x = F.linear(x, state[f"model.{2 * i}.weight"], state[f"model.{2 * i}.bias"])
        if i < layers - 1:
            x = F.leaky_relu(x, 0.2)
    return x


def test_manifest_entries_for_the_release() -> None:
    expected = {
        "ifadit-attr-encoder": "attr_best.pth",
        "ifadit-mapper": "mlp_best.pth",
        "ifadit-flow": "G_net_ffhq15INN607_20_202528.pth",
        "ifadit-compensator": "fuse_mlp_ffhq15INN607_20_202528.pth",
    }
    for name, filename in expected.items():
        spec = MANIFEST[name]
        assert spec.filename == filename
        assert spec.layout == "ifadit-official"
        assert spec.sha256 is None
        assert "lixionga/ProFace" in spec.source and "drive.google.com" in spec.source


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda s: s, id="plain"),
        pytest.param(lambda s: {f"module.{k}": v for k, v in s.items()}, id="data-parallel"),
        pytest.param(lambda s: {"net": {f"module.{k}": v for k, v in s.items()}}, id="net-container"),
        pytest.param(lambda s: {f"mlp.{k}": v for k, v in s.items()}, id="common-prefix"),
    ],
)
def test_mapper_file_loads_by_name_and_reproduces_the_official_forward(tmp_path: Path, wrap) -> None:
    state = random_state(MLP_BEST)
    path = tmp_path / "mlp_best.pth"
    torch.save(wrap(state), path)
    mapper = load_official_mapper(path)
    assert isinstance(mapper, LatentMapper) and not mapper.training

    identity = torch.randn(2, 512)
    attributes = torch.randn(2, 14, 512)
    concatenated = torch.cat((identity[:, None].expand(2, 14, 512), attributes), dim=2)  # get_concat_vec
    with torch.no_grad():
        torch.testing.assert_close(mapper(identity, attributes), _official_mlp(state, concatenated, 2))


def test_compensator_file_loads_from_the_weights_folder(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "release"
    folder.mkdir()
    monkeypatch.setenv("IFADIT_WEIGHTS", str(folder))
    state = random_state(FUSE_MLP, seed=1)
    torch.save(state, folder / "fuse_mlp_ffhq15INN607_20_202528.pth")
    compensator = load_official_compensator()
    assert isinstance(compensator, CompensationMLP)
    x = torch.randn(3, 512)
    with torch.no_grad():
        torch.testing.assert_close(compensator(x), _official_mlp(state, x, 4))


def test_missing_release_file_names_it_and_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        load_official_mapper()
    message = str(info.value)
    assert "mlp_best.pth" in message and str(tmp_path / "weights") in message
    assert "drive.google.com" in message and "not published" in message


def test_renamed_keys_fail_by_name_and_point_to_positional_matching(tmp_path: Path) -> None:
    # Same tensors in the same order under other names: what the official positional loader would accept.
    state = random_state(FUSE_MLP, seed=2)
    renamed = {f"fc{i}": v for i, v in enumerate(state.values())}
    path = tmp_path / "fuse.pth"
    torch.save(renamed, path)
    with pytest.raises(WeightsError, match=r"'model\.0\.weight'.*match='position' would load it"):
        load_official_compensator(path)
    compensator = load_official_compensator(path, match="position")
    x = torch.randn(2, 512)
    with torch.no_grad():
        torch.testing.assert_close(compensator(x), _official_mlp(state, x, 4))


def test_positional_matching_refuses_files_that_do_not_line_up(tmp_path: Path) -> None:
    path = tmp_path / "mlp_best.pth"
    torch.save(random_state(FUSE_MLP), path)
    with pytest.raises(WeightsError, match="match='position' needs"):
        load_official_mapper(path, match="position")
    with pytest.raises(WeightsError, match=r"shape \(1024, 512\) in the file but \(512, 1024\)"):
        load_official_mapper(path)


def test_pickled_module_or_foreign_container_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "weird.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 1.0}}, path)
    with pytest.raises(WeightsError, match=r"not a state dict.*'epoch'"):
        read_official_state_dict(path)
    module_path = tmp_path / "module.pth"
    torch.save(LatentMapper(id_dim=2, style_dim=2, n_styles=1, hidden=2), module_path)
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        load_official_mapper(module_path)


def test_flow_file_from_the_key_list_loads_strictly_and_round_trips(tmp_path: Path) -> None:
    state = random_flow_state(seed=4)
    path = tmp_path / "G_net_ffhq15INN607_20_202528.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)

    flow = load_official_flow(path)
    assert isinstance(flow, AllInOneFlow)
    assert (flow.dim, flow.cond_dim, flow.num_blocks) == (512, 512, 4)
    assert sum(p.numel() for p in flow.parameters() if p.requires_grad) == 1_647_616
    torch.testing.assert_close(flow.module_list[2].w_perm, state["module_list.2.w_perm"])
    z, key = torch.randn(3, 512), torch.randn(3, 512)
    with torch.no_grad():
        z_anon, _ = flow(z, key)
        torch.testing.assert_close(flow.inverse(z_anon, key), z, atol=1e-5, rtol=1e-5)


def _official_freia_flow():
    # FrEIA is the `bench` extra, which `make test` installs: this comparison always runs.
    import FrEIA.framework as framework
    import FrEIA.modules as modules

    def subnet_fc(dims_in: int, dims_out: int) -> torch.nn.Sequential:
        widths = (dims_in, 256, 128, 128, 256)
        layers: list[torch.nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.LeakyReLU(0.01)]
        return torch.nn.Sequential(*layers, torch.nn.Linear(256, dims_out))

    flow = framework.SequenceINN(512)
    for _ in range(4):
        flow.append(modules.AllInOneBlock, cond=0, cond_shape=(512,), subnet_constructor=subnet_fc)
    with torch.no_grad():  # move the global affine away from its init so it is really tested
        for block in flow.module_list:
            block.global_scale.add_(0.3 * torch.randn_like(block.global_scale))
            block.global_offset.normal_(0.0, 0.1)
    return flow.eval()


def test_flow_saved_by_a_real_freia_sequence_inn_reproduces_it(tmp_path: Path) -> None:
    freia_flow = _official_freia_flow()
    assert {k.split(".", 2)[2] for k in freia_flow.state_dict()} == set(G_NET_BLOCK)
    path = tmp_path / "G_net.pth"
    torch.save({f"module.{k}": v for k, v in freia_flow.state_dict().items()}, path)  # DataParallel-saved

    flow = load_official_flow(path)
    z = torch.randn(4, 512)
    key = torch.rand(1, 512).expand(4, 512)  # one key for the batch, as the official test does
    with torch.no_grad():
        expected, expected_logdet = freia_flow(z, c=[key])
        z_anon, logdet = flow(z, key)
        torch.testing.assert_close(z_anon, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logdet, expected_logdet.expand(4), atol=1e-4, rtol=1e-5)
        expected_back, _ = freia_flow(z_anon, c=[key], rev=True)
        torch.testing.assert_close(flow.inverse(z_anon, key), expected_back, atol=1e-5, rtol=1e-5)


def _randomized_psp(n_styles: int) -> GradualStyleEncoder:
    with torch.device("meta"):  # every tensor is overwritten below: skip the costly default init
        encoder = GradualStyleEncoder(n_styles)
    encoder.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, tensor in encoder.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("num_batches_tracked"):
                tensor.zero_()
            else:
                tensor.copy_(0.05 * torch.randn(tensor.shape, generator=generator))
    return encoder.eval()


def test_attribute_encoder_from_the_official_psp_state_dict(tmp_path: Path) -> None:
    n_styles = n_styles_for(4)  # the smallest GradualStyleEncoder (2 styles) keeps the file small
    saver = _randomized_psp(n_styles)
    # attr_best.pth: the whole pSp module's state dict, encoder.* then decoder.* (the generator).
    state = {f"encoder.{k}": v for k, v in saver.state_dict().items()}
    state["decoder.style.1.weight"] = torch.randn(8, 8)
    path = tmp_path / "attr_best.pth"
    torch.save(state, path)

    encoder = load_official_attribute_encoder(path, input_size=64)
    assert isinstance(encoder, OfficialAttributeEncoder)
    assert encoder.n_styles == n_styles and not encoder.encoder.add_latent_avg
    assert not any(p.requires_grad for p in encoder.parameters())
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        codes = encoder(images)
        expected = saver((images + 1) / 2)  # the official pipeline feeds pSp images in [0, 1]
    assert codes.shape == (2, n_styles, 512)
    torch.testing.assert_close(codes, expected, atol=1e-4, rtol=1e-4)


def test_attribute_encoder_refuses_a_file_without_style_blocks(tmp_path: Path) -> None:
    path = tmp_path / "attr_best.pth"
    torch.save({"encoder.input_layer.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(WeightsError, match="not a pSp state dict"):
        load_official_attribute_encoder(path)
