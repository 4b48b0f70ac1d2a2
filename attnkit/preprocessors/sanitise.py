"""Student content made safe for every page the kit writes or serves (docs/nbgrader-traps.md,
"Student HTML is sanitised").

A submission's markdown and outputs are hostile HTML: ``<script>``, ``<img onerror>``, ``<svg onload>``,
``javascript:`` links, HTML and JavaScript display outputs. Everything below goes through nh3 (the
Rust ``ammonia`` sanitiser): script, event handlers, styles, frames, forms and non-http(s) URLs go;
text, tables, headings, code, images carried in the page (PNG, JPEG, GIF, SVG as an ``<img>``, where
no script runs) and LaTeX (plain text that MathJax typesets) stay.

* :func:`clean_html` - one HTML fragment.
* :func:`markdown2html` - nbconvert's markdown filter, cleaned; a ``### BEGIN MARK SCHEME`` region is
  shown as a labelled box (graders only: feedback removes it before rendering).
* :class:`SanitiseNotebook` - an nbconvert/nbgrader preprocessor: outputs reduced to safe types
  (HTML and markdown cleaned, JavaScript and widgets dropped with a note), raw cells cleaned,
  notebook widget state dropped. It runs on the stored autograded notebook (autograde) and again on
  whatever nbconvert renders (the formgrader's and the feedback's HTMLExporter).
"""
from __future__ import annotations

import base64
import html
import re

import jinja2
import nh3
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

# Images only from the page itself: a remote src is a request (a tracking pixel) when the page opens.
_DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|svg\+xml);base64,[A-Za-z0-9+/=\s]*\Z", re.I)
_TAGS = set(nh3.ALLOWED_TAGS) | {"tfoot"}
_ATTRIBUTES = {tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()}
_ATTRIBUTES["*"] = {"class", "id", "title"}
_ATTRIBUTES["a"] = {"href", "hreflang", "name"}


def _attribute(tag: str, attr: str, value: str):
    if tag == "img" and attr == "src":
        return value if _DATA_IMAGE.match(value) else None
    if value.strip().lower().startswith("data:"):   # data: only as an image (a data:text/html link is a page)
        return None
    if attr == "id" or attr == "name":        # anchors stay; nothing that reads like script
        return value if re.fullmatch(r"[\w\-.:]{1,200}", value) else None
    return value


# Student content (answers, outputs) gets no class and only prefixed ids: nbgrader's formgrade.js finds a
# part's score box by ``#<grade_id>`` and ``.nbgrader_cell``, which a student's markup could otherwise forge.
_STUDENT_ATTRIBUTES = {**_ATTRIBUTES, "*": {"id", "title"}}


def _student_attribute(tag: str, attr: str, value: str):
    value = _attribute(tag, attr, value)
    if value is not None and attr in ("id", "name"):
        return "user-" + value
    return value


def clean_html(fragment: str, student: bool = False) -> str:
    """``fragment`` with only safe markup left (see the module docstring); ``student``: no class, ids prefixed."""
    return nh3.clean(fragment, tags=_TAGS, attributes=_STUDENT_ATTRIBUTES if student else _ATTRIBUTES,
                     url_schemes={"http", "https", "mailto", "data"},
                     attribute_filter=_student_attribute if student else _attribute,
                     link_rel="noopener noreferrer nofollow", strip_comments=True)


MARK_SCHEME = re.compile(r"^[ \t]*#*[ \t]*BEGIN MARK SCHEME[^\n]*\n(.*?)^[ \t]*#*[ \t]*END MARK SCHEME[^\n]*(\n|\Z)",
                         re.M | re.S)
# Drawn after cleaning (the kit's own markup, not the student's), so its style survives.
_BOX = ("<div class='attnkit-markscheme' style='border:2px solid #b58900;background:#fdf6e3;border-radius:6px;"
        "padding:.4em .8em;margin:.6em 0'><div style='font-weight:bold;color:#7a5c00;font-family:sans-serif'>"
        "Mark scheme (graders only)</div>{}</div>")


