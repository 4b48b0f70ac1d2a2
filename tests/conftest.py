import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the checkout's banks/

import pytest  # noqa: E402

import early  # noqa: E402  (tests/early.py)

CACHE: list = []  # the session's cache folder for the kit (ATTNKIT_CACHE)


def pytest_configure(config):
    config.addinivalue_line("markers", "early(job): the test reads early.result(job); the job starts with the session")
    # what the kit caches for the courses the tests grade (a settings file per scratch course) stays in the
    # session's own folder, removed at its end, never in the user's cache
    CACHE.append(tempfile.mkdtemp(prefix="attnkit-test-cache-"))
    os.environ["ATTNKIT_CACHE"] = CACHE[0]


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(session, config, items):
    """Start every early job a selected test names (its install then runs while other tests grade)."""
    if config.option.collectonly:
        return
    for name in dict.fromkeys(m.args[0] for item in items for m in item.iter_markers("early")):
        early.start(name)


def pytest_sessionfinish(session, exitstatus):
    early.finish(wait=exitstatus != pytest.ExitCode.INTERRUPTED)
    for folder in CACHE[:1]:
        shutil.rmtree(folder, ignore_errors=True)
