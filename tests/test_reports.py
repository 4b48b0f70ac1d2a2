"""Score table, CSV export and the report store, built from a small gradebook made here (fast tier)."""
from __future__ import annotations

import csv

import pytest

import warnings

from attnkit.course import Course
from attnkit.reports import export, table
from attnkit.batch.results import NotebookResult, Status, StudentResult, load_report, save_report
from harness import small_assignment

CONFIG = 'c = get_config()\nc.CourseDirectory.course_id = "test-course"\n'


@pytest.fixture
def course(tmp_path):
    warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own autoflush notices
    (tmp_path / "course_config.py").write_text(CONFIG)
    c = Course(tmp_path)
    with c.gradebook() as gb:
        small_assignment(gb)
        for sid, scores in (("alice", {"t_a": 2, "t_b": 3}), ("bob", {"t_a": 0, "t_b": 3})):
            gb.update_or_create_student(sid)
            gb.add_submission("hw", sid)
            for gid, score in scores.items():
                grade = gb.find_grade(gid, "q1_first", "hw", sid)
                grade.auto_score, grade.needs_manual_grade = score, False
            essay = gb.find_grade("essay", "q1_first", "hw", sid)
            essay.needs_manual_grade = sid == "bob"   # alice's essay is graded by hand, bob's is pending
            essay.manual_score = 1.5 if sid == "alice" else None
            gb.db.commit()
    return c


def test_table_shows_scores_pending_manual_grades_and_problems(course):
    """Does the table give each student's notebook score, mark pending hand grading, and list problems?"""
    save_report(course.root, "hw", [StudentResult("bob", "hw", [NotebookResult("q1_first", Status.FAILED,
                                                                                 "could not be graded: boom")])])
    text = table(course, "hw")
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:3]}
    assert rows["alice"] == ["6.5/7", "6.5/7"] and rows["bob"] == ["3/7*", "3/7"]
    assert "bob / q1_first: failed: could not be graded: boom" in text


def test_export_has_a_column_per_part_and_totals(course, tmp_path):
    out = export(course, "hw", tmp_path / "grades.csv")
    rows = {r["student"]: r for r in csv.DictReader(open(out))}
    assert rows["alice"]["q1_first:t_b (/3)"] == "3" and rows["bob"]["q1_first:t_a (/2)"] == "0"
    assert rows["alice"]["total"] == "6.5" and rows["alice"]["max"] == "7"
    assert rows["bob"]["manual grading pending"] == "yes" and rows["alice"]["manual grading pending"] == "no"
    # the row under the header names each part (here no source notebook declares names: the grade ids)
    assert rows["(part)"]["q1_first:t_b (/3)"] == "t_b" and rows["(part)"]["total"] == ""


def test_report_store_merges_students_and_keeps_types(course):
    """Does a later batch replace only its own students' entries, and read back as typed results?"""
    save_report(course.root, "hw", [StudentResult("alice", "hw", [NotebookResult("q1_first", Status.GRADED)]),
                                    StudentResult("bob", "hw", [NotebookResult("q1_first", Status.MALFORMED, "bad")])])
    save_report(course.root, "hw", [StudentResult("bob", "hw", [NotebookResult("q1_first", Status.GRADED)])])
    report = load_report(course.root, "hw")
    assert sorted(report) == ["alice", "bob"]
    assert report["bob"].notebooks[0].status is Status.GRADED and report["bob"].ok
    assert Status.MISSING.ok and not Status.FAILED.ok and Status.GRADED == "graded"


# -- feedback pages and the formgrader: sanitised, readable, offline -----------------------------------

import html as htmlmod  # noqa: E402
import random  # noqa: E402
from html.parser import HTMLParser  # noqa: E402
from pathlib import Path  # noqa: E402

import nbformat  # noqa: E402

from attnkit.reports import (AWAITING, BY_HAND, NOT_ANSWERED, _summary_html, feedback_page, leaks,  # noqa: E402
                             written_states)