def _render(source: str, attachments=None) -> str:
    renderer = IPythonRenderer(escape=False, attachments=attachments or {}, anchor_link_text="¶")
    return MarkdownWithMath(renderer=renderer).render(source)


def render_markdown(source: str, attachments=None, student: bool = False) -> str:
    """Markdown (with math) to safe HTML; in the kit's own (locked) cells, mark-scheme regions as a
    labelled box; in a ``student`` cell no box (a student could forge one) and student-strict cleaning."""
    if student:
        return clean_html(_render(source, attachments), student=True)
    out, at = [], 0
    for m in MARK_SCHEME.finditer(source):
        out.append(clean_html(_render(source[at:m.start()], attachments)))
        out.append(_BOX.format(clean_html(_render(m.group(1), attachments))))
        at = m.end()
    out.append(clean_html(_render(source[at:], attachments)))
    return "".join(out)


@jinja2.pass_context
def markdown2html(context, source):
    """nbconvert's ``markdown2html`` filter, cleaned (configured in course_config.py)."""
    cell = context.get("cell", {}) or {}
    # Locked cells are the kit's (restored from the gradebook before grading); any other is the student's.
    locked = bool(((cell.get("metadata") or {}).get("nbgrader") or {}).get("locked"))
    return render_markdown(source, cell.get("attachments", {}), student=not locked)


_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")
SAFE_MIMETYPES = ("text/plain", "text/html", "text/latex", "image/png", "image/jpeg", "image/gif")


def clean_output(output) -> None:
    """One output reduced, in place, to types that render without running anything."""
    if output.get("output_type") not in ("display_data", "execute_result"):
        return
    data = output.get("data", {})
    if "text/markdown" in data:
        md = data.pop("text/markdown")
        data.setdefault("text/html", render_markdown(md if isinstance(md, str) else "".join(md), student=True))
    if "image/svg+xml" in data:    # SVG can carry script; as an <img> it never runs, wherever it is shown
        svg = data.pop("image/svg+xml")
        svg = (svg if isinstance(svg, str) else "".join(svg)).encode("utf-8", "replace")
        data.setdefault("text/html", f'<img src="data:image/svg+xml;base64,{base64.b64encode(svg).decode()}">')
    dropped = sorted(k for k in data if k not in SAFE_MIMETYPES)
    for key in ("image/png", "image/jpeg", "image/gif"):   # base64, nothing else, in an attribute
        if key in data and not (isinstance(data[key], str) and _BASE64.fullmatch(data[key])):
            dropped.append(key)
    for key in dropped:
        del data[key]
    if "text/html" in data:
        text = data["text/html"]
        data["text/html"] = clean_html(text if isinstance(text, str) else "".join(text), student=True)
    meta = output.get("metadata", {})
    for key in list(meta):
        if not isinstance(meta[key], dict):
            del meta[key]
            continue
        meta[key] = {k: v for k, v in meta[key].items() if k in ("width", "height") and isinstance(v, (int, float))}
    if dropped and not data:
        data["text/plain"] = f"[removed from this page: {', '.join(dropped)} output]"


def clean_notebook(nb):
    """The notebook with every output and raw cell made safe, and no widget state (in place)."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "raw":
            cell.source = html.escape(cell.source)
            cell.metadata.pop("raw_mimetype", None)
            cell.metadata.pop("format", None)
        for output in cell.get("outputs", []):
            clean_output(output)
    return nb


class SanitiseNotebook(Preprocessor):
    """Outputs, raw cells and widget state made safe (autograde; the formgrader's and feedback's exporter)."""

    enabled = Bool(True)  # nbconvert's default is off: a preprocessor in nbgrader's lists would be skipped

    def preprocess(self, nb, resources):
        # The formgrader's template prints the student's names unescaped, and they come from the LMS,
        # where students may set them: escaped here, before the template sees them.
        for key in ("first_name", "last_name", "student"):
            if isinstance(resources.get(key), str):
                resources[key] = html.escape(resources[key])
        return clean_notebook(nb), resources
