"""The plugin registry: built-ins through entry points, short names, errors that list what exists."""

import pytest
import yaml

from ifadit import registry
from ifadit.flows import KeyedFlow
from ifadit.keys import KeyScheme


def test_builtins_are_registered_through_entry_points():
    flows = registry.available("flows")
    assert {"glow", "realnvp", "spline", "allinone"} <= set(flows)
    assert all(flows[n].distribution == "ifadit" for n in ("glow", "realnvp", "spline", "allinone"))
    assert set(registry.available("key_schemes")) >= {"mapping", "bits"}
    for group in registry.GROUPS:
        registry.available(group)  # every group is queryable


def test_every_builtin_loads_and_has_the_right_base_class():
    loaded, broken = registry.load_all("flows")
    assert not [b for b in broken if b.info.distribution == "ifadit"]
    assert all(issubclass(cls, KeyedFlow) for cls in loaded.values())
    schemes, _ = registry.load_all("key_schemes")
    assert all(issubclass(cls, KeyScheme) for cls in schemes.values())


def test_unknown_name_and_group_list_what_exists():
    with pytest.raises(registry.RegistryError) as info:
        registry.get("flows", "glw")
    message = str(info.value)
    assert "'glw'" in message and "glow" in message and "realnvp" in message
    with pytest.raises(registry.RegistryError, match=r"unknown plugin group 'flow'.*flows"):
        registry.available("flow")


def test_name_of_and_class_path():
    cls = registry.get("flows", "glow")
    assert registry.name_of("flows", cls) == "glow"
    assert registry.class_path("flows", "glow") == "ifadit.flows.glow.GlowFlow"


def test_short_names_in_a_yaml_recipe():
    recipe = yaml.safe_load(
        """
        model:
          flow: {class_path: realnvp, init_args: {dim: 8, cond_dim: 4, num_blocks: 2}}
          key_scheme: {class_path: bits, init_args: {dim: 4}}
          other: {class_path: torch.nn.Identity}
        """
    )
    expanded = registry.expand_short_names(recipe, {"flow": "flows", "key_scheme": "key_schemes"})
    assert expanded["model"]["flow"]["class_path"] == "ifadit.flows.realnvp.RealNVPFlow"
    assert expanded["model"]["key_scheme"]["class_path"] == "ifadit.keys.schemes.BitsKeyScheme"
    assert expanded["model"]["other"]["class_path"] == "torch.nn.Identity"
    # Without a group hint a unique short name is still found; a name in several groups is refused.
    assert registry.expand_short_names({"x": {"class_path": "glow"}})["x"]["class_path"].endswith("GlowFlow")
    with pytest.raises(registry.RegistryError, match="ambiguous"):
        registry.expand_short_names({"x": {"class_path": "timm"}})
    flow = registry.instantiate("flows", recipe["model"]["flow"])
    same = registry.instantiate("flows", expanded["model"]["flow"])
    assert type(flow) is type(same) and flow.dim == 8 and flow.cond_dim == 4


def test_instantiate_rejects_a_spec_without_a_target():
    with pytest.raises(registry.RegistryError, match="class_path"):
        registry.instantiate("flows", {"init_args": {}})


def test_one_naming_style_and_the_underscore_spelling_still_finds_a_name():
    ours = [info.name for group in registry.GROUPS for info in registry.available(group).values()
            if info.distribution == "ifadit"]
    assert "arcface-irse50" in registry.available("identity_encoders")
    assert ours and all(name == registry.canonical_name(name) for name in ours)
    arcface = registry.get("identity_encoders", "arcface-irse50")
    assert registry.get("identity_encoders", "arcface_irse50") is arcface
    assert registry.available("recognizers")["facenet_casia"].name == "facenet-casia"
    assert "facenet_casia" in registry.available("recognizers")
    assert registry.class_path("identity_encoders", "ArcFace_IRSE50").endswith("ArcFaceEncoder")


def test_subclass_choices_pick_the_class_a_typed_argument_accepts():
    from ifadit.nets import AttributeEncoder, Generator, IdentityEncoder

    identity = registry.subclass_choices(IdentityEncoder)
    attribute = registry.subclass_choices(AttributeEncoder)
    assert [c.__name__ for c in identity["timm"]] == ["TimmIdentityEncoder"]
    assert [c.__name__ for c in attribute["timm"]] == ["TimmAttributeEncoder"]
    generators = registry.subclass_choices(Generator)
    assert set(generators) == {"stylegan2"} and "glow" not in generators
    assert set(registry.subclass_choices(KeyedFlow)) == set(registry.available("flows"))