from attnkit.preprocessors.sanitise import clean_notebook, render_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAQAAAAECAIAAAAmkwkpAAAAFUlEQVR4nGP4z8Dwn4GBocDAQCQAAKe4D/Gixs3YAAAAAElFTkSuQmCC"
# The usual XSS list (OWASP's cheat sheet, mXSS, protocol tricks); each would set window.__pwned.
PAYLOADS = [
    "<script>window.__pwned=1</script>",
    "<img src=x onerror=window.__pwned=1>",
    "<svg onload=window.__pwned=1>",
    "<svg><script>window.__pwned=1</script></svg>",
    "<body onload=window.__pwned=1>",
    "<iframe src=javascript:window.__pwned=1></iframe>",
    "<iframe srcdoc='<script>parent.__pwned=1</script>'></iframe>",
    "<a href='javascript:window.__pwned=1'>x</a>",
    "<a href='  JaVaScRiPt:window.__pwned=1'>x</a>",
    "<a href='jav&#x09;ascript:window.__pwned=1'>x</a>",
    "<a href='data:text/html,<script>window.__pwned=1</script>'>x</a>",
    "[md link](javascript:window.__pwned=1)",
    "<form action=javascript:window.__pwned=1><button>x</button></form>",
    "<details open ontoggle=window.__pwned=1>",
    "<math><mtext><table><mglyph><style><img src=x onerror=window.__pwned=1>",
    "<object data=javascript:window.__pwned=1></object>",
    "<embed src=javascript:window.__pwned=1>",
    "<meta http-equiv=refresh content='0;url=javascript:window.__pwned=1'>",
    "<base href=javascript:window.__pwned=1//>",
    "<input autofocus onfocus=window.__pwned=1>",
    "<div style='background:url(javascript:window.__pwned=1)'>x</div>",
    "<link rel=stylesheet href=http://pwned.invalid/x.css>",
    "<img src=http://pwned.invalid/pixel.png>",
    "<style>@import 'http://pwned.invalid/x.css';</style>",
    "<!--><script>window.__pwned=1</script>-->",
    "<noscript><p title='</noscript><img src=x onerror=window.__pwned=1>'>",
]


class Live(HTMLParser):
    """Everything in a page that could run or fetch: scripts, on* handlers, script URLs, remote sources."""

    def __init__(self):
        super().__init__()
        self.found, self._in_script = [], False

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            value = (value or "").strip().lower()
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}>")
            if name in ("href", "src", "action", "data", "formaction", "xlink:href", "srcdoc") and (
                    value.startswith(("javascript:", "vbscript:", "data:text")) or "pwned" in value or name == "srcdoc"):
                self.found.append(f"<{tag} {name}={value[:40]}>")
        if tag in ("script", "iframe", "object", "embed", "base", "meta", "link", "style", "form", "svg", "math"):
            self.found.append(f"<{tag}>")
        self._in_script = tag == "script"


def live(page: str) -> list[str]:
    p = Live()
    p.feed(page)
    return p.found


def test_markdown_is_cleaned_of_every_payload_but_keeps_text_image_table_and_math():
    """Does a markdown answer lose every payload of the usual XSS list, and keep its text, an
    embedded PNG, a table and its LaTeX (left as text for MathJax)?"""
    answer = ("My answer: $\\frac{QK^\\top}{\\sqrt{d_k}}$ and $a<b$.\n\n"
              f"![plot](data:image/png;base64,{PNG})\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n")
    for payload in PAYLOADS:
        out = render_markdown(answer + payload + "\n")
        assert not live(out), (payload, live(out))
        assert "My answer: $\\frac{QK^\\top}{\\sqrt{d_k}}$ and $a&lt;b$." in out
        assert f'src="data:image/png;base64,{PNG}"' in out and "<td>2</td>" in out


def test_mark_scheme_is_a_labelled_box_for_graders():
    """Does a question cell's mark scheme render as a labelled box, without raw BEGIN/END headings?"""
    out = render_markdown("Question.\n\n### BEGIN MARK SCHEME\n* 1 pt: names $W_o$\n### END MARK SCHEME\n")
    assert "attnkit-markscheme" in out and "Mark scheme (graders only)" in out and "1 pt: names $W_o$" in out
    assert "BEGIN MARK SCHEME" not in out and "END MARK SCHEME" not in out


