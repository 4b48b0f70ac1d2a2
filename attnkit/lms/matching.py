"""Uploads matched to the assignment's notebooks (case, copy suffixes, spaces and dashes), zips unpacked, files placed."""
from __future__ import annotations

import filecmp
import io
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from attnkit.lms.archives import (MAX_DEPTH, MAX_SUBMISSION_BYTES, MAX_UPLOAD_BYTES, SKIP_PARTS, UNREADABLE, _mb,
                                  Budget, BudgetExceeded, CapExceeded, copy_capped, entry_time, open_zip)


def normalise(name: str) -> str:
    """A file name reduced to what identifies the notebook: no folder, extension, ``(N)`` or
    ``-N`` copy suffix, case, or difference between spaces, dashes, dots and underscores."""
    stem = PurePosixPath(name.replace("\\", "/")).name
    if stem.lower().endswith(".ipynb"):
        stem = stem[:-6]
    while True:  # 'Q3 (1)-2' -> 'Q3': browser and Canvas suffixes may stack
        shorter = re.sub(r"(\s*\(\d+\)|-\d+)$", "", stem.strip())
        if shorter == stem or not shorter:
            break
        stem = shorter
    return re.sub(r"[\s\-.]+", "_", stem.strip().lower()).strip("_")


def copy_number(name: str) -> int:
    """The copy number a browser or Canvas appended (``x (2).ipynb``, ``x-2.ipynb``), 0 if none."""
    stem = PurePosixPath(name).name
    stem = stem[:-6] if stem.lower().endswith(".ipynb") else stem
    m = re.search(r"(?:\((\d+)\)|-(\d+))\s*$", stem)
    return int(m.group(1) or m.group(2)) if m else 0


def match_notebook(name: str, stems) -> str | None:
    """The notebook stem an uploaded file name stands for, or None."""
    if not name.lower().endswith(".ipynb"):
        return None
    key = normalise(name)
    for stem in stems:
        if normalise(stem) == key:
            return stem
    return None


@dataclass
class Upload:
    name: str                 # as shown to people: 'hw1.zip:hw1/q3.ipynb'
    data: bytes | None = None  # content held in memory (small: tests, an oversized file's stand-in)
    mtime: float = 0.0        # seconds since the epoch; newer wins between duplicates
    order: int = 0            # then the higher of these (Canvas's attachment id)
    path: Path | None = None  # content on disk (a file of the upload folder, or unpacked to scratch)
    opener: Callable[[], BinaryIO] | None = None  # content still inside an export zip
    problem: str = ""         # why it is not read (over a cap): reported, never matched

    def open(self) -> BinaryIO:
        if self.path is not None:
            return open(self.path, "rb")
        if self.opener is not None:
            return self.opener()
        return io.BytesIO(self.data or b"")

    def read(self) -> bytes:
        """The whole content (only for what is known to be small)."""
        with self.open() as f:
            return f.read()


@dataclass
class Matching:
    chosen: dict = field(default_factory=dict)       # stem -> Upload
    unmatched: list = field(default_factory=list)    # names of files that matched no notebook
    duplicates: list = field(default_factory=list)   # (stem, kept name, [dropped names])
    problems: list = field(default_factory=list)     # unreadable archives, caps hit and the like
    scratch: tempfile.TemporaryDirectory | None = None  # where archive entries were unpacked

    def missing(self, stems) -> list:
        return [s for s in stems if s not in self.chosen]

    def cleanup(self) -> None:
        if self.scratch is not None:
            self.scratch.cleanup()
            self.scratch = None


class _Scratch:
    """Numbered files in one temporary folder (entry names are never used as paths)."""

    def __init__(self, matching: Matching):
        self.matching, self.n = matching, 0

    def new(self) -> Path:
        if self.matching.scratch is None:
            self.matching.scratch = tempfile.TemporaryDirectory(prefix="attnkit-unpack-")
        self.n += 1
        return Path(self.matching.scratch.name) / f"{self.n}.bin"

    def spool(self, src: BinaryIO, budget: Budget) -> Path:
        path = self.new()
        try:
            with open(path, "wb") as out:
                copy_capped(src, out, MAX_UPLOAD_BYTES, budget)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path


