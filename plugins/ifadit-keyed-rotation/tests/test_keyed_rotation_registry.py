"""The plugin reaches ifadit only through its entry point; a broken plugin is reported, never fatal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from ifadit_keyed_rotation import KeyedRotationFlow

from ifadit import registry
from ifadit.flows.base import KeyedFlow

RECIPE = Path(__file__).with_name("flow_recipe.yaml")


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    registry.clear_cache()
    yield
    registry.clear_cache()


def test_installed_plugin_is_discovered_and_created_by_name(fresh_registry: None) -> None:
    info = registry.available("flows")["keyed-rotation"]
    assert info.distribution == "ifadit-keyed-rotation"
    assert info.value == "ifadit_keyed_rotation.flow:KeyedRotationFlow"
    flow = registry.create("flows", "keyed-rotation", dim=8, cond_dim=4, num_blocks=1)
    assert type(flow) is KeyedRotationFlow and isinstance(flow, KeyedFlow)
    assert registry.name_of("flows", KeyedRotationFlow) == "keyed-rotation"


@pytest.mark.parametrize("expand", [False, True], ids=["short-name", "expanded-class-path"])
def test_selected_from_a_recipe(fresh_registry: None, expand: bool) -> None:
    cfg = yaml.safe_load(RECIPE.read_text())
    if expand:
        cfg = registry.expand_short_names(cfg, {"flow": "flows"})
        assert cfg["flow"]["class_path"] == "ifadit_keyed_rotation.flow.KeyedRotationFlow"
    flow = registry.instantiate("flows", cfg["flow"])
    assert isinstance(flow, KeyedRotationFlow)
    assert (flow.dim, flow.cond_dim, flow.reflections, flow.base_name) == (16, 8, 4, "glow")
    assert registry.name_of("flows", type(flow.base)) == "glow"
    z, key = torch.randn(8, 16), torch.randn(8, 8)
    z_anon, _ = flow(z, key)
    assert torch.allclose(flow.inverse(z_anon, key), z, atol=1e-5)


def test_broken_entry_point_is_reported_and_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None
) -> None:
    dist_info = tmp_path / "broken_flow_dist-0.0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-flow-dist\nVersion: 0.0.1\n")
    (dist_info / "entry_points.txt").write_text("[ifadit.flows]\nbroken_flow = nonexistent_module_xyz:Nope\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.clear_cache()

    names = registry.available("flows")
    assert names["broken_flow"].distribution == "broken-flow-dist"
    loaded, broken = registry.load_all("flows")
    assert set(loaded) == set(names) - {"broken_flow"}
    assert {"keyed-rotation", "realnvp", "glow"} <= set(loaded)
    assert [b.info.name for b in broken] == ["broken_flow"]
    assert broken[0].info.distribution == "broken-flow-dist"
    assert broken[0].error == "ModuleNotFoundError: No module named 'nonexistent_module_xyz'"

    with pytest.raises(registry.RegistryError) as caught:
        registry.get("flows", "broken_flow")
    for fragment in ("'broken_flow'", "'broken-flow-dist'", "nonexistent_module_xyz"):
        assert fragment in str(caught.value)
    assert isinstance(caught.value.__cause__, ImportError)
    assert isinstance(registry.create("flows", "keyed-rotation", dim=4, cond_dim=2, num_blocks=1), KeyedFlow)


def test_unknown_name_lists_available_flows(fresh_registry: None) -> None:
    with pytest.raises(registry.RegistryError, match="no flows component named 'no_such_flow'") as caught:
        registry.get("flows", "no_such_flow")
    listed = str(caught.value).split("available: ", 1)[1].split(", ")
    assert listed == sorted(registry.available("flows"))
    assert "keyed-rotation" in listed
