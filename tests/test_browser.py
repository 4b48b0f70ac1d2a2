"""Student HTML and JavaScript in a real browser (Chromium through Playwright): the feedback page opened
from disk and the formgrader's submission page on a local Jupyter server, both after one graded batch
in a scratch course, with no network."""
from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from attnkit.authoring import notebooks as nbu
from attnkit.course import Course

ASSIGNMENT = "hw9"
NB = "q3_multihead_attention"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
# A 4x4 red PNG: an image that must still show.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000004000000040802000000269309290000001549444154789c63f8cfc0f09f"
    "8181a1c0c040240000a7b80ff1a2c6cdd80000000049454e44ae426082")).decode()
MARK = "pwned.invalid"   # every payload that fetches asks this host

# Each payload, if it runs, records itself in window.__pwned, the title, the console or a request.
MARKDOWN_ANSWER = rf"""**Your answer (Q3(b)): which projection must change, to what, and why?**

The output projection: $W_o \in \mathbb{{R}}^{{2d \times d}}$, since $\frac{{QK^\top}}{{\sqrt{{d_k}}}}$ is unchanged.

![a plot](data:image/png;base64,{PNG})

| head | width |
|------|-------|
| one  | 2d/h  |

[click me](javascript:window.__pwned='md-link')

<script>window.__pwned='md-script'; document.title='pwned'; console.log('PWNED md-script')</script>

<img src=x onerror="window.__pwned='md-img-onerror'; console.log('PWNED md-img')">

<svg onload="window.__pwned='md-svg-onload'"><circle r="4"/></svg>

<a href="JaVaScRiPt:window.__pwned='md-a'" id="jslink">a link</a>

<iframe src="javascript:parent.__pwned='md-iframe'"></iframe>

<img src="http://{MARK}/md-img.png">

<details open ontoggle="window.__pwned='md-ontoggle'"><summary>x</summary></details>

<form action="javascript:window.__pwned='md-form'"><button id="formbtn">go</button></form>

<style>body {{ background: url(http://{MARK}/css.png) }}</style>

$\href{{javascript:window.__pwned='tex-href'}}{{x}}$

<math><mtext><table><mglyph><style><img src=x onerror="window.__pwned='md-mxss'">
"""

# MathJax 3's safe filter reads a URL's scheme with /^\s*([a-z]+):/ and lets one through where it finds none;
# the browser drops a tab or newline inside a URL, so "java<TAB>script:" still runs when clicked.
MARKDOWN_ANSWER += ("\n\n$\\href{java\tscript:window.__pwned='tex-href-tab'}{tabbed}$\n\n"
                    "$\\href{java&#10;script:window.__pwned='tex-href-entity'}{entity}$\n")

OUTPUT_CELL = rf"""
from IPython.display import HTML, Javascript, Markdown, SVG, display
display(HTML("<b>html output</b><script>window.__pwned='out-html-script'</script>"
             "<img src=x onerror=\"window.__pwned='out-html-img'\"><table><tr><td>kept cell</td></tr></table>"))
display(Javascript("window.__pwned='out-js'; console.log('PWNED out-js')"))
display(SVG('<svg xmlns="http://www.w3.org/2000/svg" onload="window.__pwned=\'out-svg\'">'
            '<script>window.__pwned=\'out-svg-script\'</script><circle r="3"/></svg>'))
display(Markdown("<script>window.__pwned='out-md'</script>**markdown output**"))
display({{"text/html": "<iframe srcdoc=\"<script>parent.__pwned='out-srcdoc'</script>\"></iframe>",
          "application/javascript": "window.__pwned='out-raw-js'", "text/plain": "raw"}}, raw=True)
display({{"image/png": "{PNG}", "text/plain": "the image"}}, raw=True)
"""


def hostile_submission(course: Course) -> dict:
    """student -> notebook: 'xss' carries every payload (and a wrong softmax, so one part fails)."""
    src = nbu.read(course.path("source", ASSIGNMENT, f"{NB}.ipynb"))
    nb = nbu.fill(src, {"e": "attn_probs = torch.log_softmax(attn_scores, dim=-1)"})
    for cell in nb.cells:
        if nbu.grade_id(cell) == "q3_mha":
            cell.source += "\n" + OUTPUT_CELL
        if nbu.grade_id(cell) == "q3b_explanation":
            cell.source = MARKDOWN_ANSWER
    return {"xss": nb}


# -- the browser, a local Jupyter server ------------------------------------------------------------

