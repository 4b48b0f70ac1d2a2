"""The README and docs/: the README stays task-sized, every figure names its benchmark, every path they name
exists, and no file points to a tracker number that nothing in the repository explains."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# "issue" with a number, or a bare "(#N)": pointers to a tracker the repository does not hold.
TRACKER_REF = re.compile(r"\bissues?\s?#?\d+|\(#\d+\)", re.IGNORECASE)


def _repo_files() -> list[Path]:
    """Tracked files and untracked ones git does not ignore (a clean clone: the tracked ones)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
        return [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        found = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in {".git", ".venv", "demo", "__pycache__"}]
            found += [Path(folder) / f for f in files]
        return found


def test_readme_is_at_most_250_lines():
    """Is the README short enough to be read as the tasks (the design lives in docs/)?"""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)


def test_no_file_points_to_a_tracker_number():
    """Does no file in the repository say "issue N" or "(#N)", which points to nothing it holds?"""
    files = [p for p in _repo_files() if p.is_file() and not p.is_symlink()]
    assert len(files) > 100  # the walk saw the repository, not an empty folder
    hits = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (screenshots)
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if TRACKER_REF.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def test_tracker_pattern_finds_what_it_must():
    """Does the pattern catch the forms it is for, and leave a cell number or an HTML entity alone?"""
    n = 26  # spelled apart, so this file does not hold what it forbids
    for text in [f"(issue {n})", f"Issue #{n}", f"see issue{n}", f"fixed in (#{n})", f"issues {n} and 5"]:
        assert TRACKER_REF.search(text), text
    for text in ["cell #0: states", "java&#10;script", "otter-grader PR #519", "a known issue in nbgrader"]:
        assert not TRACKER_REF.search(text), text


def test_every_benchmark_is_listed_with_its_figure():
    """Does docs/performance.md name every script in benchmarks/, so each figure has the script that prints it?"""
    listed = (ROOT / "docs" / "performance.md").read_text()
    missing = [p.name for p in sorted((ROOT / "benchmarks").glob("*.py")) if f"benchmarks/{p.name}" not in listed]
    assert not missing, missing


def test_every_path_the_docs_name_exists():
    """Does every file or folder of the repository that the README or docs/ names (in backticks) exist, so
    a moved module cannot leave the docs pointing at nothing?"""
    named = re.compile(r"`((?:attnkit|tests|benchmarks|banks|graders|source|release|docs|\.ci)/[^`\s]*)`")
    missing = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path in named.findall(page.read_text()):
            path = path.split("::")[0].rstrip(":,")
            if any(c in path for c in "<*{") or (ROOT / path).exists() or "hw10" in path:
                continue  # a pattern (feedback/<student>/...), there, or what docs/new-assignment.md's `kit new hw10` writes
            missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, "\n".join(missing)
