"""Sweep specs: a base recipe, overrides, a grid and/or variants, and seeds -> one resolved config per child.

A spec is YAML (see ``benchmarks/ablations.yaml``)::

    name: quickstart-ablations            # the parent run's name; results in benchmarks/results/<name>/
    experiment: ifadit-sweeps             # MLflow experiment (default ifadit-sweeps)
    base: recipes/quickstart/flow.yaml    # the LightningCLI recipe every child starts from
    prerequisites:                        # fits run once before the children, skipped when `creates` exists
      - {config: recipes/quickstart/disentangle.yaml, creates: outputs/.../last.ckpt, overrides: {...}}
    overrides: {trainer.max_steps: 300}   # every child
    grid:                                 # axes, crossed: {label: overrides} or a list of values of a key
      flow: [allinone, realnvp]           #   -> model.flow: realnvp (a component switch)
      ablation: {full: {}, no-privacy: {model.losses.anonymity: 0}}
    variants: {single-phase: {model.phase: joint}}   # extra children, each alone (not crossed)
    seeds: [0, 1]                         # seed_everything; every setting runs once per seed
    scoring: {stage: test, judge: {recognizer: synthfaces64-judge, max_batches: 25}}
    summary: {metrics: ["test/*", "judge/*"], exclude: ["*/pairs"], families: {anonymity: "anon|privacy"}}
    keep_checkpoints: last                # last | all | none, per child once it is scored

Overrides (dotted keys, component switches by class name) are merged as :mod:`ifadit.sweep.overrides`
describes.

Paths in a spec are read relative to the current folder, as in recipes; a recipe path (``base``, a
prerequisite's ``config``, the ``config=`` of a judge ``CKPT:config=RECIPE``) that does not exist there is
looked up beside the spec file and then in the folders above it, so ``benchmarks/x.yaml`` may name
``recipes/...`` and ``tests/conf/x.yaml`` may name ``flow.yaml``. Outputs (``creates``, checkpoints) always
go under the current folder.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ifadit.lightning_cli import COMPONENT_GROUPS
from ifadit.sweep.overrides import (
    SweepSpecError,
    apply_overrides,
    expand_dotted,
    flatten,
    merge_component,
    parse_set_option,
    plain_merge,
)

__all__ = [
    "CHILD_DEFAULTS",
    "DEFAULT_EXCLUDE",
    "DEFAULT_EXPERIMENT",
    "KEEP_CHECKPOINTS",
    "SCORING_STAGES",
    "Combination",
    "Judge",
    "Prerequisite",
    "SweepSpec",
    "SweepSpecError",
    "apply_overrides",
    "config_hash",
    "expand_dotted",
    "flatten",
    "load_spec",
    "merge_component",
    "parse_set_option",
    "parse_spec",
]

DEFAULT_EXPERIMENT = "ifadit-sweeps"
SCORING_STAGES = ("test", "validate", "none")
KEEP_CHECKPOINTS = ("last", "all", "none")
_SPEC_KEYS = {
    "name", "experiment", "description", "base", "prerequisites", "overrides", "grid", "variants", "seeds",
    "scoring", "summary", "keep_checkpoints",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Counts the metrics suite reports beside its metrics (pairs scored, gallery size): not summarized.
DEFAULT_EXCLUDE = ("*/pairs", "*/gallery", "*/nonfinite")
# What a sweep sets in every child before the spec's own overrides: progress bars only clutter a sweep's log.
CHILD_DEFAULTS: dict[str, Any] = {"trainer": {"enable_progress_bar": False}}


def config_hash(config: Mapping[str, Any]) -> str:
    """12 hex digits naming a resolved child: same content, same hash, in any process."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- the spec ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prerequisite:
    """A fit run once before the children (the shared phase-1 checkpoint); skipped if ``creates`` exists."""

    config: Path
    creates: Path
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Judge:
    """A recognizer trained apart that scores every child (``ifadit.evaluation.evaluate_headline``).

    ``recognizer`` is a spec as ``ifadit.recognizers.build_recognizer`` reads it: a registered name (the
    shipped ``synthfaces64-judge``) or ``CKPT:config=RECIPE``, a recognizer checkpoint ifadit trained and
    its recipe."""

    recognizer: str
    split: str = "test"
    max_batches: int | None = None

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint file the spec names, if it names one (it may not exist before the prerequisites)."""
        from ifadit.recognizers.spec import is_checkpoint_path, parse_recognizer_spec

        head, _ = parse_recognizer_spec(self.recognizer)
        return Path(head) if is_checkpoint_path(head) else None


@dataclass
class Combination:
    """One child: a setting (its label and axis choices) at one seed, with its resolved recipe."""

    label: str
    seed: int | None
    choices: dict[str, str]
    overrides: dict[str, Any]
    config: dict[str, Any]
    hash: str

    @property
    def run_name(self) -> str:
        return self.label if self.seed is None else f"{self.label} s{self.seed}"

    @property
    def slug(self) -> str:
        """A folder name for the child: its run name made path-safe, plus its hash."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", self.run_name).strip("-") or "child"
        return f"{safe}-{self.hash[:8]}"


