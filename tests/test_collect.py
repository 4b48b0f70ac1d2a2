"""The upload matcher and the LMS export readers (fast: no grading).

The end-to-end collect -> autograde -> export round trip is in test_gradescope.py."""
from __future__ import annotations

import datetime as dt
import io
import zipfile

import pytest

from banks.attacks.archives import GOOD, canvas_bomb, zeros_entry, zip_bytes

from attnkit.lms.exports import CANVAS_RE, parse_gradescope_metadata, read_canvas_export, read_gradescope_export
from attnkit.lms.matching import Upload, copy_number, match_notebook, match_uploads, normalise
from attnkit.lms.collect import detect

STEMS = ["q12_scaled_dot_product", "q3_multihead_attention", "q4_multiquery_attention", "q6_linear_attention"]


def _zip(entries: dict, times: dict | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(times or {}).get(name, (2024, 3, 1, 12, 0, 0)))
            zf.writestr(info, data)
    return buf.getvalue()


@pytest.mark.parametrize("name", [
    "q3_multihead_attention.ipynb",
    "Q3_MultiHead_Attention (1).ipynb",
    "Q3 MultiHead Attention.ipynb",
    "q3-multihead-attention.IPYNB",
    "q3_multihead_attention-1.ipynb",
    "q3_multihead_attention (2)-1.ipynb",
    "hw9/q3_multihead_attention.ipynb",
])
def test_renamed_upload_matches_its_notebook(name):
    """Does a renamed upload (browser ' (1)', Canvas '-1', case, spaces, a folder) still match its notebook?"""
    assert match_notebook(name, STEMS) == "q3_multihead_attention"


@pytest.mark.parametrize("name", ["q3_multihead_attention.py", "notes.txt", "q3_attention.ipynb",
                                  "q4_multihead_attention.ipynb", "Untitled.ipynb"])
def test_other_files_match_nothing(name):
    """Is a file that is not one of the notebooks (other extension, other name) left unmatched?"""
    assert match_notebook(name, STEMS) is None


def test_normalise_and_copy_number():
    """Do the normaliser and the copy number read the suffixes browsers and Canvas add?"""
    assert normalise("Q12 Scaled-Dot.Product (3).ipynb") == "q12_scaled_dot_product"
    assert copy_number("x (2).ipynb") == 2 and copy_number("x-3.ipynb") == 3 and copy_number("x.ipynb") == 0


def test_zip_upload_nested_one_folder_is_unpacked():
    """Is a zip of the homework folder (one folder deep, with checkpoints and extra files) matched file by file?"""
    data = _zip({"hw9/Q3_MultiHead_Attention.ipynb": b"{}", "hw9/q6_linear_attention.ipynb": b"{}",
                 "hw9/.ipynb_checkpoints/q4_multiquery_attention-checkpoint.ipynb": b"{}",
                 "__MACOSX/hw9/._q3_multihead_attention.ipynb": b"x", "hw9/attention_checks.py": b""})
    m = match_uploads([Upload("hw9.zip", data)], STEMS)
    assert sorted(m.chosen) == ["q3_multihead_attention", "q6_linear_attention"]
    assert m.unmatched == ["hw9.zip:hw9/attention_checks.py"]
    assert m.missing(STEMS) == ["q12_scaled_dot_product", "q4_multiquery_attention"]


def test_broken_zip_is_reported_not_raised():
    """Does an upload named .zip that is not a zip give a message instead of an exception?"""
    m = match_uploads([Upload("hw9.zip", b"not a zip")], STEMS)
    assert m.chosen == {} and "not a readable zip" in m.problems[0]


