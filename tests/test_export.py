"""Grades out: both `./kit export` CSVs read back, formulas neutralised, and the Canvas export's
pending written answers (fast tier: a small gradebook made here, the real CLI)."""
from __future__ import annotations

import csv
import warnings

import pytest

from attnkit.course import Course
from attnkit.reports import csv_text
from attnkit.authoring.samples import MARKER
from harness import kit, small_assignment

CONFIG = 'c = get_config()\nc.CourseDirectory.course_id = "test-course"\n'
HOSTILE = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3", "\tTAB", "\rCR"]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """hw: q1_first with two autograded tests (2 + 3 points) and a written answer (2 points).
    alice: written answer graded (1.5); bob: pending; the hostile ids and names: one with a hand
    override that makes the score negative."""
    tmp = tmp_path_factory.mktemp("export")
    warnings.filterwarnings("ignore", message=".*not in session.*")
    (tmp / "course_config.py").write_text(CONFIG)
    (tmp / "source" / "hw").mkdir(parents=True)  # the CLI lists assignments from source/
    c = Course(tmp)
    with c.gradebook() as gb:
        small_assignment(gb)
        people = [("alice", {}, {"t_a": 2, "t_b": 3}, 1.5), ("bob", {}, {"t_a": 0, "t_b": 3}, None)]
        people += [(h, {"first_name": h, "last_name": h, "email": h + "@example.edu"}, {"t_a": 1, "t_b": 0}, 0.0)
                   for h in HOSTILE]
        people.append(("negative", {"first_name": "=1+1", "last_name": "-5"}, {"t_a": 0, "t_b": 0}, 0.0))
        for sid, info, scores, essay in people:
            gb.update_or_create_student(sid, **info)
            gb.add_submission("hw", sid)
            for gid, score in scores.items():
                grade = gb.find_grade(gid, "q1_first", "hw", sid)
                grade.auto_score, grade.needs_manual_grade = score, False
            g = gb.find_grade("essay", "q1_first", "hw", sid)
            g.needs_manual_grade, g.manual_score = essay is None, essay
            if sid == "negative":  # a hand override below zero (a penalty)
                gb.find_grade("t_a", "q1_first", "hw", sid).manual_score = -2
            gb.db.commit()
    return c


def _read(path):
    return list(csv.reader(open(path, encoding="utf-8", newline="")))


def _text_cells_are_inert(rows):
    bad = [cell for row in rows for cell in row if cell[:1] in ("=", "+", "@", "\t", "\r")
           or (cell.startswith("-") and not _number(cell))]
    assert not bad, bad


def _number(cell):
    try:
        float(cell)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("text", HOSTILE)
def test_csv_text_prefixes_formula_starts(text):
    """Does a text cell starting with =, +, -, @, a tab or a CR get a ' prefix, and other text stay as it is?"""
    assert csv_text(text) == "'" + text
    assert csv_text("alice") == "alice" and csv_text("3031") == "3031" and csv_text(None) == ""


@pytest.mark.parametrize("text", [" =1+1", "  +SUM(A1)", "\u3000@x", "\n-2+3", "＝1+1", "＋cmd", "﹫SUM(1)", " －1+2"])
def test_csv_text_sees_through_spaces_and_full_width_signs(text):
    """Does a text cell whose formula sign follows leading spaces, or is a full-width (NFKC) form of one, get
    a ' prefix too, while names with an inner sign stay as they are?"""
    assert csv_text(text) == "'" + text
    assert csv_text("Smith-Jones") == "Smith-Jones" and csv_text(" Ana") == " Ana" and csv_text("Ｚoë") == "Ｚoë"


def test_parts_export_neutralises_formulas(course, tmp_path):
    """Through ./kit export: is every hostile id written with a ' prefix, while scores (a negative one
    included) stay numbers?"""
    out = tmp_path / "parts.csv"
    kit(course.root, "export", "hw", "-o", str(out), check=True)
    header, *rows = _read(out)
    by = {r[0]: dict(zip(header, r)) for r in rows}
    assert {"'" + h for h in HOSTILE} <= set(by)
    _text_cells_are_inert(rows)
    assert by["negative"]["total"] == "-2" and by["negative"]["q1_first:t_a (/2)"] == "-2"
    assert by["'-2+3"]["total"] == "1" and by["alice"]["total"] == "6.5"


