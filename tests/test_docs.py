"""The docs: the mkdocs site builds strictly (no broken link, no page missing from the nav) and the README
stays a short user's guide whose relative links all resolve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
# [text](target) and ![alt](target); the target ends at whitespace or ')' (an optional "title" follows).
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = ("http://", "https://", "mailto:", "#")


def _without_code(text: str) -> str:
    """Markdown with fenced code blocks and inline code removed: links inside code are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(markdown: str) -> list[str]:
    links = [m.group(1) for m in LINK.finditer(_without_code(markdown))]
    return [link for link in links if not link.startswith(EXTERNAL)]


def test_relative_links_parser() -> None:
    text = '[a](docs/x.md) ![b](img.png "t") [c](https://e.org) [d](#top) `[e](no.md)`\n```\n[f](no.md)\n```'
    assert relative_links(text) == ["docs/x.md", "img.png"]


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move reference material to docs/"
    )


def test_readme_relative_links_exist() -> None:
    links = relative_links((ROOT / "README.md").read_text(encoding="utf-8"))
    assert links, "README.md links nothing relative (the quickstart grid, docs/ pages)"
    missing = [link for link in links if not (ROOT / link.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links files that do not exist: {missing}"


def test_docs_build_strict(tmp_path: Path) -> None:
    try:
        import material  # noqa: F401  (mkdocs-material, the theme)
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs and mkdocs-material are missing: pip install -e '.[dev]' (make test does it)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    problems = [line for line in result.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    details = "\n".join(problems or [result.stderr[-3000:]])
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{details}"
    assert (tmp_path / "site" / "index.html").is_file()