@dataclass
class SweepSpec:
    name: str
    base: Path
    path: Path | None = None
    text: str = ""
    experiment: str = DEFAULT_EXPERIMENT
    description: str = ""
    prerequisites: list[Prerequisite] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    axes: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = field(default_factory=list)
    variants: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=lambda: [None])
    scoring_stage: str = "test"
    judge: Judge | None = None
    metric_patterns: list[str] = field(default_factory=list)
    metric_exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    families: dict[str, str] = field(default_factory=dict)
    keep_checkpoints: str = "last"

    def settings(self) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
        """(label, axis choices, merged overrides) of every setting: the grid's product, then the variants."""
        out: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        if self.axes:
            names = [axis for axis, _ in self.axes]
            for picks in itertools.product(*(values for _, values in self.axes)):
                merged: dict[str, Any] = {}
                for _, overrides in picks:
                    merged = plain_merge(merged, expand_dotted(overrides))
                label = "/".join(label for label, _ in picks)
                out.append((label, dict(zip(names, (lbl for lbl, _ in picks), strict=True)), merged))
        for label, overrides in self.variants:
            out.append((label, {"variant": label}, expand_dotted(overrides)))
        if not out:
            out.append(("base", {}, {}))
        labels = [label for label, _, _ in out]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise SweepSpecError(f"two settings share the label(s) {duplicates}: rename a variant or a value")
        return out

    def base_config(self) -> dict[str, Any]:
        try:
            config = yaml.safe_load(self.base.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SweepSpecError(f"cannot read base recipe {self.base}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise SweepSpecError(f"{self.base} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(config, dict):
            raise SweepSpecError(f"{self.base} must hold a mapping at the top level")
        return config

    def combinations(self, extra: Mapping[str, Any] | None = None) -> list[Combination]:
        """Every child, in order: settings × seeds. ``extra`` (``--set``) goes on last, before the seed.

        The hash covers the whole resolved recipe and how it is scored (stage, judge), so a child reruns when
        anything that shapes its numbers changes (the base recipe, an override, ``--set``, the judge), and
        only then; a setting's label is not part of it (renaming a variant reruns nothing)."""
        scoring = {"stage": self.scoring_stage, "judge": asdict(self.judge) if self.judge else None}
        base = apply_overrides(self.base_config(), CHILD_DEFAULTS)
        base = apply_overrides(base, self.overrides)
        combos = []
        for label, choices, overrides in self.settings():
            for seed in self.seeds:
                config = apply_overrides(base, overrides)
                if extra:
                    config = apply_overrides(config, extra)
                if seed is not None:
                    config["seed_everything"] = seed
                key = config_hash({"recipe": config, "scoring": scoring})
                combos.append(Combination(label, seed, dict(choices), overrides, config, key))
        seen: dict[str, str] = {}
        for combo in combos:  # one recipe, one child: two labels for it would share (and fight over) a run
            if combo.hash in seen:
                raise SweepSpecError(f"settings {seen[combo.hash]!r} and {combo.run_name!r} give the same "
                                     "recipe: drop one or make them differ")
            seen[combo.hash] = combo.run_name
        return combos


def _resolve(path: Any, spec_dir: Path | None, what: str, must_exist: bool = True) -> Path:
    if not isinstance(path, str) or not path:
        raise SweepSpecError(f"{what} must be a path, got {path!r}")
    candidate = Path(path)
    if must_exist and not candidate.is_absolute() and not candidate.exists() and spec_dir is not None:
        for folder in (spec_dir, *spec_dir.resolve().parents):
            if (folder / candidate).exists():
                return folder / candidate
    return candidate


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SweepSpecError(f"{what} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _axis_values(axis: str, values: Any) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(values, Mapping):
        out = []
        for label, overrides in values.items():
            out.append((str(label), _mapping(overrides, f"grid.{axis}.{label}")))
        return out
    if isinstance(values, Sequence) and not isinstance(values, str):
        key = f"model.{axis}" if axis in COMPONENT_GROUPS else axis
        return [(str(value), {key: value}) for value in values]
    raise SweepSpecError(f"grid.{axis} must be a mapping {{label: overrides}} or a list of values")


_JUDGE_KEYS = ("recognizer", "split", "max_batches")


def _judge_recognizer(spec: Any, spec_dir: Path | None) -> str:
    """The judge's recognizer spec, checked without building anything, with the ``config=`` recipe of a
    checkpoint looked up as recipe paths are (beside the spec file and above)."""
    from ifadit import registry
    from ifadit.recognizers.spec import is_checkpoint_path, parse_recognizer_spec, replace_recognizer_argument

    if not isinstance(spec, str) or not spec.strip():
        raise SweepSpecError(
            f"scoring.judge.recognizer must be a recognizer name or CKPT:config=RECIPE, got {spec!r}"
        )
    spec = spec.strip()
    try:
        head, kwargs = parse_recognizer_spec(spec)
    except ValueError as exc:
        raise SweepSpecError(f"scoring.judge.recognizer: {exc}") from None
    if head in registry.available("recognizers"):
        return spec
    if not is_checkpoint_path(head):
        names = ", ".join(registry.available("recognizers")) or "(none)"
        raise SweepSpecError(f"scoring.judge.recognizer: no recognizer named {head!r} and no such checkpoint "
                             f"file (a checkpoint ends in .ckpt); registered: {names}")
    if "config" not in kwargs and "identity_encoder" not in kwargs:
        raise SweepSpecError(f"scoring.judge.recognizer: the checkpoint {head} needs the recipe it was "
                             f"trained with: '{head}:config=RECIPE.yaml'")
    config = kwargs.get("config")
    if not isinstance(config, str):
        return spec
    resolved = str(_resolve(config, spec_dir, "scoring.judge.recognizer config"))
    if resolved == config:
        return spec
    return replace_recognizer_argument(spec, "config", resolved)


def _judge(j: dict[str, Any], spec_dir: Path | None) -> Judge:
    if {"config", "ckpt"} & set(j):
        here = (f' (here recognizer: "{j["ckpt"]}:config={j["config"]}")'
                if isinstance(j.get("ckpt"), str) and isinstance(j.get("config"), str) else "")
        raise SweepSpecError("scoring.judge no longer takes config and ckpt: write "
                             f"recognizer: CKPT:config=RECIPE instead{here}, or "
                             "recognizer: synthfaces64-judge for the shipped judge")
    if "recognizer" not in j or set(j) - set(_JUDGE_KEYS):
        raise SweepSpecError(
            f"scoring.judge takes recognizer (required), split, max_batches; got {sorted(j)}"
        )
    split = j.get("split", "test")
    if split not in ("test", "val"):
        raise SweepSpecError(f"scoring.judge.split must be test or val, got {split!r}")
    max_batches = j.get("max_batches")
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise SweepSpecError(f"scoring.judge.max_batches must be a positive integer, got {max_batches!r}")
    return Judge(_judge_recognizer(j["recognizer"], spec_dir), split, max_batches)


def parse_spec(data: Any, path: Path | None = None, text: str = "", name: str | None = None) -> SweepSpec:
    """A :class:`SweepSpec` from YAML-loaded data; every error is one line naming the key."""
    source = str(path) if path else "sweep spec"
    if not isinstance(data, Mapping):
        raise SweepSpecError(f"{source} must hold a mapping at the top level")
    unknown = sorted(set(data) - _SPEC_KEYS)
    if unknown:
        raise SweepSpecError(f"{source}: unknown key(s) {unknown}; known: {sorted(_SPEC_KEYS)}")
    spec_dir = path.parent if path else None
    name = name or data.get("name") or (path.stem if path else None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise SweepSpecError(f"{source}: name must be letters, digits, '.', '_' or '-', got {name!r}")
    if "base" not in data:
        raise SweepSpecError(f"{source}: 'base' (the recipe every child starts from) is missing")
    prerequisites = []
    for i, item in enumerate(data.get("prerequisites") or []):
        item = _mapping(item, f"prerequisites[{i}]")
        missing = {"config", "creates"} - set(item)
        if missing or set(item) - {"config", "creates", "overrides"}:
            raise SweepSpecError(f"prerequisites[{i}] takes config, creates and overrides (config and "
                                 f"creates required), got {sorted(item)}")
        prerequisites.append(Prerequisite(
            _resolve(item["config"], spec_dir, f"prerequisites[{i}].config"),
            _resolve(item["creates"], None, f"prerequisites[{i}].creates", must_exist=False),
            _mapping(item.get("overrides"), f"prerequisites[{i}].overrides"),
        ))
    grid = _mapping(data.get("grid"), "grid")
    axes = [(str(axis), _axis_values(str(axis), values)) for axis, values in grid.items()]
    for axis, values in axes:
        if not values:
            raise SweepSpecError(f"grid.{axis} has no values")
    variants = [(str(k), _mapping(v, f"variants.{k}"))
                for k, v in _mapping(data.get("variants"), "variants").items()]
    seeds = data.get("seeds")
    if seeds is None:
        seeds = [None]
    elif not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SweepSpecError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepSpecError(f"seeds repeat: {seeds}")
    scoring = _mapping(data.get("scoring"), "scoring")
    if set(scoring) - {"stage", "judge"}:
        raise SweepSpecError(f"scoring takes stage and judge, got {sorted(scoring)}")
    stage = scoring.get("stage", "test")
    if stage not in SCORING_STAGES:
        raise SweepSpecError(f"scoring.stage must be one of {SCORING_STAGES}, got {stage!r}")
    judge = None
    if scoring.get("judge") is not None:
        judge = _judge(_mapping(scoring["judge"], "scoring.judge"), spec_dir)
    summary = _mapping(data.get("summary"), "summary")
    if set(summary) - {"metrics", "exclude", "families"}:
        raise SweepSpecError(f"summary takes metrics, exclude and families, got {sorted(summary)}")
    prefix = {"test": "test", "validate": "val", "none": "val"}[stage]
    patterns = summary.get("metrics") or [f"{prefix}/*", "judge/*"]
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise SweepSpecError("summary.metrics must be a list of metric-name patterns (e.g. 'test/*')")
    exclude = summary.get("exclude", list(DEFAULT_EXCLUDE))
    if not isinstance(exclude, list) or not all(isinstance(p, str) for p in exclude):
        raise SweepSpecError("summary.exclude must be a list of metric-name patterns")
    families = {str(k): str(v) for k, v in _mapping(summary.get("families"), "summary.families").items()}
    for family, pattern in families.items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SweepSpecError(f"summary.families.{family} is not a regular expression: {exc}") from None
    keep = data.get("keep_checkpoints", "last")
    if keep not in KEEP_CHECKPOINTS:
        raise SweepSpecError(f"keep_checkpoints must be one of {KEEP_CHECKPOINTS}, got {keep!r}")
    experiment = data.get("experiment", DEFAULT_EXPERIMENT)
    if not isinstance(experiment, str) or not experiment:
        raise SweepSpecError(f"experiment must be a name, got {experiment!r}")
    spec = SweepSpec(
        name=name,
        base=_resolve(data["base"], spec_dir, "base"),
        path=path,
        text=text,
        experiment=experiment,
        description=str(data.get("description") or ""),
        prerequisites=prerequisites,
        overrides=_mapping(data.get("overrides"), "overrides"),
        axes=axes,
        variants=variants,
        seeds=list(seeds),
        scoring_stage=stage,
        judge=judge,
        metric_patterns=list(patterns),
        metric_exclude=list(exclude),
        families=families,
        keep_checkpoints=keep,
    )
    spec.settings()  # duplicate labels fail here, not half-way through a sweep
    return spec


def load_spec(path: str | Path, name: str | None = None) -> SweepSpec:
    """Read a sweep spec file (``name`` replaces the spec's own name, e.g. for a smoke run)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SweepSpecError(f"cannot read sweep spec {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SweepSpecError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_spec(data, path, text, name)
