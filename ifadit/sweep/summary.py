"""A sweep's summary: per setting, mean ± std over seeds of every scored metric, as a Markdown table and one
PNG per metric family, written under ``benchmarks/results/<sweep>/`` and logged to the parent run.

The numbers are read back from MLflow, not from memory, so a resumed sweep summarizes the children it skipped
exactly like the ones it ran.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.tracking import MlflowClient

from ifadit.sweep.engine import TAG_HOST, TAG_NODE
from ifadit.sweep.spec import flatten

if TYPE_CHECKING:
    from ifadit.sweep.runner import ChildOutcome
    from ifadit.sweep.spec import SweepSpec

SUMMARY_ARTIFACTS = "summary"
# Metric name -> family: the first rule whose regular expression matches (case-insensitive) wins; a spec's
# ``summary.families`` are tried before these. The order matters: "recovered_psnr" is reversibility, not
# image quality; "wrong_key_id_cos" is security, not anonymity.
DEFAULT_FAMILIES: dict[str, str] = {
    "security": r"wrong|security|brute|bit_off|one_bit|bit_flip|guess",
    "diversity": r"two_key|between_two|diversity|different_keys",
    "reversibility": r"recover|roundtrip|round_trip|revers|inverse|restor",
    "quality": r"psnr|ssim|lpips|fid|recon|quality|l1\b|mse",
    "anonymity": r"anon|privacy|reid|re_id|identif|verif|detect|protect",
}
# The four the issue asks for come first in the summary; the others after, when a sweep has any.
FAMILY_ORDER = ("anonymity", "reversibility", "security", "diversity", "quality", "utility", "other")


def metric_family(name: str, rules: Mapping[str, str] | None = None) -> str:
    """A spec's own rules first; then a family named in the metric's path (the metrics suite's names:
    ``test/security/wrong_key/judge/cos``); then the default patterns; else ``other``."""
    rules = dict(rules or {})
    for family, pattern in rules.items():
        if re.search(pattern, name, flags=re.IGNORECASE):
            return family
    for part in name.lower().split("/"):
        if part in FAMILY_ORDER[:-1]:
            return part
    for family, pattern in DEFAULT_FAMILIES.items():
        if family not in rules and re.search(pattern, name, flags=re.IGNORECASE):
            return family
    return "other"


@dataclass
class Stat:
    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds; None with one seed (it is not zero, it is unknown)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


def format_number(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.2e}"
    return f"{x:.3f}"


def format_stat(stat: Stat) -> str:
    std = stat.std
    return format_number(stat.mean) if std is None else f"{format_number(stat.mean)} ± {format_number(std)}"


def collect(
    client: MlflowClient, outcomes: Sequence[ChildOutcome], patterns: Sequence[str],
    exclude: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Per child: its setting, seed, run, status and the metrics matching ``patterns`` and none of
    ``exclude``, read from MLflow."""
    records = []
    for outcome in outcomes:
        combo = outcome.combination
        run = client.get_run(outcome.run_id)
        metrics = {k: v for k, v in run.data.metrics.items()
                   if any(fnmatch.fnmatch(k, p) for p in patterns)
                   and not any(fnmatch.fnmatch(k, p) for p in exclude)}
        records.append({
            "setting": combo.label, "seed": combo.seed, "choices": combo.choices, "hash": combo.hash,
            "run_id": outcome.run_id, "status": outcome.status, "error": outcome.error,
            "node": run.data.tags.get(TAG_NODE, ""), "host": run.data.tags.get(TAG_HOST, ""),
            "seconds": round(outcome.seconds, 1),
            "metrics": metrics if outcome.status != "failed" else {},
        })
    return records


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Stat]]:
    """setting -> metric -> values over the seeds that finished (settings in the sweep's order)."""
    table: dict[str, dict[str, Stat]] = {}
    for record in records:
        row = table.setdefault(record["setting"], {})
        for name, value in record["metrics"].items():
            row.setdefault(name, Stat([])).values.append(float(value))
    return table