def chromium_or_skip():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (./kit test installs Debian's chromium where it may, as root)")
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (requirements.txt pins it)")


class Watch:
    """What a page did: dialogs, console lines, requests that left the machine (all refused)."""

    def __init__(self, page, allowed_origin: str = ""):
        self.dialogs, self.console, self.outside = [], [], []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: self.console.append(m.text))

        def route(r):
            url = r.request.url
            if url.startswith("file://") or url.startswith("data:") or (allowed_origin and url.startswith(allowed_origin)):
                return r.continue_()
            self.outside.append(url)
            return r.abort()
        page.route("**/*", route)

    def assert_nothing_ran(self, page):
        pwned = page.evaluate("() => [window.__pwned || null, document.title]")
        assert pwned[0] is None and pwned[1] != "pwned", f"student script ran: {pwned}"
        assert not self.dialogs, self.dialogs
        assert not [c for c in self.console if "PWNED" in c], self.console
        assert not [u for u in self.outside if MARK in u], self.outside
        assert not self.outside, f"the page asked the network for {self.outside}"
        hrefs = page.evaluate("() => [...document.querySelectorAll('[href],[src],[action],[xlink\\\\:href]')]"
                              ".flatMap(e => ['href','src','action','xlink:href'].map(a => e.getAttribute(a) || ''))"
                              ".filter(v => /^\\s*javascript:/i.test(v.replace(/[\\t\\n\\r]/g, '')))")
        assert not hrefs, f"javascript: URLs left in the page: {hrefs}"


def launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_jupyter(root: Path, app: str = "server", token: str = "attnkit-test-token"):
    """A Jupyter server (or lab) on localhost serving ``root``, as the instructor runs it; (process, url)."""
    port = free_port()
    log = open(root / f"jupyter-{app}.log", "w")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".jupyter-config"), "JUPYTER_RUNTIME_DIR": str(root / ".jupyter-runtime")}
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", app, "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            return proc, url
        except Exception:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.terminate()
    raise AssertionError("jupyter did not start: " + (root / f"jupyter-{app}.log").read_text()[-3000:])


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- one graded batch -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graded_xss(tmp_path_factory):
    from harness import kit

    from attnkit.authoring.release import generate
    chromium_or_skip()
    course = Course(Path(__file__).resolve().parents[1]).scratch_copy(notebooks=[NB], parent=str(tmp_path_factory.mktemp("xss")))
    shutil.copy2(Path(__file__).resolve().parents[1] / "nbgrader_config.py", course.root / "nbgrader_config.py")
    generate(course, ASSIGNMENT)
    for sid, nb in hostile_submission(course).items():
        dest = course.path("submitted", sid, ASSIGNMENT)
        dest.mkdir(parents=True)
        nbu.write(nb, dest / f"{NB}.ipynb")
    kit(course.root, "autograde", ASSIGNMENT, "--quiet", "--unsandboxed-i-accept-the-risk", check=True,
        env={"ATTNKIT_CELL_TIMEOUT": "30"})
    kit(course.root, "feedback", ASSIGNMENT, check=True)
    with course.gradebook() as gb:   # names come from the LMS, where students may set them
        gb.update_or_create_student("xss", first_name="<img src=x onerror=\"window.__pwned='name'\">",
                                    last_name="<script>window.__pwned='last-name'</script>")
    yield course
    shutil.rmtree(course.root, ignore_errors=True)


@pytest.mark.slow
def test_feedback_page_runs_no_student_script_and_shows_text_image_and_math_offline(graded_xss):
    """Does the feedback page, opened from disk with no network, run none of the student's payloads
    while their text, their image and their math (typeset by the local MathJax) still show?"""
    from playwright.sync_api import sync_playwright
    page_path = graded_xss.path("feedback", "xss", ASSIGNMENT, f"{NB}.html")
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        watch = Watch(page)
        page.goto(page_path.as_uri())
        for sel in ("#jslink", "#formbtn"):
            if page.locator(sel).count():
                page.locator(sel).first.click()
        page.wait_for_timeout(500)
        watch.assert_nothing_ran(page)
        page.wait_for_selector("mjx-container", timeout=30000)      # MathJax 3 from feedback/_mathjax/
        watch.assert_nothing_ran(page)
        assert page.locator("p", has_text="The output projection:").is_visible()
        assert page.locator("img[alt='a plot']").evaluate("i => i.complete && i.naturalWidth") == 4
        assert page.locator(".output_png img").first.evaluate("i => i.naturalWidth") == 4
        assert page.locator(".output_html td", has_text="kept cell").is_visible()                # an HTML table output, cleaned
        assert page.locator("mjx-container").count() >= 2 and "\\frac" not in page.inner_text("body")
        for link in page.locator("mjx-container a").all():   # the math links, clicked as a curious grader would
            link.click(force=True)
        page.wait_for_timeout(300)
        watch.assert_nothing_ran(page)
        # the summary: total on top, the failed part linked to its cell, points lost beside it
        summary = page.locator(".attnkit-summary")
        assert re.search(r"13 / 19", summary.inner_text())
        row = summary.locator("tr.failed", has=page.locator("td[title='q3e_softmax']"))   # named as the homework does
        assert "−2" in row.inner_text() and "(e)" in row.inner_text()
        row.locator("a.badge").click()
        assert page.evaluate("location.hash") == "#q3e_softmax"
        assert "awaiting grading" in summary.locator("tr", has=page.locator("td[title='q3b_explanation']")).inner_text()
        browser.close()