# A student's answer forging the formgrader's markup: a fake grade cell (formgrade.js finds a part's score box
# by #<grade_id> and .nbgrader_cell), a fake mark-scheme box, and a math link the browser reads as javascript:.
FORGERIES = ("\n\n<div class=\"nbgrader_cell\"><span id=\"t_a\">fake</span></div>\n\n"
             "### BEGIN MARK SCHEME\nForged: award full marks.\n### END MARK SCHEME\n")


def _hostile_notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"x": "</script><script>window.__pwned=1"}}
    md = nbformat.v4.new_markdown_cell("Answer $x^2$\n\n" + "\n\n".join(PAYLOADS[:14]) + FORGERIES)
    md.metadata["nbgrader"] = {"grade": True, "solution": True, "grade_id": "essay", "points": 2, "locked": False,
                               "schema_version": 3, "score": 0, "max_score": 2}   # scores: as GetGrades adds them
    question = nbformat.v4.new_markdown_cell("Q.\n\n### BEGIN MARK SCHEME\nOne point.\n### END MARK SCHEME\n")
    question.metadata["nbgrader"] = {"grade": False, "solution": False, "grade_id": "q", "locked": True,
                                     "schema_version": 3}   # the kit's locked question cell
    code = nbformat.v4.new_code_cell("display(...)")
    out = nbformat.v4.new_output
    code.outputs = [
        out("display_data", data={"text/html": PAYLOADS[1] + "<table><tr><td>kept</td></tr></table>",
                                  "text/plain": "html"}),
        out("display_data", data={"application/javascript": "window.__pwned=1", "text/plain": "js"}),
        out("display_data", data={"application/javascript": "window.__pwned=1"}),
        out("display_data", data={"image/svg+xml": "<svg onload='window.__pwned=1'><script>window.__pwned=1</script></svg>"}),
        out("display_data", data={"text/markdown": "<script>window.__pwned=1</script>\n\n**bold**"}),
        out("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": "w"}),
        out("display_data", data={"image/png": PNG}, metadata={"image/png": {"width": "1 onerror=window.__pwned=1"}}),
        out("display_data", data={"image/png": '" onerror="window.__pwned=1'}),
        out("display_data", data={"text/latex": "$$\\sum_i \\mu_i^2$$"}),
        out("execute_result", data={"text/html": "<iframe srcdoc='<script>parent.__pwned=1</script>'></iframe>"},
            execution_count=1),
    ]
    raw = nbformat.v4.new_raw_cell("<script>window.__pwned=1</script>")
    raw.metadata["raw_mimetype"] = "text/html"
    nb.cells = [question, md, code, raw]
    return nb


def test_stored_notebook_keeps_only_inert_outputs():
    """Does the stored autograded notebook keep text, tables, images and LaTeX, and lose every
    HTML payload, JavaScript, widget, live SVG, markdown script and raw HTML cell?"""
    nb = clean_notebook(_hostile_notebook())
    outputs = nb.cells[2].outputs
    kinds = [sorted(o.data) for o in outputs]
    assert not any(k in ("application/javascript", "image/svg+xml", "text/markdown",
                         "application/vnd.jupyter.widget-view+json") for ks in kinds for k in ks), kinds
    html_text = " ".join(o.data.get("text/html", "") for o in outputs)
    assert not live(html_text.replace('<img src="data:image/svg+xml', "<img data-ok")), live(html_text)
    assert "<td>kept</td>" in html_text and "<strong>bold</strong>" in html_text
    assert outputs[2].data == {"text/plain": "[removed from this page: application/javascript output]"}
    assert outputs[6].data["image/png"] == PNG and outputs[6].metadata == {"image/png": {}}
    assert outputs[7].data == {"text/plain": "[removed from this page: image/png output]"}
    assert outputs[8].data["text/latex"] == "$$\\sum_i \\mu_i^2$$"
    assert "widgets" not in nb.metadata and "raw_mimetype" not in nb.cells[3].metadata
    assert "<script>" not in nb.cells[3].source


