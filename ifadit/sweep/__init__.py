"""Ablation sweeps tracked in MLflow: ``ifadit sweep SPEC.yaml``.

A spec names a base recipe, overrides, a grid and/or variants, and seeds (:mod:`ifadit.sweep.spec`); each
combination becomes a child MLflow run under one parent run, is trained with the LightningCLI and scored
(:mod:`ifadit.sweep.child`), and the sweep ends with a Markdown table and plots per metric family
(:mod:`ifadit.sweep.summary`). Runs are resumable and parallel on request (:mod:`ifadit.sweep.runner`).
"""

from ifadit.sweep.child import ChildJob, check_child_config, execute_child, score_checkpoint
from ifadit.sweep.runner import (
    ChildOutcome,
    PlanRow,
    SweepError,
    SweepOptions,
    SweepResult,
    format_plan,
    plan,
    run_sweep,
)
from ifadit.sweep.spec import (
    Combination,
    SweepSpec,
    SweepSpecError,
    apply_overrides,
    load_spec,
    parse_set_option,
    parse_spec,
)
from ifadit.sweep.summary import metric_family

__all__ = [
    "ChildJob",
    "ChildOutcome",
    "Combination",
    "PlanRow",
    "SweepError",
    "SweepOptions",
    "SweepResult",
    "SweepSpec",
    "SweepSpecError",
    "apply_overrides",
    "check_child_config",
    "execute_child",
    "format_plan",
    "load_spec",
    "metric_family",
    "parse_set_option",
    "parse_spec",
    "plan",
    "run_sweep",
    "score_checkpoint",
]
