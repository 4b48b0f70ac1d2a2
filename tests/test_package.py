"""The kit installed as a package (pip install ., not editable): its subpackages and package data are in the
wheel, and its commands work against a course folder with no checkout of the kit beside it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COURSE_FILES = ("course_config.py", "nbgrader_config.py")

pytestmark = pytest.mark.slow  # builds and installs a wheel (about 15 s)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the kit installed from a wheel built from a copy of its files (no checkout on the
    path); its dependencies are this environment's, reached by path only, so its .pth files (this checkout's
    editable install among them) are never read."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "attnkit", src / "attnkit", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "kit-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
                          "--no-deps", "--no-build-isolation", "--no-index", str(src)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    shutil.rmtree(src)  # nothing of the kit is left outside the venv
    return py, env, tmp


def test_the_wheel_holds_every_subpackage_and_the_templates(installed):
    """Does the installed kit (not this checkout) hold grader/, kernel/ with every module the sandbox binds,
    sandbox/, preprocessors/ and the templates, read through importlib.resources?"""
    py, env, tmp = installed
    probe = ("import importlib.resources, attnkit, attnkit.grader.hidden, attnkit.kernel.agent, attnkit.sandbox\n"
             "import attnkit.preprocessors.execute, attnkit.batch.workers, attnkit.lms.gradescope\n"
             "kit = importlib.resources.files('attnkit')\n"
             "print(attnkit.__file__)\n"
             "print(all((kit / m).is_file() for m in attnkit.sandbox.KERNEL_MODULES))\n"
             "print((kit / 'templates' / 'base' / 'mathjax.html.j2').is_file(),"
             " (kit / 'templates' / 'formgrade' / 'index.html.j2').is_file())\n")
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=120, env=env, cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    where, kernel, templates = out.stdout.splitlines()
    assert where.startswith(str(tmp / "venv")), where
    assert kernel == "True" and templates == "True True", out.stdout


def test_the_installed_kit_releases_a_course(installed):
    """Does ``python -m attnkit release`` of the installed kit release a copy of the course (hidden tests out,
    the release checks run with the grader's modules from the wheel), exit 0 and write every notebook?"""
    py, env, tmp = installed
    course = tmp / "course"
    course.mkdir()
    for name in COURSE_FILES:
        shutil.copy2(ROOT / name, course / name)
    shutil.copytree(ROOT / "source", course / "source", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([str(py), "-m", "attnkit", "--root", str(course), "release", "hw9"], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    released = sorted(p.name for p in (course / "release" / "hw9").glob("*.ipynb"))
    assert released == sorted(p.name for p in (ROOT / "source" / "hw9").glob("*.ipynb")) and released