def _is_archive(name: str) -> bool:
    return name.lower().endswith(".zip")


def _wanted(name: str) -> bool:
    """Only notebooks and zips are read; other files are listed by name."""
    return name.lower().endswith(".ipynb") or _is_archive(name)


def _zip_uploads(fileobj, label: str, mtime: float, problems: list, scratch: _Scratch, budget: Budget,
                 out: list, depth: int = 1) -> None:
    """Add the files inside an uploaded zip (any folder depth; zips inside to MAX_DEPTH) to ``out``, each
    notebook unpacked to scratch within the caps (what was unpacked before a budget ran out stays)."""
    try:
        with open_zip(fileobj) as zf:
            for info in zf.infolist():
                parts = PurePosixPath(info.filename.replace("\\", "/")).parts
                if info.is_dir() or not parts or SKIP_PARTS & set(parts) or parts[-1].startswith("._"):
                    continue
                name = f"{label}:{info.filename}"
                when = entry_time(info, mtime)
                if not _wanted(info.filename):
                    out.append(Upload(name, b"", when))  # listed as unmatched, never read
                    continue
                if _is_archive(info.filename) and depth >= MAX_DEPTH:
                    problems.append(f"{name}: a zip nested deeper than {MAX_DEPTH} levels, not unpacked")
                    continue
                if info.file_size > MAX_UPLOAD_BYTES:  # declared: a quick refusal; reading checks again
                    problems.append(f"{name}: larger than {_mb(MAX_UPLOAD_BYTES)} (the cap on one file), ignored")
                    continue
                try:
                    with zf.open(info) as src:
                        path = scratch.spool(src, budget)
                except BudgetExceeded:
                    raise
                except CapExceeded as exc:
                    problems.append(f"{name}: {exc}, ignored")
                    continue
                except UNREADABLE as exc:  # this entry is damaged; the others may not be
                    problems.append(f"{name}: not readable ({type(exc).__name__}: {exc}), ignored")
                    continue
                if _is_archive(info.filename):
                    try:
                        with open(path, "rb") as inner:
                            _zip_uploads(inner, name, when, problems, scratch, budget, out, depth + 1)
                    finally:
                        path.unlink()
                else:
                    out.append(Upload(name, None, when, path=path))
    except BudgetExceeded:
        raise
    except CapExceeded as exc:
        problems.append(f"{label}: {exc}, not unpacked")
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError, ValueError) as exc:
        problems.append(f"{label}: not a readable zip ({type(exc).__name__}: {exc})")


def expand(uploads: list[Upload], problems: list | None = None, matching: Matching | None = None,
           budget: Budget | None = None) -> list[Upload]:
    """Uploads with every zip replaced by its files (unpacked into ``matching``'s scratch folder)."""
    problems = problems if problems is not None else []
    matching = matching or Matching()
    scratch = _Scratch(matching)
    budget = budget or Budget(MAX_SUBMISSION_BYTES)
    out = []
    for up in uploads:
        if up.problem:
            problems.append(f"{up.name}: {up.problem}, ignored")
            continue
        if not _is_archive(up.name):
            out.append(up)
            continue
        try:
            if up.path is not None or up.data is not None:
                with up.open() as f:
                    _zip_uploads(f, up.name, up.mtime, problems, scratch, budget, out)
            else:  # inside an export: spooled to scratch first (a zip needs a seekable file)
                with up.open() as src:
                    path = scratch.spool(src, budget)
                try:
                    with open(path, "rb") as f:
                        _zip_uploads(f, up.name, up.mtime, problems, scratch, budget, out)
                finally:
                    path.unlink()
        except BudgetExceeded as exc:
            problems.append(f"{up.name}: {exc}; nothing more of it was read")
        except CapExceeded as exc:
            problems.append(f"{up.name}: {exc}, not unpacked")
        except UNREADABLE as exc:  # the export's own entry is damaged
            problems.append(f"{up.name}: not readable ({type(exc).__name__}: {exc}), not unpacked")
    return out


