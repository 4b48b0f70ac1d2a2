"""The course's diagnoses setting (c.CourseExecute.diagnoses) reaches every place a student reads a check's message:
the hidden tests, the visible checks run by the grading kernel (Gradescope's output), and the released helpers in
the student's own JupyterLab (slow: a release, and one Q3 notebook graded through run_autograder)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from attnkit.authoring import notebooks as nbu
from attnkit.course import Course
from banks.hw9.public_code import _tutorial
from attnkit.fixtures import answer_cells
from harness import ROOT, kit
from test_gradescope import gradescope_root, nb_bytes, part, run_autograder

ON, OFF = "c.CourseExecute.diagnoses = True", "c.CourseExecute.diagnoses = False"
WL = "q3_whole_layer_check"
NO_SCALE = _tutorial(scores="torch.matmul(Q, K.transpose(-2, -1))")   # the tutorial layer without 1/sqrt(d_k)


def course_with_diagnoses_off(parent) -> Course:
    course = Course(ROOT).scratch_copy(parent=str(parent))
    config = course.path("course_config.py")
    text = config.read_text()
    assert ON in text, "course_config.py should set c.CourseExecute.diagnoses"
    config.write_text(text.replace(ON, OFF))
    return course


def released_hint(release_dir) -> str:
    """What the released helpers' likely_mistake says, in a fresh Python as in a student's kernel (no grading
    environment), for a layer output made with the no-1/sqrt(d_k) mistake."""
    code = textwrap.dedent("""
        import torch
        from attention_checks import _mha_variant, likely_mistake, mha_variants
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
        w = [torch.randn(8, 8, generator=g, dtype=torch.float64) if i % 2 == 0 else
             torch.randn(8, generator=g, dtype=torch.float64) for i in range(8)]
        print(repr(likely_mistake(_mha_variant(x, x, None, w, 2, scale="none"), mha_variants(x, x, None, w, 2))))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("ATTNKIT_DIAGNOSES", "NBGRADER_EXECUTION")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=release_dir, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


@pytest.mark.slow
def test_release_writes_the_setting_into_the_helpers_students_run(tmp_path):
    """With diagnoses off, does ./kit release hand out helpers whose likely_mistake stays silent in a student's own
    kernel, while the kit's release (diagnoses on) names the missing 1/sqrt(d_k)?"""
    course = course_with_diagnoses_off(tmp_path)
    kit(course.root, "release", check=True)
    released = course.path("release", "hw9")
    assert "\nDIAGNOSES = False\n" in (released / "attention_checks.py").read_text()
    assert released_hint(released) == "''"
    assert "without the 1/√d_k scaling" in released_hint(ROOT / "release" / "hw9")


@pytest.mark.slow
def test_gradescope_shows_no_likely_mistake_when_the_course_turns_them_off(tmp_path):
    """Graded on Gradescope with diagnoses off, does a layer without 1/sqrt(d_k) lose the whole-layer part with its
    message but no "likely:" anywhere, though its visible check runs in the kernel with the helpers as released
    (diagnoses on: only the kernel's environment turns the hint off)?"""
    course = course_with_diagnoses_off(tmp_path)
    assert "\nDIAGNOSES = True\n" in (ROOT / "release" / "hw9" / "attention_checks.py").read_text()
    out = tmp_path / "hw9-gradescope.zip"
    kit(course.root, "gradescope", "hw9", "-o", str(out), check=True)
    nb = answer_cells(q3_mha=NO_SCALE)(nbu.read(ROOT / "source" / "hw9" / "q3_multihead_attention.ipynb"))
    root = gradescope_root(tmp_path / "gs", out, {"q3_multihead_attention.ipynb": nb_bytes(nb)})
    _, res = run_autograder(root)
    tests = {t["name"]: t for t in res["tests"]}
    whole = tests[part("q3_multihead_attention", WL)]
    assert whole["score"] == 0 and "whole layer" in whole["output"] and "wrong values" in whole["output"], whole
    assert "likely" not in json.dumps(res, ensure_ascii=False)
