"""Slow set-up started when the session starts, in a thread, for the tests that need it.

Installing packages into a fresh environment (pip: one core, mostly unpacking and disk) takes minutes and
uses little of a second core; grading fixture banks uses both. A test whose set-up is such an install marks
itself ``@pytest.mark.early("job")`` and reads ``early.result("job")``: conftest.py starts every job a
selected test names as soon as collection ends, so the install runs while other tests grade, and the test
itself only waits for what is left of it. A job builds its own inputs (no pytest fixture: it starts before
any), returns what the test asserts on, and registers what to remove at the session's end. It names the working
folder of every process it starts: the session's is shared with the tests, which may move into a folder and
remove it (a pip started there failed in os.getcwd).

A job may run in a lane: the jobs of one lane run one after another, in the order the session will need them
(the fixture banks: each grades with two workers, so one at a time fills the core that a test driving one
command leaves idle, and never crowds the machine). A test that needs a lane's job before the lane has reached
it runs the job itself."""
from __future__ import annotations

import shutil
import tempfile
import threading
from collections import deque

JOBS: dict = {}        # name -> (function() -> result, lane or None)
_started: dict = {}    # name -> _Run
_lanes: dict = {}      # lane -> [deque of _Run, the thread working through it or None]
_lanes_lock = threading.Lock()
_cleanup: list = []    # folders to remove when the session ends
_closed = threading.Event()  # the session is over: no job starts any more


class _Run:
    """One job: run once, by its lane, its own thread, or the first test that needs it."""

    def __init__(self, name: str):
        self.name, self.lock, self.done = name, threading.Lock(), threading.Event()
        self.out, self.err, self.taken = [], [], False

    def run(self) -> None:
        with self.lock:
            if self.taken or _closed.is_set():
                return
            self.taken = True
        try:
            self.out.append(JOBS[self.name][0]())
        except BaseException as exc:  # noqa: B902 (re-raised in the test that reads it)
            self.err.append(exc)
        finally:
            self.done.set()


def job(fn=None, *, name: str | None = None, lane: str | None = None):
    """Register ``fn`` (no arguments) as the early job named after it (or ``name``); ``lane``: run it after the
    lane's earlier jobs instead of at once."""
    def register(f):
        JOBS[name or f.__name__] = (f, lane)
        return f

    return register(fn) if fn is not None else register


def start(name: str) -> None:
    """Start job ``name`` (once): in a thread of its own, or queued on its lane."""
    if name in _started:
        return
    run = _started[name] = _Run(name)
    lane = JOBS[name][1]
    if lane is None:
        threading.Thread(target=run.run, name=f"early-{name}", daemon=True).start()
        return
    with _lanes_lock:
        queue = _lanes.setdefault(lane, [deque(), None])
        queue[0].append(run)
        if queue[1] is None or not queue[1].is_alive():
            queue[1] = threading.Thread(target=_work, args=(lane,), name=f"early-lane-{lane}", daemon=True)
            queue[1].start()


def _work(lane: str) -> None:
    while True:
        with _lanes_lock:
            queue = _lanes[lane]
            if not queue[0]:
                queue[1] = None
                return
            run = queue[0].popleft()
        run.run()


def result(name: str, timeout: float = 3600):
    """The job's result (started now if it was not; run here if its lane has not reached it): waits for it;
    its exception is raised here."""
    start(name)
    run = _started[name]
    run.run()  # returns at once where the job is already taken
    if not run.done.wait(timeout):
        raise TimeoutError(f"the early job {name} did not finish in {timeout:.0f} s")
    if run.err:
        raise run.err[0]
    return run.out[0]


def scratch(prefix: str) -> str:
    """A folder for a job, removed when the session ends."""
    path = tempfile.mkdtemp(prefix=f"attnkit-early-{prefix}-")
    _cleanup.append(path)
    return path


def on_finish(fn) -> None:
    """Call ``fn()`` when the session ends (after every test)."""
    _cleanup.append(fn)


def finish(wait: bool = True) -> None:
    """Wait for the jobs under way (unless the session was interrupted), then remove what they made. A lane
    starts no job once the session is over (a test that needed it was deselected by -x, or skipped)."""
    _closed.set()
    for run in _started.values():
        with run.lock:  # after this, a job not taken never will be
            taken = run.taken
        if taken:
            run.done.wait(600 if wait else 0)
    for item in reversed(_cleanup):
        if callable(item):
            try:
                item()
            except Exception:  # noqa: BLE001 (tidying)
                pass
        else:
            shutil.rmtree(item, ignore_errors=True)
