import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the checkout's banks/

import pytest  # noqa: E402

import early  # noqa: E402  (tests/early.py)


def pytest_configure(config):
    config.addinivalue_line("markers", "early(job): the test reads early.result(job); the job starts with the session")


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(session, config, items):
    """Start every early job a selected test names (its install then runs while other tests grade)."""
    if config.option.collectonly:
        return
    for name in dict.fromkeys(m.args[0] for item in items for m in item.iter_markers("early")):
        early.start(name)


def pytest_sessionfinish(session, exitstatus):
    early.finish(wait=exitstatus != pytest.ExitCode.INTERRUPTED)
