"""What pretrained checkpoints ifadit knows, which of them are in the weights folder, and which files each
model preset still needs (``ifadit weights``).

Manifest entries are registered by the modules that load them (``ifadit.nets.facenet``,
``ifadit.release``...), so the report first imports every built-in and plugin component module.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path

from ifadit import registry
from ifadit.weights import MANIFEST, sha256_of, weights_dir

# Modules that register manifest entries without being a component entry point themselves.
EXTRA_MANIFEST_MODULES: tuple[str, ...] = ("ifadit.release",)

NOT_PRESENT = "-"
NOT_PUBLISHED = "not published"
VERIFIED = "verified"
MISMATCH = "mismatch"
NOT_CHECKED = "not checked"


@dataclass(frozen=True)
class WeightStatus:
    """One manifest entry as found on this machine."""

    name: str
    filename: str
    path: Path
    present: bool
    sha256: str  # VERIFIED, MISMATCH, NOT_PUBLISHED, NOT_CHECKED or NOT_PRESENT
    layout: str
    source: str
    description: str


@dataclass(frozen=True)
class PresetStatus:
    """A model preset and the files it still needs (file name -> where to obtain it)."""

    name: str
    missing: dict[str, str]
    error: str | None = None  # the preset file itself is broken


def import_manifest_modules() -> list[str]:
    """Import the modules that fill the manifest; returns one line per module that failed to import."""
    modules = list(EXTRA_MANIFEST_MODULES)
    for group in registry.GROUPS:
        for info in registry.available(group).values():
            module = info.value.partition(":")[0].strip()
            if module not in modules:
                modules.append(module)
    failures = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken plugin must not hide the other entries
            failures.append(f"{module}: {type(exc).__name__}: {exc}")
    return failures


def weights_report(verify: bool = True, load_modules: bool = True) -> list[WeightStatus]:
    """Every manifest entry, sorted by name: is its file in the weights folder, does its sha256 match?

    ``verify=False`` skips hashing (large generators take seconds to hash).
    """
    if load_modules:
        for failure in import_manifest_modules():
            warnings.warn(f"weights report: could not import {failure}", stacklevel=2)
    from ifadit.presets import default_folder

    rows = []
    for name in sorted(MANIFEST):
        spec = MANIFEST[name]
        path = default_folder(spec) / spec.filename  # shipped files live in the package
        present = path.is_file()
        if not present:
            status = NOT_PRESENT
        elif spec.sha256 is None:
            status = NOT_PUBLISHED
        elif not verify:
            status = NOT_CHECKED
        else:
            status = VERIFIED if sha256_of(path) == spec.sha256.lower() else MISMATCH
        rows.append(
            WeightStatus(
                name=name,
                filename=spec.filename,
                path=path,
                present=present,
                sha256=status,
                layout=spec.layout,
                source=spec.source,
                description=spec.description,
            )
        )
    return rows


def preset_report() -> list[PresetStatus]:
    """Every shipped preset (``ifadit models``) with the files it still needs from the weights folder."""
    from ifadit.presets import PresetError, available_presets, load_preset

    statuses = []
    for name in available_presets():
        try:
            needs = load_preset(name).missing()
        except PresetError as exc:
            statuses.append(PresetStatus(name, {}, str(exc)))
            continue
        statuses.append(PresetStatus(name, {need.filename: need.source for need in needs}))
    return statuses


def format_weights_report(rows: list[WeightStatus], presets: list[PresetStatus] | None = None) -> str:
    """A plain-text table for the terminal, what each preset still needs, then where to obtain each missing
    file."""
    header = ("name", "file", "present", "sha256", "layout")
    table = [header] + [(r.name, r.filename, "yes" if r.present else "no", r.sha256, r.layout) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"\nweights folder: {weights_dir()} (set IFADIT_WEIGHTS to change it)")
    if presets:
        lines.append("model presets ('ifadit models', 'ifadit anonymize --model NAME'):")
        for status in presets:
            if status.error:
                state = f"broken: {status.error}"
            elif status.missing:
                state = f"needs {', '.join(status.missing)}"
            else:
                state = "ready"
            lines.append(f"  {status.name}: {state}")
    sources = {r.filename: r.source for r in rows if not r.present}
    for status in presets or []:
        sources.update({f: src for f, src in status.missing.items() if f not in sources})
    if sources:
        lines.append("where to obtain the missing files:")
        lines += [f"  {filename}: {source}" for filename, source in sources.items()]
    return "\n".join(lines)
