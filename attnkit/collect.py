"""Submissions in from the LMS: what students upload, matched to the assignment's notebooks.

One matcher serves both ways a submission arrives:

* ``run_autograder`` on Gradescope (attnkit/gradescope.py) matches the files in
  ``/autograder/submission/`` to the notebooks;
* ``./kit collect ASSIGNMENT EXPORT.zip`` fills ``submitted/<student>/<assignment>/`` from a
  Gradescope "Export Submissions" zip or a Canvas "Download Submissions" zip.

Students upload any subset of the notebooks, under names the browser or Canvas changed
(``Q3_MultiHead_Attention (1).ipynb``, ``q3_multihead_attention-1.ipynb``), sometimes zipped
(with the folder inside), with extra files. Every upload is normalised (case, ``(N)`` and ``-N``
suffixes, spaces/dashes vs underscores) and compared with the notebook stems.

Archives are streamed, never held whole in memory: an entry is read in chunks into a scratch file
and reading stops at a cap (the size a zip header declares is not trusted). Only notebooks and
zips are read; a zip inside an upload is unpacked to MAX_DEPTH levels. Caps: MAX_UPLOAD_BYTES per
file, MAX_SUBMISSION_BYTES unpacked per submission, MAX_EXPORT_BYTES per export, MAX_ENTRIES entries
per uploaded zip (MAX_EXPORT_ENTRIES per export). A cap costs only the file or submission that hit
it, with a message; the other students are collected.

Student ids follow attnkit/ids.py: an LMS id that breaks the rule gets a hash suffix (said in the
report), so two LMS ids never become one student.

Of nbgrader's ZipCollect machinery only ``FileNameCollectorPlugin`` fits (it reads Canvas's file
names with CANVAS_RE). ``ZipCollectApp`` itself does not: it keeps a file only if its name minus
the prefix is exactly a released notebook name (so ``-1`` re-uploads and renamed files are
dropped), knows nothing of Gradescope's metadata, and re-copies files on every run.
"""
from __future__ import annotations

import datetime as dt
import filecmp
import functools
import io
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from attnkit import ids

MAX_UPLOAD_BYTES = 50 * 1024 * 1024        # one file as read (a notebook is far smaller)
MAX_SUBMISSION_BYTES = 200 * 1024 * 1024   # all files read from one submission's archives
MAX_EXPORT_BYTES = 4 * 1024 * 1024 * 1024  # all files read from one LMS export
MAX_ENTRIES = 1000                         # entries in one uploaded zip
MAX_EXPORT_ENTRIES = 100_000               # entries in one LMS export zip
MAX_DEPTH = 2                              # zips in zips: an uploaded zip, and one zip inside it
CHUNK = 1024 * 1024
SKIP_PARTS = {"__MACOSX", ".ipynb_checkpoints", "__pycache__"}
CANVAS_RE = (r"^(?P<name>[^_/]+?)(?P<late>_late)?_(?P<student_id>\d+)_(?P<submission_id>\d+)_"
             r"(?P<file_id>[^/]+)$")


class CapExceeded(ValueError):
    """A file or a zip hit one of the caps above (that file is not read)."""


# What a damaged archive entry raises as it is read (a bad CRC, corrupt deflate data, a truncated file,
# an unsupported method or an encrypted entry): it costs only that file.
UNREADABLE = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError, NotImplementedError)


def entry_time(info: zipfile.ZipInfo, fallback: float, tz: dt.tzinfo | None = None) -> float:
    """An entry's DOS time (local, or in ``tz``) as seconds, or ``fallback`` where it is no date
    (zeroed: month 0, day 0)."""
    try:
        return dt.datetime(*info.date_time, tzinfo=tz).timestamp()
    except (ValueError, OverflowError):
        return fallback


