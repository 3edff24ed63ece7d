"""One child of a sweep: train it (a LightningCLI fit into its own MLflow run), then score it.

Everything here takes plain data (:class:`ChildJob` is JSON), so the same code runs in the sweep's process
and, for parallel sweeps, in a Ray task on any node of a cluster (:mod:`ifadit.sweep.engine`).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ifadit.lightning_cli import MLFLOW_LOGGER, IfaditCLI, cli_main
from ifadit.sweep.spec import Judge, apply_overrides

# MLflow tags of a sweep's runs (the parent and its children).
TAG_PARENT = "mlflow.parentRunId"
TAG_SWEEP = "ifadit.sweep.name"
TAG_ROLE = "ifadit.sweep.role"  # parent | child
TAG_HASH = "ifadit.sweep.hash"  # the child's resolved-config hash (what "the same child" means on re-runs)
TAG_LABEL = "ifadit.sweep.label"  # the setting, without the seed
TAG_SEED = "ifadit.sweep.seed"
TAG_STATE = "ifadit.sweep.state"  # training | scoring | done | failed
TAG_ERROR = "ifadit.sweep.error"  # one line
TAG_SUPERSEDED = "ifadit.sweep.superseded_by"  # an earlier failed attempt -> the run that retried it
TAG_JUDGE_KEY = "ifadit.sweep.judge_key_fingerprint"
STATE_DONE = "done"
ERROR_ARTIFACT = "error.txt"
MAX_ERROR_CHARS = 500


def one_line_error(exc: BaseException) -> str:
    """An exception as one line (jsonargparse's messages span many) for a tag and the console."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


@dataclass
class ChildJob:
    """What a child needs to run, as plain data."""

    run_id: str
    tracking_uri: str
    experiment: str
    config: dict[str, Any]
    work_dir: str
    stage: str = "test"
    judge: dict[str, Any] | None = None
    keep_checkpoints: str = "last"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChildJob:
        return cls(**data)


def child_recipe(job: ChildJob) -> dict[str, Any]:
    """The child's recipe with what the sweep owns filled in: its MLflow run and its checkpoint folder.

    The logger is replaced whatever the recipe says: a child always logs into the run the sweep made."""
    logger = {"class_path": MLFLOW_LOGGER,
              "init_args": {"experiment_name": job.experiment, "tracking_uri": job.tracking_uri,
                            "run_id": job.run_id}}
    config = apply_overrides(job.config, {"checkpoint.dirpath": str(Path(job.work_dir) / "checkpoints")})
    config.setdefault("trainer", {})["logger"] = logger
    return config


def _cli_args(config: Mapping[str, Any]) -> list[str]:
    """A config handed to the CLI as YAML text (``--config`` takes text as well as a path)."""
    return ["--config", yaml.safe_dump(dict(config), sort_keys=False)]


class _ParseOnlyCLI(IfaditCLI):
    """Parses and type-checks a recipe (class paths import, argument names exist) without building it."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


class RecipeChecker:
    """Checks child recipes; the LightningCLI parser is built once and reused (building it is most of the
    cost of a parse)."""

    def __init__(self) -> None:
        self._cli: _ParseOnlyCLI | None = None

    def check(self, config: Mapping[str, Any], instantiate: bool = False) -> str | None:
        """None when the recipe parses (and, with ``instantiate``, builds with ``init_from`` cleared and no
        logger); else the one-line error. Nothing is trained or logged."""
        try:
            if instantiate:
                cli_main([*_cli_args(config), "--model.init_from", "null", "--trainer.logger", "false"],
                         run=False, parser_kwargs={"exit_on_error": False})
            elif self._cli is None:
                self._cli = _ParseOnlyCLI(args=_cli_args(config), run=False,
                                          parser_kwargs={"exit_on_error": False})
            else:
                self._cli.parse_arguments(self._cli.parser, _cli_args(config))
        except Exception as exc:
            return one_line_error(exc)
        return None


def check_child_config(config: Mapping[str, Any], instantiate: bool = False) -> str | None:
    """:meth:`RecipeChecker.check` for one recipe."""
    return RecipeChecker().check(config, instantiate)


def _prune_checkpoints(folder: Path, keep: str) -> None:
    if keep == "all" or not folder.is_dir():
        return
    for path in folder.glob("*.ckpt"):
        if keep == "none" or path.name != "last.ckpt":
            path.unlink()


@contextlib.contextmanager
def _on_cpu(module: Any) -> Iterator[None]:
    """ifadit.evaluation.evaluate_headline conditions the model with CPU key vectors; run it there (a module
    without parameters, such as a dlib recognizer, stays where it is)."""
    parameter = next(module.parameters(), None)
    if parameter is None:
        yield
        return
    device = parameter.device
    module.cpu()
    try:
        yield
    finally:
        module.to(device)


_JUDGES: dict[tuple[str, float | None], Any] = {}


def _load_judge(judge: Judge) -> Any:
    """The judge's recognizer (``ifadit.recognizers.build_recognizer``); kept for the next child of an
    in-process sweep (one judge, rebuilt only when its spec or the checkpoint file it names changes)."""
    from ifadit.recognizers.spec import build_recognizer

    checkpoint = judge.checkpoint
    key = (judge.recognizer, os.path.getmtime(checkpoint) if checkpoint is not None else None)
    if key not in _JUDGES:
        recognizer = build_recognizer(judge.recognizer).eval()
        _JUDGES.clear()
        _JUDGES[key] = recognizer
    return _JUDGES[key]


def judge_child(
    task: Any, datamodule: Any, judge: Judge, run_id: str, client: MlflowClient
) -> dict[str, float]:
    """Score a trained flow-phase task with an independently trained recognizer, as ``ifadit score`` does:
    a fresh random key (only its fingerprint is kept), held-out faces, the judge's identity cosines.
    Logs ``judge/<score>`` metrics and the ``judge/grid.png`` artifact into the child's run."""
    from ifadit.evaluation import evaluate_headline
    from ifadit.keys import SecretKey

    if task.model is None or not task.model.keyed:
        raise ValueError("the judge scores flow-phase models only (phase flow or joint)")
    recognizer = _load_judge(judge)
    datamodule.setup("test" if judge.split == "test" else "validate")
    loader = datamodule.test_dataloader() if judge.split == "test" else datamodule.val_dataloader()
    batches = itertools.islice(loader, judge.max_batches) if judge.max_batches else loader
    secret = SecretKey.generate()
    with tempfile.TemporaryDirectory() as tmp, _on_cpu(task), _on_cpu(recognizer):
        grid = Path(tmp) / "grid.png"
        scores = evaluate_headline(task.model, recognizer, batches, secret, grid_path=grid)
        if grid.exists():
            client.log_artifact(run_id, str(grid), "judge")
    # the image count and the key's fingerprint describe the scoring, they are not scores
    values = {f"judge/{k}": float(v) for k, v in asdict(scores).items()
              if k not in ("key_fingerprint", "images")}
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])
    client.set_tag(run_id, TAG_JUDGE_KEY, scores.key_fingerprint)
    client.set_tag(run_id, "ifadit.sweep.judge_images", str(scores.images))
    return values


