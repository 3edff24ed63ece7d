"""What machine a benchmark ran on, for the result tables (imported by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(threads: int) -> str:
    """The machine line of a result table: CPU, cores, torch, threads, Python."""
    return (
        f"{cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, {threads} thread(s), "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def shown_path(path: str) -> str:
    """``path`` relative to the checkout where it lies inside it, so result files name no machine."""
    root = Path(__file__).resolve().parents[1]
    resolved = Path(path).resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else path


def publish(lines: list[str], out: str | None) -> None:
    """Print a result table and write it to ``out`` (Markdown) when given."""
    text = "\n".join(lines)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