def test_two_files_for_one_notebook_keep_the_newer():
    """Of two uploads of one notebook, is the newer kept (then the higher copy number) and the other reported?"""
    m = match_uploads([Upload("q3_multihead_attention.ipynb", b"old", 100),
                       Upload("q3_multihead_attention (1).ipynb", b"new", 200)], STEMS)
    assert m.chosen["q3_multihead_attention"].read() == b"new"
    assert m.duplicates == [("q3_multihead_attention", "q3_multihead_attention (1).ipynb",
                             ["q3_multihead_attention.ipynb"])]
    m = match_uploads([Upload("q3_multihead_attention (1).ipynb", b"a", 5),
                       Upload("q3_multihead_attention (2).ipynb", b"b", 5)], STEMS)
    assert m.chosen["q3_multihead_attention"].read() == b"b"


GRADESCOPE_YML = """\
submission_101:
  :submitters:
  - :name: Zoë Müller
    :sid: '3031'
    :email: zoe@example.edu
  :created_at: 2024-03-01 10:00:01.123456789 -08:00
  :score: !ruby/object:BigDecimal 18:0.15e2
  :status: processed
submission_102:
  :submitters:
  - :name: Ana López
    :sid: ''
    :email: ana.lopez@example.edu
  - :name: Bo Chen
    :sid: 4242
    :email: bo@example.edu
  :created_at: '2024-03-02 09:30:00 UTC'
"""


