"""Submissions in from the LMS: what students upload, matched to the assignment's notebooks.

One matcher serves both ways a submission arrives:

* ``run_autograder`` on Gradescope (attnkit/lms/gradescope.py) matches the files in
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

The caps and archive reading are archives.py, the matcher matching.py, the export formats exports.py.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from attnkit import ids
from attnkit.lms.archives import (MAX_EXPORT_BYTES, MAX_EXPORT_ENTRIES, MAX_SUBMISSION_BYTES, Budget, CapExceeded,
                                  open_zip, shown)
from attnkit.lms.exports import (CANVAS_RE, _entries, _split_top, Person, read_canvas_export, read_gradescope_export,
                                 Submission)
from attnkit.lms.matching import match_uploads, place, write_if_changed


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