def test_canvas_export_neutralises_formulas(course, tmp_path):
    """Through ./kit export --format canvas: are names, SIS ids and logins written with a ' prefix,
    and the scores numbers?"""
    out = tmp_path / "canvas.csv"
    kit(course.root, "export", "hw", "--format", "canvas", "-o", str(out), check=True)
    header, possible, *rows = _read(out)
    _text_cells_are_inert(rows)
    names = {r[0] for r in rows}
    assert {f"'{h}, {h}" for h in HOSTILE} <= names and "'-5, =1+1" in names
    hyper = next(r for r in rows if r[2] == "'" + HOSTILE[0])
    assert hyper[3] == "'" + HOSTILE[0] + "@example.edu" and hyper[-1] == "1"
    assert next(r for r in rows if r[0] == "'-5, =1+1")[-1] == "-2"


def test_canvas_export_leaves_pending_written_answers_ungraded(course, tmp_path):
    """Does the default Canvas export count every point (Points Possible 7), give a student whose written
    answer is not graded yet an empty cell (Canvas: not graded, never a silent 0) and name them?"""
    out = tmp_path / "canvas.csv"
    proc = kit(course.root, "export", "hw", "--format", "canvas", "-o", str(out), check=True)
    header, possible, *rows = _read(out)
    assert header[-1] == "hw" and possible[0].strip() == "Points Possible" and possible[-1] == "7"
    got = {r[2] or r[0]: r[-1] for r in rows}
    assert got["alice"] == "6.5" and got["bob"] == ""
    assert "1 students have written answers not graded yet" in proc.stdout and "bob" in proc.stdout


def test_canvas_export_autograded_only(course, tmp_path):
    """Does --autograded-only export the autograded points only (Points Possible 5, not 7), for every
    student, pending or not, in a column of its own?"""
    out = tmp_path / "canvas.csv"
    proc = kit(course.root, "export", "hw", "--format", "canvas", "--autograded-only", "--canvas-id", "42",
               "-o", str(out), check=True)
    header, possible, *rows = _read(out)
    assert header[-1] == "hw autograded (42)" and possible[-1] == "5"
    got = {r[2] or r[0]: r[-1] for r in rows}
    assert got["alice"] == "5" and got["bob"] == "3" and got["negative"] == "-2"
    assert "autograded points only" in proc.stdout
    parts = kit(course.root, "export", "hw", "--autograded-only", "-o", str(tmp_path / "x.csv"))
    assert parts.returncode == 2 and "--format canvas" in parts.stderr


def test_export_warns_about_demo_samples_in_a_real_course(course, tmp_path):
    """Would a sample student an older ./kit demo left in the real gradebook be named before the CSV goes to
    Canvas, and is the demo's own course (which holds them by design) spared the warning?"""
    with course.gradebook() as gb:
        gb.update_or_create_student("sample-solution")
    try:
        proc = kit(course.root, "export", "hw", "--format", "canvas", "-o", str(tmp_path / "c.csv"), check=True)
        assert "warning: the demo's sample students sample-solution" in proc.stderr
        # ... but not in the demo's own course (cd demo && ../kit export), where the samples belong
        (course.root / MARKER).write_text("made by ./kit demo\n")
        proc = kit(course.root, "export", "hw", "--format", "canvas", "-o", str(tmp_path / "d.csv"), check=True)
        assert "sample students" not in proc.stderr, proc.stderr
    finally:
        (course.root / MARKER).unlink(missing_ok=True)
        with course.gradebook() as gb:
            gb.remove_student("sample-solution")


# -- the demo: a course folder of its own --------------------------------------------------------
def test_demo_never_empties_a_folder_it_did_not_make(tmp_path):
    """Is a demo/ folder the demo did not make (no marker) refused, its files kept?"""
    from attnkit.authoring.samples import demo_course
    (tmp_path / "course_config.py").write_text(CONFIG)
    (tmp_path / "source" / "hw").mkdir(parents=True)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit, match="not the demo's folder"):
        demo_course(Course(tmp_path))
    assert (tmp_path / "demo" / "mine.txt").read_text() == "keep"
    (tmp_path / "demo" / "mine.txt").unlink()
    (tmp_path / "demo").rmdir()
    first = demo_course(Course(tmp_path))
    (first.root / "leftover").write_text("x")
    again = demo_course(Course(tmp_path))  # its own folder: emptied and made again
    assert again.root == tmp_path / "demo" and not (again.root / "leftover").exists()
    assert (again.root / "source" / "hw").is_dir() and (again.root / "course_config.py").is_file()