def test_gradescope_metadata_is_read():
    """Does the metadata parser read Gradescope's colon keys, Ruby tags, groups, and fall back to the email?"""
    meta = parse_gradescope_metadata(GRADESCOPE_YML)
    zoe = meta["submission_101"]
    assert [(p.student_id, p.name, p.email) for p in zoe["people"]] == [("3031", "Zoë Müller", "zoe@example.edu")]
    assert zoe["when"] == dt.datetime(2024, 3, 1, 18, 0, 1, 123456, tzinfo=dt.timezone.utc)
    assert [p.student_id for p in meta["submission_102"]["people"]] == ["ana.lopez@example.edu", "4242"]
    assert meta["submission_102"]["when"] == dt.datetime(2024, 3, 2, 9, 30, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("text, message", [
    ("submission_1:\n  :submitters: []\n  :created_at: 2024-01-01 00:00:00 UTC\n", "names no submitters"),
    ("submission_1:\n  :submitters:\n  - :name: X\n    :sid: ''\n    :email: ''\n", "neither SID nor email"),
    ("[1, 2", "not valid YAML"),
    ("- a\n- b\n", "one entry per submission"),
])
def test_bad_gradescope_metadata_says_why(text, message):
    """Does a broken submission_metadata.yml give a message that names the problem?"""
    with pytest.raises(ValueError, match=message):
        parse_gradescope_metadata(text)


def test_export_kind_is_detected():
    """Are Gradescope and Canvas exports told apart, and anything else refused with a message?"""
    gs = zipfile.ZipFile(io.BytesIO(_zip({"export/submission_metadata.yml": GRADESCOPE_YML.encode(),
                                          "export/submission_101/q3.ipynb": b"{}"})))
    assert detect(gs) == "gradescope"
    subs = read_gradescope_export(gs)
    assert {s.key: [u.name for u in s.uploads] for s in subs} == {"submission_101": ["q3.ipynb"], "submission_102": []}
    cv = zipfile.ZipFile(io.BytesIO(_zip({"smithjohn_late_12345_678901_q3_multihead_attention-1.ipynb": b"{}"})))
    assert detect(cv) == "canvas"
    with pytest.raises(ValueError, match="neither a Gradescope export"):
        detect(zipfile.ZipFile(io.BytesIO(_zip({"q3.ipynb": b"{}"}))))


def test_canvas_names_are_read_with_nbgrader_plugin():
    """Do Canvas file names give the user id, the late flag and the original name (via nbgrader's plugin)?"""
    import re
    m = re.match(CANVAS_RE, "smithjohn_late_12345_678901_q3_multihead_attention-1.ipynb")
    assert m["name"] == "smithjohn" and m["late"] and m["student_id"] == "12345"
    assert m["file_id"] == "q3_multihead_attention-1.ipynb"
    zf = zipfile.ZipFile(io.BytesIO(_zip({
        "smithjohn_12345_678901_q3_multihead_attention.ipynb": b"old",
        "smithjohn_12345_678950_q3_multihead_attention-1.ipynb": b"new",
        "müllerzoë_late_23456_679000_Q3 MultiHead Attention.ipynb": b"z",
        "readme.txt": b""})))
    subs, stray = read_canvas_export(zf)
    by = {s.key: s for s in subs}
    assert stray == ["readme.txt"]
    assert by["23456"].late and not by["12345"].late and by["23456"].people[0].name == "müllerzoë"
    m = match_uploads(by["12345"].uploads, STEMS)
    assert m.chosen["q3_multihead_attention"].read() == b"new"


# -- student ids ---------------------------------------------------------------------------------
from pathlib import Path  # noqa: E402

from attnkit import ids  # noqa: E402
from harness import kit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NB = "q3_multihead_attention"


@pytest.mark.parametrize("sid", ["3031", "ana.lopez@example.edu", "Zoë_Müller-Łukasz.3", "学生王", "a-b_c",
                                 "x" * 64])
def test_valid_ids_keep_the_rule(sid):
    """Is an id of letters (any script), digits and -_.@ accepted as it is?"""
    assert ids.problem(sid) is None and ids.from_lms(sid) == sid


@pytest.mark.parametrize("sid, why", [("*", "'*'"), ("a?", "'?'"), ("[ab]", "'['"), ("..", "dot"), (".", "dot"),
                                      (".x", "dot"), ("a/b", "'/'"), ("a b", "' '"), ("", "empty"),
                                      ("x" * 65, "longer"), ("e\u0301", "'\u0301'"), ("a\\b", "'\\\\'")])
def test_ids_that_break_the_rule_say_why(sid, why):
    """Is an id with a glob or path character, a leading dot, or too long refused with the reason?"""
    assert why in ids.problem(sid)
    mapped = ids.from_lms(sid) if sid else ids.from_lms("_")
    assert ids.is_valid(mapped)


def test_lms_ids_never_merge():
    """Do ids that one character-replacement would merge ('x'/'.x', 'a/b'/'a_b', '*'/'?') stay distinct and stable?"""
    groups = [("x", ".x", "..x"), ("a/b", "a_b", "a\\b", "a b"), ("*", "?", "_", ".", ".."), ("a" * 70, "a" * 71)]
    for group in groups:
        mapped = [ids.from_lms(s) for s in group]
        assert len(set(mapped)) == len(group), dict(zip(group, mapped))
        assert mapped == [ids.from_lms(s) for s in group]  # deterministic: re-collecting finds the same folder
        assert all(ids.is_valid(m) for m in mapped)


def _gradescope_zip(path: Path, people: dict) -> Path:
    """A Gradescope export: one submission per SID, each uploading NB with a text naming its owner."""
    yml, entries = [], {}
    for i, (sid, text) in enumerate(people.items()):
        folder = f"submission_{i}"
        yml.append(f"{folder}:\n  :submitters:\n  - :name: Student {i}\n    :sid: {sid!r}\n"
                   f"    :email: s{i}@example.edu\n  :created_at: 2024-03-01 10:00:0{i} UTC\n")
        entries[f"export/{folder}/{NB}.ipynb"] = text.encode()
    entries["export/submission_metadata.yml"] = "".join(yml).encode()
    path.write_bytes(_zip(entries))
    return path


@pytest.fixture(scope="module")
def scratch_course():
    import shutil

    from attnkit.course import Course
    c = Course(ROOT).scratch_copy(notebooks=[NB])
    yield c
    shutil.rmtree(c.root, ignore_errors=True)


def test_collect_keeps_hostile_and_colliding_ids_apart(scratch_course, tmp_path):
    """Through ./kit collect: do '*', '..', 'x' vs '.x' and 'a/b' vs 'a_b' each land in a folder of their
    own, with their own file, nothing in submitted/hw9 and no folder named '*', and the renames said?"""
    people = {"*": "star", "..": "dotdot", "x": "plain x", ".x": "dot x", "a/b": "slash", "a_b": "underscore"}
    out = kit(scratch_course.root, "collect", "hw9", str(_gradescope_zip(tmp_path / "gs.zip", people)), check=True)
    sub = scratch_course.path("submitted")
    found = {p.name: (p / "hw9" / f"{NB}.ipynb").read_text() for p in sub.iterdir()}
    assert sorted(found.values()) == sorted(people.values())  # six students, six files, none overwritten
    assert found["x"] == "plain x" and found["a_b"] == "underscore"  # valid ids are kept as they are
    assert all(ids.is_valid(name) for name in found) and not (sub / "hw9").exists() and not (sub / "*").exists()
    for lms in ("*", "..", ".x", "a/b"):
        mapped = ids.from_lms(lms)
        assert found[mapped] == people[lms] and f"{lms!r} -> {mapped}" in out.stdout
    # again: the same folders, nothing new
    kit(scratch_course.root, "collect", "hw9", str(tmp_path / "gs.zip"), check=True)
    assert sorted(p.name for p in sub.iterdir()) == sorted(found)
    import shutil
    shutil.rmtree(sub)


def test_autograde_and_feedback_refuse_a_pattern_id(scratch_course):
    """Does `autograde --student '*'` (or '..', 'a b') refuse with the id rule and leave every other student's
    autograded notebook as it was (nbgrader would read '*' as every student)? And feedback too?"""
    c = scratch_course
    for sid in ("alice", "bob", "*"):
        (c.path("submitted", sid, "hw9")).mkdir(parents=True, exist_ok=True)
        (c.path("submitted", sid, "hw9", f"{NB}.ipynb")).write_text("{}")
    graded = c.path("autograded", "alice", "hw9", f"{NB}.ipynb")
    graded.parent.mkdir(parents=True, exist_ok=True)
    graded.write_text("alice's graded notebook")
    before = graded.stat().st_mtime_ns
    bad = ("*", "..", "a b", "[ab]*")
    flags = [x for sid in bad for x in ("--student", sid)]
    out = kit(c.root, "autograde", "hw9", *flags, "--quiet", "--unsandboxed-i-accept-the-risk")
    fb = kit(c.root, "feedback", "hw9", *flags)
    assert out.returncode != 0 and fb.returncode == 1, out.stderr[-2000:]
    for sid in bad:
        assert f"student id {sid!r}" in out.stderr and f"student id {sid!r}" in fb.stderr
    assert graded.read_text() == "alice's graded notebook" and graded.stat().st_mtime_ns == before
    assert not c.path("feedback").exists()
    import shutil
    for folder in ("submitted", "autograded"):
        shutil.rmtree(c.path(folder), ignore_errors=True)


# -- archives: streamed, within caps ---------------------------------------------------------------
_zeros_entry, _zip_bytes = zeros_entry, zip_bytes


PEAK_RSS = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(proc.stdout); sys.stderr.write(proc.stderr)
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(proc.returncode)
"""


@pytest.mark.slow  # ~1 GB deflated to build it and 0.3 GB inflated: ~5 s; the file cap stays in the fast tier
def test_zip_bombs_are_refused_in_bounded_memory(scratch_course, tmp_path):
    """Through ./kit collect: does a 0.6 MB Canvas download whose notebooks inflate to 600 MB, a nested zip
    bomb (zips of 45 MB notebooks, 360 MB in all) and a zip four levels deep each get a message, no file
    over the cap, bounded memory, while the other student in the same download is collected?"""
    import subprocess
    import sys

    good = GOOD
    export = tmp_path / "canvas.zip"
    export.write_bytes(canvas_bomb())
    assert export.stat().st_size < 1_500_000
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "attnkit", "--root",
                           str(scratch_course.root), "collect", "hw9", str(export)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    peak_mb = int(out.split("PEAK_RSS_KB")[1]) / 1024
    print(f"collect of a {export.stat().st_size / 1e6:.2f} MB zip bomb: peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 250, out  # the Python process with nbgrader imported is ~100-150 MB; a notebook read whole is 300
    sub = scratch_course.path("submitted")
    assert (sub / "1003" / "hw9" / f"{NB}.ipynb").read_bytes() == good  # the other student: collected
    sizes = {str(p.relative_to(sub)): p.stat().st_size for p in sub.rglob("*") if p.is_file()}
    assert max(sizes.values()) <= 50 << 20, sizes
    assert not (sub / "1001" / "hw9" / f"{NB}.ipynb").exists()
    assert f"1001: {NB}.ipynb: larger than 50 MB (the cap on one file), not collected" in out
    assert "1002: hw9.zip" in out and "unpacks to more than 200 MB (the cap on a submission)" in out
    assert "nested deeper than 2 levels" in out
    import shutil
    shutil.rmtree(sub)


def test_gradescope_upload_folder_bomb_is_capped(tmp_path):
    """In a Gradescope upload folder, is a zip whose notebook inflates to 300 MB refused with a message (never
    read whole), while the student's plain notebook beside it is matched?"""
    from attnkit.lms.matching import uploads_in
    (tmp_path / "hw9.zip").write_bytes(_zip_bytes(lambda z: _zeros_entry(z, f"hw9/{NB}.ipynb", 300 << 20)))
    (tmp_path / "q6_linear_attention.ipynb").write_bytes(b"{}")
    m = match_uploads(uploads_in(tmp_path), STEMS)
    assert sorted(m.chosen) == ["q6_linear_attention"] and m.chosen["q6_linear_attention"].read() == b"{}"
    assert m.problems == [f"hw9.zip:hw9/{NB}.ipynb: larger than 50 MB (the cap on one file), ignored"]
    m.cleanup()


def test_too_many_entries_are_refused(tmp_path, monkeypatch):
    """Is an uploaded zip with more entries than the cap refused before its directory is read (zipfile
    reads the whole directory into memory: it is never opened)?"""
    from attnkit.lms.archives import MAX_ENTRIES
    data = _zip_bytes(lambda z: [z.writestr(f"f{i}.txt", b"") for i in range(MAX_ENTRIES + 1)])

    def read_directory(*args, **kwargs):
        raise AssertionError("the central directory was read")
    monkeypatch.setattr(zipfile, "ZipFile", read_directory)
    m = match_uploads([Upload("hw9.zip", data)], STEMS)
    assert m.chosen == {} and m.problems == [f"hw9.zip: more than {MAX_ENTRIES} entries (the cap on entries in one "
                                             f"zip), not unpacked"]


@pytest.mark.slow
def test_batch_refuses_bad_ids_already_in_submitted_and_goes_on():
    """Do folders in submitted/ whose names break the id rule ('*', '.hidden', 'a b') each get a refusal
    naming the rule, while the valid student beside them is graded, and nothing is made for the others?"""
    import json
    import shutil

    from attnkit.course import Course
    c = Course(ROOT).scratch_copy(notebooks=[NB], with_release=True)
    try:
        for sid in ("alice", "*", ".hidden", "a b"):
            (c.path("submitted", sid, "hw9")).mkdir(parents=True)
            shutil.copy2(c.path("release", "hw9", f"{NB}.ipynb"), c.path("submitted", sid, "hw9", f"{NB}.ipynb"))
        out = kit(c.root, "autograde", "hw9", "--workers", "1", "--quiet")
        assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
        for sid in ("*", ".hidden", "a b"):
            assert f"error: not graded: student id {sid!r}" in out.stderr
        with c.gradebook() as gb:
            assert [s.id for s in gb.students] == ["alice"]
            assert gb.find_submission_notebook(NB, "hw9", "alice").score == 0
        assert sorted(p.name for p in c.path("autograded").iterdir()) == ["alice"]
        report = {r["student"]: r for r in json.loads(c.path("reports", "hw9-autograde.json").read_text())}
        assert report["alice"]["notebooks"][0]["status"] == "graded"
        star = report["*"]["notebooks"][0]
        assert star["status"] == "failed" and star["message"].startswith(f"not graded: student id '*' holds '*' "
                                                                           f"(student ids: {ids.RULE})"), star
    finally:
        shutil.rmtree(c.root, ignore_errors=True)


# -- damaged exports, odd dates, hostile names ---------------------------------------------------------
def _bad_crc(data: bytes, name: str) -> bytes:
    """``data`` (a zip) with the CRC of entry ``name`` changed in both headers: the entry reads, then fails."""
    zf = zipfile.ZipFile(io.BytesIO(data))
    info = zf.getinfo(name)
    good = info.CRC.to_bytes(4, "little")
    bad = (info.CRC ^ 0xFFFFFFFF).to_bytes(4, "little")
    assert data.count(good) == 2
    return data.replace(good, bad)


def test_a_damaged_canvas_entry_costs_only_its_student(scratch_course, tmp_path):
    """Through ./kit collect: does a Canvas download whose entry for one student has a bad CRC give that
    student a message, while the other student is collected and recorded, the kit exiting 0 (a partial
    problem is reported, not fatal), and is a file name with terminal escapes printed escaped?"""
    good = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
    bad_name = f"bad_2001_6001_{NB}.ipynb"
    forged = "\x1b[2K\rproblem: none\x1b]0;pwned\x07.ipynb"
    data = _zip({bad_name: b"x" * 300, f"good_2002_6002_{NB}.ipynb": good, f"good_2002_6003_{forged}": b""})
    export = tmp_path / "canvas.zip"
    export.write_bytes(_bad_crc(data, bad_name))
    out = kit(scratch_course.root, "collect", "hw9", str(export))
    try:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        sub = scratch_course.path("submitted")
        assert (sub / "2002" / "hw9" / f"{NB}.ipynb").read_bytes() == good
        assert not (sub / "2001" / "hw9" / f"{NB}.ipynb").exists()
        assert f"problem: 2001: {NB}.ipynb: not collected (BadZipFile: Bad CRC-32" in out.stdout
        with scratch_course.gradebook() as gb:
            assert {"2001", "2002"} <= {s.id for s in gb.students}  # _record_students ran
        assert "\x1b" not in out.stdout and "\x07" not in out.stdout and "\r" not in out.stdout
        assert "2002: \\x1b[2K\\rproblem: none\\x1b]0;pwned\\x07.ipynb" in out.stdout
    finally:
        import shutil
        shutil.rmtree(scratch_course.path("submitted"), ignore_errors=True)


def test_a_damaged_zip_inside_an_export_is_a_message():
    """Is an uploaded zip whose export entry has a bad CRC reported for that file, not raised?"""
    inner = _zip({f"hw9/{NB}.ipynb": b"{}"})
    outer = _bad_crc(_zip({f"x_1_2_hw9.zip": inner}), "x_1_2_hw9.zip")
    zf = zipfile.ZipFile(io.BytesIO(outer))
    subs, _ = read_canvas_export(zf)
    m = match_uploads(subs[0].uploads, STEMS)
    assert m.chosen == {} and m.problems[0].startswith("hw9.zip: not readable (BadZipFile: Bad CRC-32")


def test_zeroed_zip_dates_fall_back_to_the_file_time():
    """Does a zip entry with a zeroed DOS date (month 0, day 0) take the upload's (or the export's) time
    instead of failing the whole zip?"""
    zero = (1980, 0, 0, 0, 0, 0)
    data = _zip({f"hw9/{NB}.ipynb": b"{}"}, {f"hw9/{NB}.ipynb": zero})
    m = match_uploads([Upload("hw9.zip", data, 1_700_000_000.0)], STEMS)
    assert m.problems == [] and m.chosen[NB].mtime == 1_700_000_000.0
    cv = zipfile.ZipFile(io.BytesIO(_zip({f"a_12_34_{NB}.ipynb": b"{}"}, {f"a_12_34_{NB}.ipynb": zero})))
    subs, _ = read_canvas_export(cv, 1_700_000_000.0)
    assert subs[0].when == dt.datetime.fromtimestamp(1_700_000_000, dt.timezone.utc)


def test_report_table_escapes_control_characters():
    """Are file names with ANSI/OSC escapes, newlines or bidi overrides printed escaped in the collect
    report, so a student cannot forge lines on the staff terminal?"""
    from attnkit.lms.collect import CollectReport
    from attnkit.lms.exports import Person
    r = CollectReport(kind="canvas")
    r.students["1"] = {"person": Person("1"), "when": dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc),
                       "late": False, "files": [("\x1b[31mq3\u202e.ipynb", NB)]}
    r.unmatched.append(("1", "a\nproblem: forged"))
    r.problems.append("1: \x1b]0;t\x07x.zip: not a readable zip")
    text = r.table("hw9")
    assert all(ch.isprintable() for line in text.split("\n") for ch in line), repr(text)
    assert "\\x1b[31mq3\\u202e.ipynb -> q3_multihead_attention" in text and "1: a\\nproblem: forged" in text