@pytest.mark.parametrize("template", ["formgrade", "feedback"])
def test_course_exporter_renders_no_live_student_content(template):
    """Does nbconvert, configured as the course configures it for the formgrader and the feedback,
    render a hostile notebook (as stored before this kit sanitised it) and hostile LMS names with no
    live student content, MathJax from no CDN and the mark scheme boxed?"""
    from nbconvert.exporters import HTMLExporter
    cfg = Course(ROOT).config()
    cfg.HTMLExporter.template_name = template
    import nbgrader   # as nbgrader's GenerateFeedback sets it: bootstrap's CSS inlined
    cfg.HTMLExporter.extra_template_paths = [str(Path(nbgrader.__file__).parent / "server_extensions" / "formgrader"
                                                 / "static" / "node_modules" / "bootstrap" / "dist" / "css")]
    exporter = HTMLExporter(config=cfg)
    resources = {"base_url": "/base", "assignment_id": "hw", "notebook_id": "nb", "submission_id": "1", "index": 0,
                 "total": 1, "student": "s", "last_name": "<img src=x onerror=window.__pwned=1>",
                 "first_name": "<script>window.__pwned=1</script>", "notebook_path": "x",
                 "nbgrader": {"notebook": "nb", "score": 0, "max_score": 2, "late_penalty": 0}}
    page, _ = exporter.from_notebook_node(_hostile_notebook(), resources=dict(resources))
    benign, _ = exporter.from_notebook_node(nbformat.v4.new_notebook(),
                                            resources={**resources, "last_name": "Doe", "first_name": "Jo"})
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", page, re.S)
    assert not [s for s in scripts if "__pwned" in s], "a student script reached the page"
    # the template's own scripts and handlers, and nothing more
    assert live(page) == live(benign), sorted(set(live(page)) - set(live(benign)))
    srcs = re.findall(r"<script[^>]*src=\"([^\"]*)\"", page)
    assert not [s for s in srcs if "//" in s or "mathjax" in s.lower() and "jupyter_server_mathjax" not in s], srcs
    assert "cdnjs" not in page and "attnkit-markscheme" in page
    assert page.count("attnkit-markscheme") == 1, "a student's answer drew a mark-scheme box"
    assert 'id="t_a"' not in page and 'class="nbgrader_cell"><span' not in page, "student markup forged a grade cell"
    assert 'id="user-t_a"' in page


import re  # noqa: E402


def _essay_nb(text):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_markdown_cell(text)
    cell.metadata["nbgrader"] = {"grade": True, "solution": True, "grade_id": "essay", "points": 2, "locked": False}
    test = nbformat.v4.new_code_cell("assert False")
    test.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": "t_a", "points": 2, "locked": True}
    test.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="(a) wrong size", traceback=[])]
    nb.cells = [test, cell]
    return nb


def test_written_answers_read_awaiting_grading_not_answered_or_their_score(course):
    """Does an answer nobody has graded read "awaiting grading" (nbgrader stores 0.0 and
    needs_manual_grade), an empty or untouched one "not answered", and a graded one its score?"""
    with course.gradebook() as gb:
        for sid, needs in (("carol", False), ("dave", True)):   # carol: untouched (nbgrader zeroes it itself)
            gb.update_or_create_student(sid)
            gb.add_submission("hw", sid)
            essay = gb.find_grade("essay", "q1_first", "hw", sid)
            essay.auto_score, essay.needs_manual_grade = 0.0, needs
        bob = gb.find_grade("essay", "q1_first", "hw", "bob")
        bob.auto_score = 0.0   # as nbgrader stores it: 0.0, not None
        gb.db.commit()
        answers = {"alice": "Because W_o maps 2d back to d.", "bob": "It is W_o.", "carol": "YOUR ANSWER HERE",
                   "dave": "   \n"}
        states = {sid: written_states(gb, "hw", sid, "q1_first", _essay_nb(text))["essay"]
                  for sid, text in answers.items()}
    assert states == {"alice": BY_HAND, "bob": AWAITING, "carol": NOT_ANSWERED, "dave": NOT_ANSWERED}
    page = _summary_html("q1_first", _essay_nb("It is W_o."), {"essay": (0.0, 2), "t_a": (0.0, 2)}, [],
                         {"essay": AWAITING})
    assert "awaiting grading" in page and "graded by hand" not in page and "&ndash; / 2" in page
    assert "2 points of written answers awaiting grading" in page
    graded = _summary_html("q1_first", _essay_nb("x"), {"essay": (1.5, 2), "t_a": (0.0, 2)}, [], {"essay": BY_HAND})
    assert "1.5 / 2" in graded and "graded by hand" in graded