def score_trained(cli: Any, job: ChildJob, ckpt: str | Path | None) -> dict[str, float]:
    """The scorer every child goes through, on a built CLI whose trainer logs into the child's run:
    (a) the task's own test (or validate) stage on the trained checkpoint, logged by Lightning into the run
    (whatever the task logs there — today its keyed identity metrics, the shared metrics suite once the task
    logs it), and (b) with a judge, the independent recognizer's headline scores. Returns what it recorded."""
    recorded: dict[str, float] = {}
    ckpt_path = str(ckpt) if ckpt else None
    if job.stage != "none":
        stage = cli.trainer.test if job.stage == "test" else cli.trainer.validate
        for results in stage(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path):
            recorded.update({k: float(v) for k, v in results.items()})
    elif ckpt_path and job.judge:
        cli.model.load_components(ckpt_path)
    if job.judge:
        client = MlflowClient(job.tracking_uri)
        recorded.update(judge_child(cli.model, cli.datamodule, Judge(**job.judge), job.run_id, client))
    return recorded


def score_checkpoint(job: ChildJob, ckpt: str | Path) -> dict[str, float]:
    """:func:`score_trained` for a checkpoint on disk: the child's recipe is built again (no training) with
    its logger on ``job.run_id`` — e.g. to score finished children again once the task logs more metrics."""
    cli = cli_main(_cli_args(child_recipe(job)), run=False, parser_kwargs={"exit_on_error": False})
    return score_trained(cli, job, ckpt)


def execute_child(job: ChildJob) -> bool:
    """Train and score one child in its MLflow run; True when done. A failure ends the run FAILED with its
    one-line error as the ``ifadit.sweep.error`` tag and the traceback as ``error.txt``, and returns False
    (KeyboardInterrupt is recorded and raised again)."""
    client = MlflowClient(job.tracking_uri)
    try:
        client.set_tag(job.run_id, TAG_STATE, "training")
        cli = cli_main(["fit", *_cli_args(child_recipe(job))], parser_kwargs={"exit_on_error": False})
        last = getattr(cli.trainer.checkpoint_callback, "last_model_path", "") or ""
        client.set_tag(job.run_id, TAG_STATE, "scoring")
        # the fit's own trainer and logger score the last checkpoint; without one, the weights in memory
        score_trained(cli, job, last if last and os.path.exists(last) else None)
        del cli
        _prune_checkpoints(Path(job.work_dir) / "checkpoints", job.keep_checkpoints)
        client.set_tag(job.run_id, TAG_STATE, STATE_DONE)
        client.set_terminated(job.run_id, "FINISHED")
        return True
    except BaseException as exc:
        record_failure(client, job.run_id, one_line_error(exc), traceback.format_exc())
        if isinstance(exc, KeyboardInterrupt):
            raise
        return False
    finally:
        gc.collect()


def record_failure(client: MlflowClient, run_id: str, line: str, details: str | None = None) -> None:
    """Mark a child FAILED with its error; never raises (a broken store must not hide the first error)."""
    with contextlib.suppress(Exception):
        client.set_tag(run_id, TAG_ERROR, line)
        client.set_tag(run_id, TAG_STATE, "failed")
        if details:
            client.log_text(run_id, details, ERROR_ARTIFACT)
    with contextlib.suppress(Exception):
        client.set_terminated(run_id, "FAILED")
