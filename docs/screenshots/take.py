"""Screenshots in a real browser (Chromium through Playwright, no network), for the README and the
closing note of the feedback-page work:

* feedback.png    - a student's feedback page (./kit feedback), opened from disk
* formgrader.png  - the formgrader's grading view of a written answer (math typeset by the local MathJax)
* formgrader-markscheme.png - the question's mark scheme, shown to graders as a labelled box
* student-lab.png - the student's JupyterLab (from ./kit bundle) after Restart & Run All on a released notebook
* student-lab-untouched-end.png - the same run at its last parts: every cell ran, each part says its line
* student-lab-partial.png - Restart & Run All on a partly filled Q3 (the demo's sample-partial): ok and BLANK lines
* feedback-partial.png - the feedback page of that partly filled Q3 (parts named as the homework names them)

    .venv/bin/python docs/screenshots/take.py          # about two minutes; writes docs/screenshots/*.png

One Q3 submission (every blank right but (e), and a written answer with math) is graded in a scratch
course through the CLI; nothing of this checkout's course state is touched.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import kit  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from test_browser import ASSIGNMENT, NB, Watch, launch, start_jupyter, stop  # noqa: E402

from attnkit.authoring import notebooks as nbu  # noqa: E402
from attnkit.course import Course  # noqa: E402
from attnkit.authoring.release import generate  # noqa: E402
from attnkit.authoring.samples import partial  # noqa: E402

OUT = Path(__file__).resolve().parent
TOKEN = "attnkit-screenshots"
ANSWER = r"""**Your answer (Q3(b)): which projection must change, to what, and why?**