def test_summary_gives_total_points_lost_and_links_failed_parts():
    """Does the page open with the notebook's total, each failed part linked to its cell, the points
    lost beside its message, and hidden-test lines redacted from that message?"""
    page = _summary_html("q1_first", _essay_nb("x"), {"essay": (1.5, 2), "t_a": (0.0, 2)},
                         ["wrong size"], {"essay": BY_HAND})
    assert "<div class='total'>1.5 / 4" in page
    row = re.search(r"<tr class='failed'>.*?</tr>", page).group()
    assert "<td title='t_a'>t_a</td>" in row and "href='#t_a'" in row and "&minus;2" in row and "FAILED" in row
    assert "(a) [hidden test]" in row and "wrong size" not in row


def test_summary_names_parts_as_the_homework_does():
    """Given the source notebook's part names, does each row name its part that way (the grade id kept as the
    cell's title and in its link), escaped, and does a part without a name keep its grade id?"""
    page = _summary_html("q1_first", _essay_nb("x"), {"essay": (1.5, 2), "t_a": (0.0, 2)}, [], {"essay": BY_HAND},
                         {"t_a": "Q1(a) code: <first>"})
    row = re.search(r"<tr class='failed'>.*?</tr>", page).group()
    assert "<td title='t_a'>Q1(a) code: &lt;first&gt;</td>" in row and "href='#t_a'" in row
    assert "<td title='essay'>essay</td>" in page


def test_feedback_page_is_cleaned_and_points_at_local_mathjax():
    """Does the written page keep nbgrader's head (styles) with MathJax from a relative local path,
    put the summary first, and clean the body once more?"""
    nbgrader_page = ("<html><head><style>p{}</style><!-- attnkit mathjax --><script src='https://cdn/x.js'></script>"
                     "<!-- /attnkit mathjax --></head><body class='x'><p>$x$</p><script>window.__pwned=1</script>"
                     "<a name='t_a'></a><img src=x onerror=alert(1)></body></html>")
    page = feedback_page(nbgrader_page, "<div class='attnkit-summary'>S</div>", "../../_mathjax/tex-svg-full.js")
    assert "cdn" not in page and "src='../../_mathjax/tex-svg-full.js'" in page and "<style>p{}</style>" in page
    body = page[page.find("<body"):]
    assert body.startswith("<body>\n<div class='attnkit-summary'>S</div>")
    assert "__pwned" not in body and "onerror" not in body and '<a name="t_a"' in body and "<p>$x$</p>" in body


def test_leak_scan_finds_exactly_what_one_scan_per_line_finds():
    """Does the one-pass leak scan report the same lines, in the same order, as scanning the page
    once per secret line, with overlapping, nested, escaped and absent lines?"""
    rng = random.Random(7)
    secret = ["assert out.shape == (2, 3)", "out.shape == (2", "shape == (2, 3)", "x < y and y > z",
              "never here at all", "a & b", "(2, 3)", "(2, 3)x"]
    for _ in range(50):
        parts = [rng.choice(secret + ["noise", "<b>", "&amp;", "\n"]) for _ in range(rng.randint(0, 12))]
        page = "".join(htmlmod.escape(p) if rng.random() < 0.5 else p for p in parts)
        assert leaks(page, secret) == [line for line in secret if line in htmlmod.unescape(page)]