@pytest.mark.slow
def test_demo_runs_in_its_own_course_folder():
    """Does ./kit demo grade its three samples in demo/ (own gradebook, submitted/, feedback/, CSV), say where,
    print the very table the README shows, and leave the real course's submitted/, gradebook and Canvas export
    without them?"""
    import shutil
    from pathlib import Path

    from attnkit.authoring.samples import SAMPLES
    root = Path(__file__).resolve().parents[1]
    assert "demo/" in (root / ".gitignore").read_text().split()
    from test_where_courses_live import _table, readme_table
    c = Course(root).scratch_copy()
    try:
        out = kit(c.root, "demo", "--workers", "2", check=True).stdout
        assert _table(out) == readme_table()
        demo = c.path("demo")
        assert f"demo course in {demo}" in out and "demo/grades-hw9.csv" in out
        for what in ("submitted", "autograded", "feedback", "gradebook.db", "release", "grades-hw9.csv"):
            assert not c.path(what).exists(), what  # the real course: untouched
            assert (demo / what).exists(), what
        assert sorted(p.name for p in (demo / "submitted").iterdir()) == sorted(SAMPLES)
        rows = {r["student"]: r for r in csv.DictReader(open(demo / "grades-hw9.csv"))}
        assert rows.pop("(part)")["q3_multihead_attention:q3b_W_v (/1)"] == "Q3(a) blank (b): size of W_v"
        assert sorted(rows) == sorted(SAMPLES) and rows["sample-solution"]["total"] == "113"
        canvas = kit(c.root, "export", "hw9", "--format", "canvas", "-o", str(c.path("canvas.csv")))
        assert canvas.returncode == 1 and "nothing graded for hw9" in canvas.stderr  # no samples to export
        assert not c.path("canvas.csv").exists()
    finally:
        shutil.rmtree(c.root, ignore_errors=True)


def test_canvas_export_gives_gradescope_ids_as_the_lms_wrote_them(course, tmp_path):
    """After collecting a Gradescope export whose SID holds a space and whose SID-less student's email holds
    a '+' (both renamed by the id rule), does the Canvas export give Canvas the SID and the email as
    Gradescope wrote them (never the hashed student id, which Canvas cannot match)?"""
    import io
    import zipfile

    from attnkit import ids
    from attnkit.lms.collect import collect
    yml = ("submission_1:\n  :submitters:\n  - :name: Sam Space\n    :sid: '12 34'\n    :email: sam@example.edu\n"
           "  :created_at: 2024-03-01 10:00:00 UTC\n"
           "submission_2:\n  :submitters:\n  - :name: Pat Plus\n    :sid: ''\n    :email: pat+hw@example.edu\n"
           "  :created_at: 2024-03-01 10:00:00 UTC\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("export/submission_metadata.yml", yml)
    (tmp_path / "gs.zip").write_bytes(buf.getvalue())
    report = collect(course, "hw", tmp_path / "gs.zip")
    space, plus = ids.from_lms("12 34"), ids.from_lms("pat+hw@example.edu")
    assert sorted(report.students) == sorted([space, plus]) and space != "12 34" and plus != "pat+hw@example.edu"
    with course.gradebook() as gb:
        for sid in (space, plus):
            gb.add_submission("hw", sid)
            for gid in ("t_a", "t_b", "essay"):
                g = gb.find_grade(gid, "q1_first", "hw", sid)
                g.auto_score, g.manual_score, g.needs_manual_grade = 1, (1 if gid == "essay" else None), False
        gb.db.commit()
    out = tmp_path / "canvas.csv"
    kit(course.root, "export", "hw", "--format", "canvas", "-o", str(out), check=True)
    header, possible, *rows = _read(out)
    by = {r[0]: r for r in rows}
    assert by["Space, Sam"][1:5] == ["", "12 34", "sam@example.edu", ""]
    assert by["Plus, Pat"][1:5] == ["", "", "pat+hw@example.edu", ""]
    assert by["Space, Sam"][-1] == by["Plus, Pat"][-1] == "3"