def test_an_oversized_file_in_the_upload_folder_says_so(tmp_path):
    """Is a file over the 50 MB cap in a Gradescope upload folder reported with the cap (not as a malformed
    notebook or zip) and never read?"""
    from attnkit.lms.archives import MAX_UPLOAD_BYTES
    from attnkit.lms.matching import uploads_in
    for name in (f"{NB}.ipynb", "hw9.zip"):
        with open(tmp_path / name, "wb") as f:
            f.truncate(MAX_UPLOAD_BYTES + 1)  # sparse: no disk used
    m = match_uploads(uploads_in(tmp_path), STEMS)
    assert m.chosen == {}
    assert m.problems == [f"{name}: larger than 50 MB (the cap on one file), ignored"
                          for name in ("hw9.zip", f"{NB}.ipynb")]


def test_a_submitter_without_sid_or_email_is_skipped_with_a_message():
    """Does a Gradescope submitter with neither SID nor email cost only that submitter (a message), the
    rest of the export (a group partner included) still read?"""
    text = GRADESCOPE_YML + ("submission_103:\n  :submitters:\n  - :name: Nobody\n    :sid: ''\n    :email: ''\n"
                             "  :created_at: 2024-03-02 09:30:00 UTC\n"
                             "submission_104:\n  :submitters:\n  - :name: Ghost\n    :sid: ''\n    :email: ''\n"
                             "  - :name: Partner\n    :sid: '5555'\n  :created_at: 2024-03-02 09:30:00 UTC\n")
    problems = []
    meta = parse_gradescope_metadata(text, problems)
    assert sorted(meta) == ["submission_101", "submission_102", "submission_104"]
    assert [p.student_id for p in meta["submission_104"]["people"]] == ["5555"]
    assert len(problems) == 2 and "'submission_103' has neither SID nor email ('Nobody'): not collected" in problems[0]
    gs = zipfile.ZipFile(io.BytesIO(_zip({"export/submission_metadata.yml": text.encode(),
                                          "export/submission_104/q3.ipynb": b"{}"})))
    problems = []
    assert sorted(s.key for s in read_gradescope_export(gs, problems)) == ["submission_101", "submission_102",
                                                                          "submission_104"]
    assert "('Ghost')" in problems[1]
