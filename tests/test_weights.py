"""The checkpoint resolver, the by-name loader's errors, and the weights report."""

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from ifadit.weights import (
    MANIFEST,
    WeightsError,
    WeightSpec,
    load_checkpoint,
    load_state_dict_by_name,
    resolve,
    sha256_of,
    strip_prefix,
    weights_dir,
)
from ifadit.weights_report import (
    MISMATCH,
    NOT_CHECKED,
    NOT_PRESENT,
    NOT_PUBLISHED,
    VERIFIED,
    format_weights_report,
    weights_report,
)

CONTENT = b"pretend checkpoint bytes"
CONTENT_SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "weights"
    path.mkdir()
    monkeypatch.setenv("IFADIT_WEIGHTS", str(path))
    return path


@pytest.fixture()
def spec(monkeypatch: pytest.MonkeyPatch) -> WeightSpec:
    entry = WeightSpec(
        name="test-net",
        filename="test_net.pt",
        layout="test-layout",
        source="https://example.org/test_net.pt",
        sha256=CONTENT_SHA,
        description="a test network",
    )
    monkeypatch.setitem(MANIFEST, entry.name, entry)
    return entry


def test_weights_dir_follows_ifadit_weights_then_xdg_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("IFADIT_WEIGHTS", str(tmp_path / "mine"))
    assert weights_dir() == tmp_path / "mine"
    monkeypatch.delenv("IFADIT_WEIGHTS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert weights_dir() == tmp_path / "cache" / "ifadit" / "weights"


def test_missing_file_error_names_file_folder_source_and_sha(folder: Path, spec: WeightSpec) -> None:
    with pytest.raises(WeightsError) as info:
        resolve(spec.name)
    message = str(info.value)
    for fragment in (
        "test_net.pt",
        str(folder),
        "IFADIT_WEIGHTS",
        spec.source,
        CONTENT_SHA,
        "a test network",
    ):
        assert fragment in message


def test_missing_file_without_published_sha_says_so(folder: Path, monkeypatch) -> None:
    monkeypatch.setitem(MANIFEST, "no-sha", WeightSpec("no-sha", "x.pt", "plain", "somewhere"))
    with pytest.raises(WeightsError, match="expected sha256 not published"):
        resolve("no-sha")


def test_resolves_from_the_env_folder_and_verifies_sha(folder: Path, spec: WeightSpec) -> None:
    (folder / spec.filename).write_bytes(CONTENT)
    assert resolve(spec.name, verify=True) == folder / spec.filename
    (folder / spec.filename).write_bytes(CONTENT + b"!")
    assert resolve(spec.name) == folder / spec.filename  # no hashing unless asked
    with pytest.raises(WeightsError, match=f"expected {CONTENT_SHA}"):
        resolve(spec.name, verify=True)


def test_explicit_path_wins_and_a_missing_one_is_reported_with_the_manifest_hint(
    tmp_path: Path, folder: Path, spec: WeightSpec
) -> None:
    own = tmp_path / "elsewhere.pt"
    own.write_bytes(CONTENT)
    assert resolve(spec.name, own) == own
    with pytest.raises(WeightsError) as info:
        resolve(spec.name, tmp_path / "absent.pt")
    assert str(tmp_path / "absent.pt") in str(info.value) and spec.source in str(info.value)


def test_unknown_name_lists_the_known_ones(spec: WeightSpec) -> None:
    with pytest.raises(WeightsError, match=r"unknown checkpoint 'nope'.*test-net"):
        resolve("nope")


def test_sha256_of_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(CONTENT * 1000)
    assert sha256_of(path, chunk=7) == hashlib.sha256(CONTENT * 1000).hexdigest()


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        load_checkpoint(garbage)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.second = nn.Linear(4, 2)


def test_wrong_shape_names_the_first_mismatching_key_and_both_shapes() -> None:
    module = _Tiny()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    state["second.weight"] = torch.zeros(5, 4)
    state["second.bias"] = torch.zeros(5)
    with pytest.raises(WeightsError) as info:
        load_state_dict_by_name(module, state, what="tiny.pt")
    message = str(info.value)
    assert "'second.weight'" in message and "(5, 4)" in message and "(2, 4)" in message
    assert "tiny.pt" in message and "_Tiny" in message


def test_missing_and_unexpected_keys_are_named() -> None:
    module = _Tiny()
    state = dict(module.state_dict())
    del state["first.bias"]
    with pytest.raises(WeightsError, match=r"'first\.bias' \(shape \(4,\)\) is missing"):
        load_state_dict_by_name(module, state)
    state = dict(module.state_dict(), extra=torch.zeros(1))
    with pytest.raises(WeightsError, match="unexpected key 'extra'"):
        load_state_dict_by_name(module, state)
    load_state_dict_by_name(module, state, strict=False)  # non-strict ignores the extra key


def test_by_name_load_copies_values_regardless_of_order() -> None:
    source, target = _Tiny(), _Tiny()
    shuffled = dict(reversed(list(source.state_dict().items())))
    load_state_dict_by_name(target, shuffled)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)


def test_strip_prefix_keeps_only_the_prefixed_entries() -> None:
    state = {"encoder.a": 1, "encoder.b.c": 2, "decoder.a": 3}
    assert strip_prefix(state, "encoder.") == {"a": 1, "b.c": 2}


def test_weights_report_lists_presence_and_sha_status(folder: Path, spec: WeightSpec, monkeypatch) -> None:
    monkeypatch.setitem(MANIFEST, "bad-sha", WeightSpec("bad-sha", "bad.pt", "plain", "src", sha256="0" * 64))
    monkeypatch.setitem(MANIFEST, "no-sha", WeightSpec("no-sha", "nosha.pt", "plain", "src"))
    monkeypatch.setitem(MANIFEST, "absent", WeightSpec("absent", "absent.pt", "plain", "get it here"))
    (folder / "test_net.pt").write_bytes(CONTENT)
    (folder / "bad.pt").write_bytes(CONTENT)
    (folder / "nosha.pt").write_bytes(CONTENT)

    rows = {row.name: row for row in weights_report(load_modules=False)}
    assert rows["test-net"].present and rows["test-net"].sha256 == VERIFIED
    assert rows["bad-sha"].sha256 == MISMATCH
    assert rows["no-sha"].sha256 == NOT_PUBLISHED
    assert not rows["absent"].present and rows["absent"].sha256 == NOT_PRESENT
    assert rows["test-net"].path == folder / "test_net.pt"
    assert rows["test-net"].layout == "test-layout" and rows["test-net"].source == spec.source
    unhashed = {row.name: row for row in weights_report(verify=False, load_modules=False)}
    assert unhashed["test-net"].sha256 == NOT_CHECKED

    text = format_weights_report(list(rows.values()))
    assert str(folder) in text and "absent.pt: get it here" in text
    line = next(line for line in text.splitlines() if line.startswith("bad-sha"))
    assert "bad.pt" in line and "yes" in line and MISMATCH in line


def test_weights_report_imports_the_modules_that_register_entries(folder: Path) -> None:
    rows = {row.name: row for row in weights_report(verify=False)}
    for name in ("facenet-vggface2", "facenet-casia", "ifadit-mapper", "ifadit-flow", "ifadit-compensator"):
        assert name in rows and not rows[name].present
    assert rows["ifadit-flow"].layout == "ifadit-official"
    assert rows["facenet-casia"].layout == "facenet-pytorch"