The output projection $W_o$ must change to `nn.Linear(2 * d_model, d_model)`. Each head now returns
values of width $2 d_k$, so concatenating the $h$ heads gives $h \cdot 2 d_k = 2 d_{model}$ features,
while the residual connection still needs $d_{model}$: $W_o \in \mathbb{R}^{2 d_{model} \times d_{model}}$.
The scores $\frac{QK^\top}{\sqrt{d_k}}$ do not change, since $W_q$ and $W_k$ are untouched.
"""


def graded_course(parent: Path) -> Course:
    course = Course(ROOT).scratch_copy(notebooks=[NB], parent=str(parent))
    shutil.copy2(ROOT / "nbgrader_config.py", course.root / "nbgrader_config.py")
    generate(course, ASSIGNMENT)
    nb = nbu.fill(nbu.read(course.path("source", ASSIGNMENT, f"{NB}.ipynb")),
                  {"e": "attn_probs = torch.log_softmax(attn_scores, dim=-1)"})
    for cell in nb.cells:
        if nbu.grade_id(cell) == "q3b_explanation":
            cell.source = ANSWER
    dest = course.path("submitted", "student-a", ASSIGNMENT)
    dest.mkdir(parents=True)
    nbu.write(nb, dest / f"{NB}.ipynb")
    dest = course.path("submitted", "sample-partial", ASSIGNMENT)
    dest.mkdir(parents=True)
    nbu.write(partial(nbu.read(course.path("source", ASSIGNMENT, f"{NB}.ipynb"))), dest / f"{NB}.ipynb")
    kit(course.root, "autograde", ASSIGNMENT, "--quiet", "--unsandboxed-i-accept-the-risk", check=True)
    kit(course.root, "feedback", ASSIGNMENT, check=True)
    return course


def feedback_shot(browser, course: Course):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    watch = Watch(page)
    page.goto(course.path("feedback", "student-a", ASSIGNMENT, f"{NB}.html").as_uri())
    page.wait_for_selector("mjx-container", timeout=60000)
    watch.assert_nothing_ran(page)
    page.screenshot(path=str(OUT / "feedback.png"))
    page.goto(course.path("feedback", "sample-partial", ASSIGNMENT, f"{NB}.html").as_uri())
    page.wait_for_selector("mjx-container", timeout=60000)
    watch.assert_nothing_ran(page)
    page.screenshot(path=str(OUT / "feedback-partial.png"))
    page.close()


def formgrader_shot(browser, course: Course):
    with course.gradebook() as gb:
        sub_id = gb.find_submission_notebook(NB, ASSIGNMENT, "student-a").id
    proc, url = start_jupyter(course.root, token=TOKEN)
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        watch = Watch(page, allowed_origin=url)
        page.goto(f"{url}/formgrader/submissions/{sub_id}/?token={TOKEN}")
        page.wait_for_selector(".MathJax, .MathJax_CHTML, .MathJax_SVG", timeout=60000, state="attached")
        page.wait_for_timeout(1500)
        watch.assert_nothing_ran(page)
        for name, selector in (("formgrader.png", "input#q3b_explanation"), ("formgrader-markscheme.png",
                                                                               ".attnkit-markscheme")):
            # the written answer (its score box) / the question's mark scheme, just below the top bar
            page.evaluate("s => { const e = [...document.querySelectorAll(s)].pop().closest('.cell') || "
                          "document.querySelector(s); window.scrollTo(0, e.getBoundingClientRect().top + "
                          "window.scrollY - 70); }", selector)
            page.wait_for_timeout(500)
            page.screenshot(path=str(OUT / name))
        page.close()
    finally:
        stop(proc)


def restart_and_run_all(page):
    """Kernel > Restart Kernel and Run All Cells, as a student does it, then wait until no cell is running."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120000)
    page.wait_for_timeout(3000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").click()
    page.locator(".lm-Menu-itemLabel", has_text="Restart Kernel and Run All Cells").click()
    page.locator(".jp-Dialog button.jp-mod-accept").click()
    page.wait_for_timeout(3000)
    page.wait_for_function("() => ![...document.querySelectorAll('.jp-InputPrompt')]"
                           ".some(p => p.textContent.includes('*'))", timeout=300000)
    page.wait_for_timeout(1500)


def student_lab_shot(browser, course: Course, scratch: Path):
    kit(course.root, "bundle", ASSIGNMENT, check=True)
    student = scratch / "student"
    with zipfile.ZipFile(course.path("dist", f"{ASSIGNMENT}-student.zip")) as zf:
        zf.extractall(student)
    # The student's environment has no nbgrader (bundle.py's requirements): switch it off here as well.
    config = student / ".jupyter-config"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": {"@jupyter/nbgrader": True}}))
    (config / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"jpserver_extensions": {
        f"nbgrader.server_extensions.{x}": False for x in ("formgrader", "validate_assignment", "assignment_list",
                                                            "course_list")}}}))
    tracker = config / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"  # every cell in the page
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = config / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"   # no "Jupyter news?" toast
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    proc, url = start_jupyter(student, app="lab", token=TOKEN)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(f"{url}/lab/tree/{ASSIGNMENT}/{NB}.ipynb?token={TOKEN}")
        restart_and_run_all(page)
        # the first graded part and its visible check, after the run
        target = page.locator(".jp-Cell", has_text="(a) W_k is an nn.Linear").first
        target.scroll_into_view_if_needed()
        page.wait_for_timeout(800)
        page.screenshot(path=str(OUT / "student-lab.png"))
        page.locator(".jp-Cell", has_text="graded without the blanks").first.scroll_into_view_if_needed()
        page.wait_for_timeout(800)
        page.screenshot(path=str(OUT / "student-lab-untouched-end.png"))
        page.close()
        # the same notebook half filled (the demo's sample-partial), run again
        nbu.write(partial(nbu.read(course.path("source", ASSIGNMENT, f"{NB}.ipynb"))),
                  student / ASSIGNMENT / f"partial_{NB}.ipynb")
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(f"{url}/lab/tree/{ASSIGNMENT}/partial_{NB}.ipynb?token={TOKEN}")
        restart_and_run_all(page)
        # (the first run's notebook is still open in a hidden tab: look in the one shown)
        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell",
                     has_text="(f) The output: (batch, heads").first.scroll_into_view_if_needed()
        page.wait_for_timeout(800)
        page.screenshot(path=str(OUT / "student-lab-partial.png"))
        page.close()
    finally:
        stop(proc)


def main():
    scratch = Path(tempfile.mkdtemp(prefix="attnkit-shots-"))
    try:
        course = graded_course(scratch)
        with sync_playwright() as p:
            browser = launch(p)
            feedback_shot(browser, course)
            formgrader_shot(browser, course)
            student_lab_shot(browser, course, scratch)
            browser.close()
        for name in ("feedback.png", "feedback-partial.png", "formgrader.png", "formgrader-markscheme.png",
                     "student-lab.png", "student-lab-untouched-end.png", "student-lab-partial.png"):
            print(f"wrote docs/screenshots/{name} ({(OUT / name).stat().st_size // 1024} KiB)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