def shown(text: str) -> str:
    """Text for the staff terminal: control and format characters (ANSI/OSC escapes, bidi overrides,
    newlines in a file name) written as escapes, so a file name cannot forge report lines."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class BudgetExceeded(CapExceeded):
    """A submission or an export hit its cap on unpacked bytes (nothing more of it is read)."""


def _mb(n: int) -> str:
    return f"{n / (1 << 20):g} MB"


@dataclass
class Budget:
    """Bytes a submission (or an export) may still unpack."""
    left: int
    what: str = "submission"
    parent: "Budget | None" = None  # a submission's budget draws on its export's too
    cap: int = 0

    def __post_init__(self):
        self.cap = self.cap or self.left

    def take(self, n: int) -> None:
        if self.parent is not None:
            self.parent.take(n)
        self.left -= n
        if self.left < 0:
            raise BudgetExceeded(f"the {self.what} unpacks to more than {_mb(self.cap)} (the cap on a {self.what})")


def copy_capped(src: BinaryIO, dst: BinaryIO, cap: int = MAX_UPLOAD_BYTES, budget: Budget | None = None) -> int:
    """Copy in chunks; stop as soon as more than ``cap`` bytes (or the budget) have been read."""
    n = 0
    while True:
        chunk = src.read(min(CHUNK, cap + 1 - n))
        if not chunk:
            return n
        n += len(chunk)
        if budget is not None:
            budget.take(len(chunk))
        if n > cap:
            raise CapExceeded(f"larger than {_mb(cap)} (the cap on one file)")
        dst.write(chunk)


def open_zip(fileobj, max_entries: int = MAX_ENTRIES) -> zipfile.ZipFile:
    """A ZipFile whose central directory was sized before it was read (zipfile reads it whole)."""
    try:
        end = zipfile._EndRecData(fileobj)  # private, but the only way to size the directory first
    except (AttributeError, OSError):
        end = None
    if end and (end[zipfile._ECD_ENTRIES_TOTAL] > max_entries or end[zipfile._ECD_SIZE] > max_entries * 1024):
        raise CapExceeded(f"more than {max_entries} entries (the cap on entries in one zip)")
    zf = zipfile.ZipFile(fileobj)
    if len(zf.infolist()) > max_entries:
        zf.close()
        raise CapExceeded(f"more than {max_entries} entries (the cap on entries in one zip)")
    return zf



# -- the shared matcher --------------------------------------------------------------------
# -- the shared matcher --------------------------------------------------------------------
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
@dataclass
class Person:
    student_id: str
    name: str = ""
    email: str = ""
    lms_user_id: str = ""
    lms_id: str = ""           # the id the LMS gave (student_id is it, mapped to the id rule)


@dataclass
class Submission:
    key: str                   # the export's folder (Gradescope) or '<user id>' (Canvas)
    people: list               # [Person] (several for a Gradescope group submission)
    uploads: list              # [Upload]
    when: dt.datetime
    late: bool = False


def _gradescope_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # Gradescope writes Ruby objects (``!ruby/object:BigDecimal``) for scores: read them as text.
    def unknown(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_mapping(node, deep=True)

    Loader.add_multi_constructor("!", unknown)
    return Loader


def _key(d: dict, name: str):
    """A Gradescope YAML key, written ``:name:`` (a Ruby symbol) or plain."""
    for k in (f":{name}", name, f":{name}:"):
        if k in d:
            return d[k]
    return None


def _when(value) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, str) and value.strip():
        text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())   # nanoseconds -> microseconds
        text = re.sub(r"\s+([+-]\d\d:?\d\d|UTC|Z)$", r"\1", text).replace("UTC", "+00:00").replace("Z", "+00:00")
        parsed = dt.datetime.fromisoformat(text)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    raise ValueError(f"no submission time ({value!r})")


def parse_gradescope_metadata(text: str, problems: list | None = None) -> dict:
    """``submission_metadata.yml`` -> {folder: {"people": [Person], "when": datetime}}.

    The student id is the SID, or the email where the SID is empty. A submitter with neither is
    left out with a line in ``problems`` (a submission left with nobody too); raised without it."""
    import yaml

    try:
        data = yaml.load(text, Loader=_gradescope_loader())
    except yaml.YAMLError as exc:
        raise ValueError(f"submission_metadata.yml is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("submission_metadata.yml: expected one entry per submission folder")
    out = {}
    for folder, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"submission_metadata.yml: entry {folder!r} is not a mapping")
        people, nameless = [], 0
        for s in _key(entry, "submitters") or []:
            sid = str(_key(s, "sid") or "").strip()
            email = str(_key(s, "email") or "").strip()
            if not (sid or email):
                why = f"submission_metadata.yml: a submitter of {folder!r} has neither SID nor email"
                if problems is None:
                    raise ValueError(why)
                problems.append(f"{why} ({str(_key(s, 'name') or '').strip()!r}): not collected "
                                f"(give them an SID or email in Gradescope)")
                nameless += 1
                continue
            people.append(Person(ids.from_lms(sid or email), str(_key(s, "name") or "").strip(), email,
                                 lms_id=sid or email))
        if not people and nameless:
            continue  # said above
        if not people:
            raise ValueError(f"submission_metadata.yml: {folder!r} names no submitters")
        out[str(folder)] = {"people": people, "when": _when(_key(entry, "created_at"))}
    return out


def _split_top(names: list[str]) -> str:
    """The folder every entry of an export sits in ('' if none): exports are sometimes re-zipped."""
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(tops) == 1 and all("/" in n for n in names):
        return next(iter(tops)) + "/"
    return ""


def _entries(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [i for i in zf.infolist() if not i.is_dir() and not SKIP_PARTS & set(i.filename.split("/"))]


def read_gradescope_export(zf: zipfile.ZipFile, problems: list | None = None) -> list[Submission]:
    infos = _entries(zf)
    prefix = _split_top([i.filename for i in infos])
    meta_name = prefix + "submission_metadata.yml"
    try:
        with zf.open(meta_name) as src:
            text = io.BytesIO()
            copy_capped(src, text)
    except KeyError:
        raise ValueError("not a Gradescope export: no submission_metadata.yml at its top") from None
    except CapExceeded as exc:
        raise ValueError(f"submission_metadata.yml: {exc}") from None
    meta = parse_gradescope_metadata(text.getvalue().decode("utf-8", errors="replace"), problems)
    subs = []
    for folder, entry in meta.items():
        inside = prefix + folder + "/"
        # read later, in chunks and capped, and only if a notebook or a zip
        uploads = [Upload(i.filename[len(inside):], None, entry["when"].timestamp(),
                          opener=functools.partial(zf.open, i))
                   for i in infos if i.filename.startswith(inside)]
        subs.append(Submission(folder, entry["people"], uploads, entry["when"]))
    return subs


def read_canvas_export(zf: zipfile.ZipFile, mtime: float | None = None) -> tuple[list[Submission], list[str]]:
    """Canvas names every file ``<name>[_late]_<user id>_<submission id>_<original name>``;
    nbgrader's FileNameCollectorPlugin reads those names with CANVAS_RE. Returns the
    submissions (one per student) and the files that are not Canvas-named. An entry with no
    date (zeroed) takes ``mtime`` (the export's; now if not given)."""
    import time

    fallback = time.time() if mtime is None else mtime
    from nbgrader.plugins import FileNameCollectorPlugin

    plugin = FileNameCollectorPlugin(named_regexp=CANVAS_RE, valid_ext=[".ipynb", ".zip", ".IPYNB", ".ZIP"])
    per_user: dict[str, Submission] = {}
    stray = []
    for info in _entries(zf):
        base = info.filename.rsplit("/", 1)[-1]
        found = plugin.collect(base) if os.path.splitext(base)[1] in plugin.valid_ext else None
        if not found:
            stray.append(info.filename)
            continue
        # Canvas stamps entries with the upload time (in UTC)
        when = dt.datetime.fromtimestamp(entry_time(info, fallback, dt.timezone.utc), dt.timezone.utc)
        sub = per_user.setdefault(found["student_id"], Submission(
            found["student_id"], [Person(found["student_id"], found["name"], lms_user_id=found["student_id"])],
            [], when))
        # the attachment id orders two uploads made within the same zip second
        sub.uploads.append(Upload(found["file_id"], None, when.timestamp(), int(found["submission_id"]),
                                  opener=functools.partial(zf.open, info)))
        sub.when = max(sub.when, when)
        sub.late = sub.late or bool(found["late"])
    return list(per_user.values()), stray


@dataclass
class CollectReport:
    kind: str = ""
    students: dict = field(default_factory=dict)      # sid -> {"person", "files": [(name, stem)], "when", "late"}
    unmatched: list = field(default_factory=list)     # (sid or '-', file name)
    replaced: list = field(default_factory=list)      # (sid, kept, [dropped]) two submissions / two files
    problems: list = field(default_factory=list)
    renamed: list = field(default_factory=list)       # (LMS id, student id) where the id rule changed it

    def table(self, assignment: str) -> str:
        lines = [f"{self.kind} export: collected {len(self.students)} students into submitted/<student>/{assignment}/"]
        width = max([len("student")] + [len(s) for s in self.students])
        lines.append(f"{'student':<{width}}  {'submitted (UTC)':<19}  late  files -> notebook")
        for sid in sorted(self.students):
            s = self.students[sid]
            files = "; ".join(f"{name} -> {stem}" for name, stem in s["files"]) or "(no notebook matched)"
            lines.append(f"{sid:<{width}}  {s['when'].astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S}  "
                         f"{'LATE' if s['late'] else '    '}  {files}")
        late = sorted(s for s in self.students if self.students[s]["late"])
        lines.append(f"late: {', '.join(late) if late else 'none'}")
        lines.append("students with two submissions (newest kept): "
                     + ("; ".join(f"{sid}: kept {kept}, dropped {', '.join(drop)}" for sid, kept, drop in self.replaced)
                        or "none"))
        lines.append("files that matched nothing: "
                     + ("; ".join(f"{sid}: {name}" for sid, name in self.unmatched) or "none"))
        if self.renamed:
            lines.append("LMS ids changed to keep the student id rule (letters, digits, -_.@; a hash keeps them "
                         "apart): " + "; ".join(f"{lms!r} -> {sid}" for lms, sid in self.renamed))
        for p in self.problems:
            lines.append(f"problem: {p}")
        return "\n".join(shown(line) for line in lines)  # file names are the students' text


def detect(zf: zipfile.ZipFile) -> str:
    names = [i.filename for i in _entries(zf)]
    prefix = _split_top(names)
    if prefix + "submission_metadata.yml" in names:
        return "gradescope"
    if any(re.match(CANVAS_RE, n.rsplit("/", 1)[-1]) for n in names):
        return "canvas"
    raise ValueError("neither a Gradescope export (no submission_metadata.yml) nor a Canvas download "
                     "(no file named <name>_<user id>_<submission id>_<file>)")


def collect(course, assignment: str, export: Path, kind: str = "auto", due: dt.datetime | None = None) -> CollectReport:
    """Fill ``submitted/<student>/<assignment>/`` from an LMS export zip (idempotent).

    The export is read entry by entry while it is open, one submission at a time, within the caps."""
    stems = course.notebooks(assignment)
    report = CollectReport()
    raw = open(export, "rb")  # FileNotFoundError: the CLI says so
    try:
        zf = open_zip(raw, MAX_EXPORT_ENTRIES)
    except CapExceeded as exc:
        raw.close()
        raise ValueError(f"{export}: {exc}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raw.close()
        raise ValueError(f"{export}: not a readable zip ({exc})") from None
    with raw, zf:
        report.kind = detect(zf) if kind == "auto" else kind
        if report.kind == "gradescope":
            subs = read_gradescope_export(zf, report.problems)
        elif report.kind == "canvas":
            subs, stray = read_canvas_export(zf, os.fstat(raw.fileno()).st_mtime)
            report.unmatched += [("-", name) for name in stray]
        else:
            raise ValueError(f"unknown export format {kind!r} (gradescope, canvas or auto)")
        # One submission per student: the newest (a student may appear in two Gradescope submissions).
        newest: dict[str, tuple[Submission, Person]] = {}
        lms_ids: dict[str, set] = {}
        for sub in sorted(subs, key=lambda s: (s.when, s.key)):
            for person in sub.people:
                lms_ids.setdefault(person.student_id, set()).add(person.lms_id or person.student_id)
                if person.student_id in newest:
                    report.replaced.append((person.student_id, sub.key, [newest[person.student_id][0].key]))
                newest[person.student_id] = (sub, person)
        export_budget = Budget(MAX_EXPORT_BYTES, "export")
        for sid, (sub, person) in sorted(newest.items()):
            if (person.lms_id or sid) != sid:
                report.renamed.append((person.lms_id, sid))
            refused = _refusal(course, sid, lms_ids[sid])
            if refused:
                report.problems.append(refused)
                continue
            budget = Budget(MAX_SUBMISSION_BYTES, "submission", export_budget)
            matching = match_uploads(sub.uploads, stems, budget)
            try:
                late = sub.late or (due is not None and sub.when > due)
                dest = course.path("submitted", sid, assignment)
                place(matching, dest, sub.when.timestamp(), budget)
                # nbgrader reads the submission time (and lateness) from timestamp.txt
                write_if_changed(dest / "timestamp.txt",
                                 sub.when.astimezone(dt.timezone.utc).isoformat(" ").encode(), sub.when.timestamp())
            finally:
                matching.cleanup()
            report.students[sid] = {"person": person, "when": sub.when, "late": late,
                                    "files": [(up.name, stem) for stem, up in sorted(matching.chosen.items())]}
            report.unmatched += [(sid, name) for name in matching.unmatched]
            report.replaced += [(sid, kept, dropped) for _, kept, dropped in matching.duplicates]
            report.problems += [f"{sid}: {p}" for p in matching.problems]
    _record_students(course, report)
    return report


def _refusal(course, sid: str, lms_ids: set) -> str | None:
    """Why a student must not be written (two LMS ids on one student id, a planted link), or None."""
    if len(lms_ids) > 1:  # from_lms makes this (nearly) impossible; never merge two students if it happens
        return (f"LMS ids {', '.join(repr(i) for i in sorted(lms_ids))} would all be student {sid!r}: "
                f"none of them collected (give them distinct ids in the LMS)")
    why = ids.refusal(sid)
    if why:  # from_lms keeps the rule; this guards the Canvas path and any future reader
        return f"{why}: not collected"
    for folder in (course.path("submitted"), course.path("submitted", sid)):
        if folder.is_symlink():
            return f"{sid}: {folder} is a symbolic link: not collected"
    return None


def _record_students(course, report: CollectReport) -> None:
    """Names, emails and LMS user ids go into the gradebook (the Canvas export uses them). A Gradescope
    id the id rule changed is kept as the LMS wrote it, in ``lms_user_id`` (canvas.py tells it from a
    Canvas user id: it maps to the student id without being it)."""
    with course.gradebook() as gb:
        for sid, s in report.students.items():
            p: Person = s["person"]
            first, _, last = p.name.partition(" ") if " " in p.name else ("", "", p.name)
            lms_user_id = p.lms_user_id or (p.lms_id if p.lms_id and p.lms_id != sid else "")
            kwargs = {k: v for k, v in {"first_name": first or None, "last_name": last or None,
                                        "email": p.email or None, "lms_user_id": lms_user_id or None}.items() if v}
            gb.update_or_create_student(sid, **kwargs)