def _families(metrics: Sequence[str], rules: Mapping[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name in sorted(metrics):
        grouped.setdefault(metric_family(name, rules), []).append(name)
    order = list(FAMILY_ORDER) + sorted(set(grouped) - set(FAMILY_ORDER))
    return {family: grouped[family] for family in order if family in grouped}


def plot_family(
    family: str, names: Sequence[str], table: Mapping[str, Mapping[str, Stat]], path: Path
) -> Path:
    """One panel per metric: a bar per setting at its mean, the seeds' spread as an error bar (± std) and
    every seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    settings = list(table)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    height = max(2.2, 0.32 * len(settings) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, height * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        means, errs, ys = [], [], []
        for y, setting in enumerate(settings):
            stat = table[setting].get(name)
            if stat is None:
                continue
            means.append(stat.mean)
            errs.append(stat.std or 0.0)
            ys.append(y)
            ax.scatter(stat.values, [y] * len(stat.values), s=12, color="black", zorder=3)
        ax.barh(ys, means, xerr=errs, color="tab:blue", alpha=0.6, capsize=3)
        ax.set_yticks(range(len(settings)), settings, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{family}: mean ± std over seeds (dots: seeds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(spec: SweepSpec, records: Sequence[Mapping[str, Any]], families: Mapping[str, list[str]],
             table: Mapping[str, Mapping[str, Stat]], parent_id: str, uri: str, command: str | None,
             extra: Mapping[str, Any] | None = None, engine: str = "") -> str:
    done = sum(r["status"] in ("done", "skipped") for r in records)
    skipped = sum(r["status"] == "skipped" for r in records)
    failed = [r for r in records if r["status"] == "failed"]
    seeds = ", ".join(str(s) for s in spec.seeds if s is not None) or "the recipe's"
    lines = [f"# Sweep `{spec.name}`", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [
        f"Base recipe `{spec.base}`; {len(table)} settings × {len(spec.seeds)} seeds (seeds: {seeds}); "
        f"{len(records)} children: {done} finished ({skipped} of them in an earlier run), "
        f"{len(failed)} failed.",
        f"MLflow: experiment `{spec.experiment}`, parent run `{parent_id}` on `{uri}`. "
        f"Written {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.",
    ]
    if command:
        lines.append(f"Command: `{command}`")
    if engine:
        lines.append(f"Engine: {engine}.")
    if extra:
        changes = ", ".join(f"`{k}={json.dumps(v, default=str)}`" for k, v in flatten(extra).items())
        lines.append(f"On top of the spec (`--set`), for every child: {changes}.")
    lines += ["", "Values: mean ± sample standard deviation over the seeds that finished (n); "
              "one seed gives the mean alone.", ""]
    if not families:
        lines += ["No scored metrics: no child finished.", ""]
    for family, names in families.items():
        lines += [f"## {family}", "", "| setting | n | " + " | ".join(f"`{n}`" for n in names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        for setting, row in table.items():
            count = max((len(s.values) for s in row.values()), default=0)
            cells = [format_stat(row[n]) if n in row else "—" for n in names]
            lines.append(f"| {setting} | {count} | " + " | ".join(cells) + " |")
        lines += ["", f"![{family}]({family}.png)", ""]
    if failed:
        lines += ["## Failed children", "", "| child | run | error |", "|---|---|---|"]
        for r in failed:
            error = str(r["error"]).replace("|", "\\|")
            lines.append(f"| {_child_name(r)} | `{r['run_id']}` | {error} |")
        lines.append("")
    lines += ["## Children", "", "Where each child ran (Ray node id, host) and how long it took this time "
              "(0 s: finished in an earlier run).", "",
              "| child | run | status | node | host | seconds |", "|---|---|---|---|---|---:|"]
    for r in records:
        node = f"`{r['node']}`" if r["node"] else "—"
        lines.append(f"| {_child_name(r)} | `{r['run_id']}` | {r['status']} | {node} | {r['host'] or '—'} "
                     f"| {r['seconds']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def _child_name(record: Mapping[str, Any]) -> str:
    return record["setting"] if record["seed"] is None else f"{record['setting']} s{record['seed']}"


def summarize(client: MlflowClient, spec: SweepSpec, outcomes: Sequence[ChildOutcome], parent_id: str,
              results_dir: Path, uri: str, command: str | None = None,
              extra: Mapping[str, Any] | None = None, engine: str = "") -> list[Path]:
    """Write ``summary.md``, ``summary.json`` and ``<family>.png`` into ``results_dir`` and log them to the
    parent run under ``summary/``. Returns the files written."""
    from ifadit.sweep.runner import redact_uri

    records = collect(client, outcomes, spec.metric_patterns, spec.metric_exclude)
    table = aggregate(records)
    metric_names = sorted({name for row in table.values() for name in row})
    families = _families(metric_names, spec.families)
    results_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for family, names in families.items():
        files.append(plot_family(family, names, table, results_dir / f"{family}.png"))
    md = results_dir / "summary.md"
    md.write_text(markdown(spec, records, families, table, parent_id, redact_uri(uri), command, extra,
                           engine))
    data = {
        "sweep": spec.name, "experiment": spec.experiment, "parent_run_id": parent_id, "engine": engine,
        "children": records,
        "settings": {s: {n: {"mean": st.mean, "std": st.std, "n": len(st.values), "values": st.values}
                         for n, st in row.items()} for s, row in table.items()},
        "families": families,
    }
    js = results_dir / "summary.json"
    js.write_text(json.dumps(data, indent=1, default=str) + "\n")
    files = [md, js, *files]
    for path in files:
        client.log_artifact(parent_id, str(path), SUMMARY_ARTIFACTS)
    return files