@pytest.mark.slow
def test_formgrader_submission_page_runs_no_student_script_and_boxes_the_mark_scheme(graded_xss):
    """Does the formgrader's page for the stored submission, on the instructor's logged-in Jupyter
    server, run none of the student's payloads, show their text, image and math (MathJax served
    locally), and show the mark scheme as a labelled box instead of raw BEGIN/END headings?"""
    from playwright.sync_api import sync_playwright
    with graded_xss.gradebook() as gb:
        sub_id = gb.find_submission_notebook(NB, ASSIGNMENT, "xss").id
    proc, url = start_jupyter(graded_xss.root)
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page()
            watch = Watch(page, allowed_origin=url)
            missing = []  # MathJax served whole: no font or font data it asks for may 404
            page.on("response", lambda r: missing.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(f"{url}/formgrader/submissions/{sub_id}/?token=attnkit-test-token")
            page.wait_for_timeout(1000)
            watch.assert_nothing_ran(page)
            # MathJax 2 from jupyter_server_mathjax on the same server
            page.wait_for_selector(".MathJax, .MathJax_SVG, .MathJax_CHTML", timeout=30000, state="attached")
            page.wait_for_timeout(2000)  # the fonts load after the first typeset
            watch.assert_nothing_ran(page)
            assert not [m for m in missing if "mathjax" in m.lower()], missing
            assert not [c for c in watch.console if "404" in c and "mathjax" in c.lower()], watch.console
            assert page.locator("p", has_text="The output projection:").is_visible()
            assert page.locator("img[alt='a plot']").evaluate("i => i.complete && i.naturalWidth") == 4
            assert page.locator(".output_html td", has_text="kept cell").is_visible()
            box = page.locator(".attnkit-markscheme")
            assert box.count() >= 1 and "Mark scheme (graders only)" in box.first.inner_text()
            assert "BEGIN MARK SCHEME" not in page.inner_text("body")
            assert page.locator("input.score#q3b_explanation").is_visible()   # the grader can still grade
            # each graded cell's heading names the part as the homework does, beside its grade id
            heading = page.locator(".panel-heading", has=page.locator("input.score#q3b_W_v")).inner_text()
            assert "Q3(a) blank (b): size of W_v" in heading and "q3b_W_v" in heading, heading
            assert "Student's answer: Q3(b) written" in page.inner_text("body")
            browser.close()
    finally:
        stop(proc)


@pytest.mark.slow
def test_feedback_math_links_with_a_hidden_scheme_are_not_links(tmp_path):
    """MathJax 3's safe filter reads a URL's scheme with /^\\s*([a-z]+):/ and passes a URL where it finds
    none; the browser drops a tab inside a URL. Does `\\href{java<TAB>script:...}` in a student's math become
    a link on the feedback page (the page's own MathJax configuration, its local copy, no network)?"""
    from attnkit.reports import feedback_page, install_mathjax
    from attnkit.preprocessors.sanitise import render_markdown

    chromium_or_skip()
    from playwright.sync_api import sync_playwright
    install_mathjax(tmp_path)
    body = render_markdown("$\\href{java\tscript:window.__pwned='tab'}{tabbed}$ and $x^2$", student=True)
    page = "<html><head><!-- attnkit mathjax -->x<!-- /attnkit mathjax --></head><body>" + body + "</body></html>"
    (tmp_path / "page.html").write_text(feedback_page(page, "", "_mathjax/tex-svg-full.js"))
    with sync_playwright() as p:
        browser = launch(p)
        pg = browser.new_page()
        pg.goto((tmp_path / "page.html").as_uri())
        pg.wait_for_function("() => document.querySelectorAll('mjx-container').length >= 2", timeout=30000)
        links = pg.evaluate("() => [...document.querySelectorAll('mjx-container a')].map(a => a.getAttribute('href'))")
        assert not links, f"student math kept links: {links!r}"
        browser.close()
