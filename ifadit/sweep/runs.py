"""A sweep's MLflow bookkeeping: its parent run, its children found by hash, a child's run created.

A child run is tagged with its sweep, parent, hash, label and seed, so a re-run of the sweep can tell which
children finished (and skip them) and which must run again.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from ifadit.sweep.child import (
    STATE_DONE,
    TAG_HASH,
    TAG_LABEL,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SEED,
    TAG_STATE,
    TAG_SUPERSEDED,
    TAG_SWEEP,
    record_failure,
)
from ifadit.sweep.overrides import flatten
from ifadit.tracking import default_artifact_location, prepare_tracking_uri

if TYPE_CHECKING:
    from ifadit.sweep.spec import Combination, SweepSpec


class SweepError(RuntimeError):
    """A sweep that cannot go on (a prerequisite failed, the tracking store is unreachable)."""


def redact_uri(uri: str) -> str:
    """A tracking URI fit to print or store: no user:password@ part."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The experiment's id, created when missing (a sqlite store keeps its artifacts beside the database)."""
    prepare_tracking_uri(uri, name, default_artifact_location(uri, name))
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=default_artifact_location(uri, name))
    if experiment.lifecycle_stage == "deleted":
        raise SweepError(f"MLflow experiment {name!r} is deleted: restore it or name another experiment")
    return experiment.experiment_id


def find_parent(client: MlflowClient, experiment: str, name: str) -> Run | None:
    """The newest parent run of sweep ``name`` in the experiment, if any."""
    runs = _search(client, experiment, f"tags.`{TAG_ROLE}` = 'parent' and tags.`{TAG_SWEEP}` = '{name}'")
    return max(runs, key=lambda r: r.info.start_time) if runs else None


def child_runs(client: MlflowClient, experiment: str, parent_id: str) -> list[Run]:
    return _search(client, experiment, f"tags.`{TAG_PARENT}` = '{parent_id}'")


def is_done(run: Run) -> bool:
    return run.info.status == "FINISHED" and run.data.tags.get(TAG_STATE) == STATE_DONE


def latest_by_hash(runs: Sequence[Run]) -> dict[str, Run]:
    """Per child hash, its finished run if there is one, else its newest attempt."""
    best: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        key = run.data.tags.get(TAG_HASH)
        if key and not (key in best and is_done(best[key]) and not is_done(run)):
            best[key] = run
    return best


def create_child(client: MlflowClient, experiment: str, parent: str, spec: SweepSpec, combo: Combination,
                 previous: Run | None) -> str:
    """A queued child run for ``combo``, its axis choices and overrides as params; ``previous`` (an
    unfinished run of the same hash) is tagged as superseded, and failed if it was left running."""
    tags = {TAG_PARENT: parent, TAG_SWEEP: spec.name, TAG_ROLE: "child", TAG_HASH: combo.hash,
            TAG_LABEL: combo.label, TAG_STATE: "queued"}
    if combo.seed is not None:
        tags[TAG_SEED] = str(combo.seed)
    run = client.create_run(experiment, run_name=combo.run_name, tags=tags)
    run_id = run.info.run_id
    params = {f"sweep.{axis}": value for axis, value in combo.choices.items()}
    params["sweep.setting"] = combo.label
    if combo.seed is not None:
        params["sweep.seed"] = str(combo.seed)
    for key, value in flatten(combo.overrides).items():
        params[f"sweep.override.{key}"[:250]] = json.dumps(value, default=str)[:6000]
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    if previous is not None:
        with contextlib.suppress(Exception):
            client.set_tag(previous.info.run_id, TAG_SUPERSEDED, run_id)
            if previous.info.status == "RUNNING":  # its sweep was killed: it will never finish
                record_failure(client, previous.info.run_id, "interrupted: the sweep stopped in this child")
                client.set_terminated(previous.info.run_id, "KILLED")
    return run_id
