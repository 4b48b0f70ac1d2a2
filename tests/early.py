"""Slow set-up started when the session starts, in a thread, for the tests that need it.

Installing packages into a fresh environment (pip: one core, mostly unpacking and disk) takes minutes and
uses little of a second core; grading fixture banks uses both. A test whose set-up is such an install marks
itself ``@pytest.mark.early("job")`` and reads ``early.result("job")``: conftest.py starts every job a
selected test names as soon as collection ends, so the install runs while other tests grade, and the test
itself only waits for what is left of it. A job builds its own inputs (no pytest fixture: it starts before
any), returns what the test asserts on, and registers what to remove at the session's end. It names the working
folder of every process it starts: the session's is shared with the tests, which may move into a folder and
remove it (a pip started there failed in os.getcwd)."""
from __future__ import annotations

import shutil
import tempfile
import threading

JOBS: dict = {}        # name -> function() -> result
_started: dict = {}    # name -> (thread, [result], [exception])
_cleanup: list = []    # folders to remove when the session ends


def job(fn):
    """Register ``fn`` (no arguments) as the early job named after it."""
    JOBS[fn.__name__] = fn
    return fn


def start(name: str) -> None:
    """Start job ``name`` in a thread (once)."""
    if name in _started:
        return
    out, err = [], []

    def run():
        try:
            out.append(JOBS[name]())
        except BaseException as exc:  # noqa: B902 (re-raised in the test that reads it)
            err.append(exc)

    thread = threading.Thread(target=run, name=f"early-{name}", daemon=True)
    _started[name] = (thread, out, err)
    thread.start()


def result(name: str, timeout: float = 3600):
    """The job's result (started now if it was not): waits for it; its exception is raised here."""
    start(name)
    thread, out, err = _started[name]
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"the early job {name} did not finish in {timeout:.0f} s")
    if err:
        raise err[0]
    return out[0]


def scratch(prefix: str) -> str:
    """A folder for a job, removed when the session ends."""
    path = tempfile.mkdtemp(prefix=f"attnkit-early-{prefix}-")
    _cleanup.append(path)
    return path


def on_finish(fn) -> None:
    """Call ``fn()`` when the session ends (after every test)."""
    _cleanup.append(fn)


def finish(wait: bool = True) -> None:
    """Wait for the jobs still running (unless the session was interrupted), then remove what they made."""
    for thread, _, _ in _started.values():
        thread.join(600 if wait else 0)
    for item in reversed(_cleanup):
        if callable(item):
            try:
                item()
            except Exception:  # noqa: BLE001 (tidying)
                pass
        else:
            shutil.rmtree(item, ignore_errors=True)
