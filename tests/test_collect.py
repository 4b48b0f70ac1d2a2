"""The upload matcher and the LMS export readers (fast: no grading).

The end-to-end collect -> autograde -> export round trip is in test_gradescope.py."""
from __future__ import annotations

import datetime as dt
import io
import zipfile

import pytest

from attnkit.collect import (CANVAS_RE, Upload, copy_number, detect, match_notebook, match_uploads, normalise,
                             parse_gradescope_metadata, read_canvas_export, read_gradescope_export)

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
    assert m.chosen["q3_multihead_attention"].data == b"new"
    assert m.duplicates == [("q3_multihead_attention", "q3_multihead_attention (1).ipynb",
                             ["q3_multihead_attention.ipynb"])]
    m = match_uploads([Upload("q3_multihead_attention (1).ipynb", b"a", 5),
                       Upload("q3_multihead_attention (2).ipynb", b"b", 5)], STEMS)
    assert m.chosen["q3_multihead_attention"].data == b"b"


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
    assert m.chosen["q3_multihead_attention"].data == b"new"