def uploads_in(folder: Path, max_depth: int = 3) -> list[Upload]:
    """Every regular file under an upload folder (Gradescope's /autograder/submission), zips
    included; read only when matched (place) or unpacked (expand)."""
    folder = Path(folder)
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or path.is_symlink() or len(rel.parts) > max_depth or SKIP_PARTS & set(rel.parts):
            continue
        if path.stat().st_size > MAX_UPLOAD_BYTES:  # never read: the student is told why
            out.append(Upload(rel.as_posix(), b"", path.stat().st_mtime,
                              problem=f"larger than {_mb(MAX_UPLOAD_BYTES)} (the cap on one file)"))
            continue
        out.append(Upload(rel.as_posix(), None, path.stat().st_mtime, path=path))
    return out


def match_uploads(uploads: list[Upload], stems, budget: Budget | None = None) -> Matching:
    """Match uploads (zips expanded) to notebook stems; of two files for one notebook the
    newer wins (then the higher copy number: ``x (2).ipynb`` is the later download).
    Unpacked files live in the Matching's scratch folder until ``cleanup()`` (or it is collected)."""
    m = Matching()
    files = expand(uploads, m.problems, m, budget)
    candidates: dict[str, list[Upload]] = {}
    for up in files:
        stem = match_notebook(up.name, stems)
        if stem is None:
            m.unmatched.append(up.name)
        else:
            candidates.setdefault(stem, []).append(up)
    for stem, ups in candidates.items():
        ups.sort(key=lambda u: (u.mtime, u.order, copy_number(u.name)), reverse=True)
        m.chosen[stem] = ups[0]
        if len(ups) > 1:
            m.duplicates.append((stem, ups[0].name, [u.name for u in ups[1:]]))
    return m


def write_if_changed(path: Path, data, mtime: float | None = None, budget: Budget | None = None) -> bool:
    """Write only when the bytes differ (re-collecting leaves files untouched); set mtime.
    ``data``: bytes or an Upload (copied in chunks, capped)."""
    tmp = path.with_name(f".{path.name}.collecting")
    try:
        with open(tmp, "wb") as out:
            if isinstance(data, (bytes, bytearray)):
                out.write(data)
            else:
                with data.open() as src:
                    copy_capped(src, out, MAX_UPLOAD_BYTES, budget)
        changed = not path.is_file() or path.is_symlink() or not filecmp.cmp(tmp, path, shallow=False)
        if changed:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return changed


def place(matching: Matching, dest: Path, mtime: float | None = None, budget: Budget | None = None) -> None:
    """Write the chosen uploads into ``dest`` as ``<stem>.ipynb``; other notebooks there go.
    A chosen file over a cap is not written (reported in ``matching.problems``)."""
    dest.mkdir(parents=True, exist_ok=True)
    keep = {f"{stem}.ipynb" for stem in matching.chosen}
    for old in dest.glob("*.ipynb"):
        if old.name not in keep:
            old.unlink()
    for stem, up in sorted(matching.chosen.items()):
        try:  # an unpacked file was counted against the budget as it was unpacked
            write_if_changed(dest / f"{stem}.ipynb", up, mtime, budget if up.opener is not None else None)
        except CapExceeded as exc:
            (dest / f"{stem}.ipynb").unlink(missing_ok=True)
            del matching.chosen[stem]
            matching.problems.append(f"{up.name}: {exc}, not collected")
        except UNREADABLE as exc:  # a damaged entry in the export (bad CRC, corrupt data): this file only
            (dest / f"{stem}.ipynb").unlink(missing_ok=True)
            del matching.chosen[stem]
            matching.problems.append(f"{up.name}: not collected ({type(exc).__name__}: {exc})")


# -- LMS exports ------------------------------------------------------------------------------
