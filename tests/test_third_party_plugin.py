"""The worked example of docs/plugins.md is a working third-party flow plugin: its files are taken from the
page alone, made importable with a hand-made ``.dist-info`` (what ``pip install`` writes, without the
network or a build), found by the registry under its entry-point name, held to ``ifadit.testing``'s flow
contract, and its own test file passes under pytest in a fresh process."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ifadit import registry
from ifadit.flows.base import KeyedFlow
from ifadit.testing import check_flow

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
MARKED_BLOCK = re.compile(r"<!-- file: (?P<path>[^ ]+) -->\n```[a-z]*\n(?P<body>.*?)\n```", re.DOTALL)
PROJECT = "ifadit-keyed-coupling"


def example_files() -> dict[str, str]:
    """The example package as the page gives it: {relative path: contents}."""
    files = {m["path"]: m["body"] + "\n" for m in MARKED_BLOCK.finditer(DOC.read_text(encoding="utf-8"))}
    assert files, f"no '<!-- file: ... -->' blocks in {DOC}"
    return files


def _toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(text)


def install_without_pip(root: Path) -> tuple[Path, dict]:
    """Write the example under ``root`` and a ``.dist-info`` beside its package, as an install would:
    METADATA (name, version) and entry_points.txt from the pyproject's entry-point tables. Returns the
    folder to put on sys.path and the parsed pyproject."""
    for relative, text in example_files().items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    pyproject = _toml((root / PROJECT / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    site = root / PROJECT / pyproject["tool"]["setuptools"]["packages"]["find"]["where"][0]
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n", encoding="utf-8"
    )
    sections = [
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
        for group, entries in project["entry-points"].items()
    ]
    (dist_info / "entry_points.txt").write_text("\n".join(sections), encoding="utf-8")
    return site, pyproject


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, dict]]:
    site, pyproject = install_without_pip(tmp_path)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    registry.clear_cache()
    yield site, pyproject
    registry.clear_cache()
    for module in [m for m in sys.modules if m == "keyed_coupling" or m.startswith("keyed_coupling.")]:
        del sys.modules[module]


def test_the_page_gives_a_whole_package() -> None:
    assert set(example_files()) == {
        f"{PROJECT}/pyproject.toml",
        f"{PROJECT}/src/keyed_coupling/__init__.py",
        f"{PROJECT}/src/keyed_coupling/flow.py",
        f"{PROJECT}/tests/test_keyed_coupling.py",
    }


def test_registered_found_and_keeps_the_flow_contract(installed: tuple[Path, dict]) -> None:
    _, pyproject = installed
    assert pyproject["project"]["entry-points"]["ifadit.flows"] == {
        "keyed-coupling": "keyed_coupling.flow:KeyedCouplingFlow"
    }
    info = registry.available("flows")["keyed-coupling"]
    assert (info.distribution, info.value) == (PROJECT, "keyed_coupling.flow:KeyedCouplingFlow")
    cls = registry.get("flows", "keyed-coupling")
    assert issubclass(cls, KeyedFlow) and cls.__module__ == "keyed_coupling.flow"
    assert registry.name_of("flows", cls) == info.name == "keyed-coupling"
    assert registry.class_path("flows", "keyed-coupling") == "keyed_coupling.flow.KeyedCouplingFlow"
    report = check_flow("keyed-coupling")
    assert "round_trip_float32" in report.passed and "logdet_matches_jacobian" in report.passed
    assert not report.skipped
    flow = registry.instantiate(
        "flows", {"class_path": "keyed-coupling", "init_args": {"dim": 8, "cond_dim": 4, "num_blocks": 2}}
    )
    assert isinstance(flow, cls) and flow.perms.shape == (2, 8)


def test_the_examples_own_tests_pass(installed: tuple[Path, dict], tmp_path: Path) -> None:
    site, _ = installed
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    tests = tmp_path / PROJECT / "tests"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        cwd=tmp_path / PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout
