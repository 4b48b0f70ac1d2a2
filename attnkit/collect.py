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

Of nbgrader's ZipCollect machinery only ``FileNameCollectorPlugin`` fits (it reads Canvas's file
names with CANVAS_RE). ``ZipCollectApp`` itself does not: it keeps a file only if its name minus
the prefix is exactly a released notebook name (so ``-1`` re-uploads and renamed files are
dropped), knows nothing of Gradescope's metadata, and re-copies files on every run.
"""
from __future__ import annotations

import datetime as dt
import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MAX_UPLOAD_BYTES = 50 * 1024 * 1024   # a notebook is far smaller; larger entries are refused
SKIP_PARTS = {"__MACOSX", ".ipynb_checkpoints", "__pycache__"}
CANVAS_RE = (r"^(?P<name>[^_/]+?)(?P<late>_late)?_(?P<student_id>\d+)_(?P<submission_id>\d+)_"
             r"(?P<file_id>[^/]+)$")


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
    name: str                 # as shown to people: 'hw9.zip:hw9/q3.ipynb'
    data: bytes
    mtime: float = 0.0        # seconds since the epoch; newer wins between duplicates
    order: int = 0            # then the higher of these (Canvas's attachment id)


@dataclass
class Matching:
    chosen: dict = field(default_factory=dict)       # stem -> Upload
    unmatched: list = field(default_factory=list)    # names of files that matched no notebook
    duplicates: list = field(default_factory=list)   # (stem, kept name, [dropped names])
    problems: list = field(default_factory=list)     # unreadable archives and the like

    def missing(self, stems) -> list:
        return [s for s in stems if s not in self.chosen]


def _zip_uploads(data: bytes, label: str, mtime: float, problems: list) -> list[Upload]:
    """The files inside an uploaded zip (any folder depth; no nested zips)."""
    out = []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                parts = PurePosixPath(info.filename.replace("\\", "/")).parts
                if info.is_dir() or not parts or SKIP_PARTS & set(parts) or parts[-1].startswith("._"):
                    continue
                if info.file_size > MAX_UPLOAD_BYTES:
                    problems.append(f"{label}:{info.filename}: larger than {MAX_UPLOAD_BYTES >> 20} MB, ignored")
                    continue
                when = dt.datetime(*info.date_time).timestamp() if info.date_time[0] >= 1980 else mtime
                out.append(Upload(f"{label}:{info.filename}", zf.read(info), when))
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
        problems.append(f"{label}: not a readable zip ({type(exc).__name__}: {exc})")
    return out


def expand(uploads: list[Upload], problems: list | None = None) -> list[Upload]:
    """Uploads with every zip replaced by its files."""
    problems = problems if problems is not None else []
    out = []
    for up in uploads:
        if up.name.lower().endswith(".zip"):
            out += _zip_uploads(up.data, up.name, up.mtime, problems)
        else:
            out.append(up)
    return out


def uploads_in(folder: Path, max_depth: int = 3) -> list[Upload]:
    """Every file under an upload folder (Gradescope's /autograder/submission), zips included."""
    folder = Path(folder)
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or path.is_symlink() or len(rel.parts) > max_depth or SKIP_PARTS & set(rel.parts):
            continue
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            out.append(Upload(rel.as_posix(), b"", path.stat().st_mtime))  # matched, then reported malformed
            continue
        out.append(Upload(rel.as_posix(), path.read_bytes(), path.stat().st_mtime))
    return out


def match_uploads(uploads: list[Upload], stems) -> Matching:
    """Match uploads (zips expanded) to notebook stems; of two files for one notebook the
    newer wins (then the higher copy number: ``x (2).ipynb`` is the later download)."""
    m = Matching()
    files = expand(uploads, m.problems)
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


def write_if_changed(path: Path, data: bytes, mtime: float | None = None) -> bool:
    """Write only when the bytes differ (re-collecting leaves files untouched); set mtime."""
    changed = not path.exists() or path.read_bytes() != data
    if changed:
        path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return changed


def place(matching: Matching, dest: Path, mtime: float | None = None) -> None:
    """Write the chosen uploads into ``dest`` as ``<stem>.ipynb``; other notebooks there go."""
    dest.mkdir(parents=True, exist_ok=True)
    keep = {f"{stem}.ipynb" for stem in matching.chosen}
    for old in dest.glob("*.ipynb"):
        if old.name not in keep:
            old.unlink()
    for stem, up in sorted(matching.chosen.items()):
        write_if_changed(dest / f"{stem}.ipynb", up.data, mtime)


# -- LMS exports ------------------------------------------------------------------------------
@dataclass
class Person:
    student_id: str
    name: str = ""
    email: str = ""
    lms_user_id: str = ""


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


def safe_id(text: str) -> str:
    """A student id usable as a folder name (no slashes, no leading dot, trimmed)."""
    out = re.sub(r"[/\\\x00-\x1f]+", "_", str(text).strip()).lstrip(".")
    return out


def parse_gradescope_metadata(text: str) -> dict:
    """``submission_metadata.yml`` -> {folder: {"people": [Person], "when": datetime}}.

    The student id is the SID, or the email where the SID is empty."""
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
        people = []
        for s in _key(entry, "submitters") or []:
            sid = str(_key(s, "sid") or "").strip()
            email = str(_key(s, "email") or "").strip()
            if not (sid or email):
                raise ValueError(f"submission_metadata.yml: a submitter of {folder!r} has neither SID nor email")
            people.append(Person(safe_id(sid or email), str(_key(s, "name") or "").strip(), email))
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


def read_gradescope_export(zf: zipfile.ZipFile) -> list[Submission]:
    infos = _entries(zf)
    prefix = _split_top([i.filename for i in infos])
    meta_name = prefix + "submission_metadata.yml"
    try:
        meta = parse_gradescope_metadata(zf.read(meta_name).decode("utf-8"))
    except KeyError:
        raise ValueError("not a Gradescope export: no submission_metadata.yml at its top") from None
    subs = []
    for folder, entry in meta.items():
        inside = prefix + folder + "/"
        uploads = [Upload(i.filename[len(inside):], zf.read(i), entry["when"].timestamp())
                   for i in infos if i.filename.startswith(inside) and i.file_size <= MAX_UPLOAD_BYTES]
        subs.append(Submission(folder, entry["people"], uploads, entry["when"]))
    return subs


def read_canvas_export(zf: zipfile.ZipFile) -> tuple[list[Submission], list[str]]:
    """Canvas names every file ``<name>[_late]_<user id>_<submission id>_<original name>``;
    nbgrader's FileNameCollectorPlugin reads those names with CANVAS_RE. Returns the
    submissions (one per student) and the files that are not Canvas-named."""
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
        when = dt.datetime(*info.date_time, tzinfo=dt.timezone.utc)  # Canvas stamps entries with the upload time
        sub = per_user.setdefault(found["student_id"], Submission(
            found["student_id"], [Person(found["student_id"], found["name"], lms_user_id=found["student_id"])],
            [], when))
        # the attachment id orders two uploads made within the same zip second
        sub.uploads.append(Upload(found["file_id"], zf.read(info), when.timestamp(), int(found["submission_id"])))
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
        for p in self.problems:
            lines.append(f"problem: {p}")
        return "\n".join(lines)


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
    """Fill ``submitted/<student>/<assignment>/`` from an LMS export zip (idempotent)."""
    stems = course.notebooks(assignment)
    report = CollectReport()
    try:
        zf = zipfile.ZipFile(export)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{export}: not a readable zip ({exc})") from None
    with zf:
        report.kind = detect(zf) if kind == "auto" else kind
        if report.kind == "gradescope":
            subs = read_gradescope_export(zf)
        elif report.kind == "canvas":
            subs, stray = read_canvas_export(zf)
            report.unmatched += [("-", name) for name in stray]
        else:
            raise ValueError(f"unknown export format {kind!r} (gradescope, canvas or auto)")
    # One submission per student: the newest (a student may appear in two Gradescope submissions).
    newest: dict[str, tuple[Submission, Person]] = {}
    for sub in sorted(subs, key=lambda s: (s.when, s.key)):
        for person in sub.people:
            if person.student_id in newest:
                report.replaced.append((person.student_id, sub.key, [newest[person.student_id][0].key]))
            newest[person.student_id] = (sub, person)
    for sid, (sub, person) in sorted(newest.items()):
        matching = match_uploads(sub.uploads, stems)
        late = sub.late or (due is not None and sub.when > due)
        dest = course.path("submitted", sid, assignment)
        place(matching, dest, sub.when.timestamp())
        # nbgrader reads the submission time (and lateness) from timestamp.txt
        write_if_changed(dest / "timestamp.txt", sub.when.astimezone(dt.timezone.utc).isoformat(" ").encode(),
                         sub.when.timestamp())
        report.students[sid] = {"person": person, "when": sub.when, "late": late,
                                "files": [(up.name, stem) for stem, up in sorted(matching.chosen.items())]}
        report.unmatched += [(sid, name) for name in matching.unmatched]
        report.replaced += [(sid, kept, dropped) for _, kept, dropped in matching.duplicates]
        report.problems += [f"{sid}: {p}" for p in matching.problems]
    _record_students(course, report)
    return report


def _record_students(course, report: CollectReport) -> None:
    """Names, emails and LMS user ids go into the gradebook (the Canvas export uses them)."""
    with course.gradebook() as gb:
        for sid, s in report.students.items():
            p: Person = s["person"]
            first, _, last = p.name.partition(" ") if " " in p.name else ("", "", p.name)
            kwargs = {k: v for k, v in {"first_name": first or None, "last_name": last or None,
                                        "email": p.email or None, "lms_user_id": p.lms_user_id or None}.items() if v}
            gb.update_or_create_student(sid, **kwargs)
