"""A small pool of grading processes that always finishes the batch.

Each worker slot runs one grading process (``python -m attnkit.workers``) that grades the
students it is sent one at a time and reports every finished notebook at once, over a pipe of
its own (never its stdout, which a kernel may share). A process that dies (killed, out of
memory, a crash) is replaced; its student is retried once in a fresh process, and if that
dies too, the notebooks it had not finished are recorded as could-not-be-graded (status
"failed", scored 0) and the batch goes on. Ctrl-C stops the workers (each in its own session,
so the terminal's signal reaches only this process) and keeps every result already written.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque

RETRIES = 1  # a student whose grading process died is graded once more in a fresh one


class Worker:
    def __init__(self, root: str, assignment: str, slot: int, env: dict, zygote=None):
        """``zygote``: a warm-start interpreter the batch process started for this process (handed over)."""
        read_fd, write_fd = os.pipe()
        self.log = tempfile.NamedTemporaryFile(prefix="attnkit-worker-", suffix=".log", delete=False)
        env = {**os.environ, **env, "ATTNKIT_SANDBOX_SLOT": str(slot)}
        fds = (write_fd,)
        if zygote is not None:
            handed, extra = zygote.handover()
            env.update(handed)
            fds = (write_fd, *extra)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "attnkit.workers", root, assignment, str(write_fd)],
                stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, pass_fds=fds, text=True,
                start_new_session=True, env=env)
        finally:
            if zygote is not None:
                zygote.released()
        os.close(write_fd)
        self.results = os.fdopen(read_fd, "r")

    def grade(self, student: str, more: bool = False) -> tuple[dict | None, list[dict]]:
        """(the student's result, or None if the process died; the notebooks it finished).
        ``more``: other students are waiting (the process may start their sandbox ahead)."""
        done = []
        try:
            self.proc.stdin.write(json.dumps([student, more]) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None, done
        for line in self.results:
            kind, _, payload = line.partition(" ")
            if kind == "NB":
                done.append(json.loads(payload))
            elif kind == "DONE":
                return json.loads(payload), done
        return None, done

    def death(self) -> str:
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.wait()
        how = f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        tail = ""
        try:
            with open(self.log.name, errors="replace") as f:
                lines = [l.strip() for l in f.read()[-4000:].splitlines() if l.strip()]
            tail = f"; last output: {lines[-1][:200]}" if lines else ""
        except OSError:
            pass
        return f"the grading process died ({how}){tail}"

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the worker and its kernels' bwraps
        except (ProcessLookupError, PermissionError):
            pass

    def discard(self) -> None:
        """After the process died: release its pipes and log."""
        for f in (self.proc.stdin, self.results):
            try:
                f.close()
            except OSError:
                pass
        try:
            os.unlink(self.log.name)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except Exception:
            self.kill()
        self.results.close()
        os.unlink(self.log.name)


def run_batch(root: str, assignment: str, students: list[str], workers: int, env: dict, on_result,
              notebooks: list[str], failed_result, ahead=None) -> list[dict]:
    """Grade ``students`` with ``workers`` processes; ``on_result(result)`` after each student.
    ``failed_result(student, done, reason)`` builds the result of a student whose grading kept dying.
    ``ahead(slot)``: a warm-start interpreter started here for a worker slot's first process (or None)."""
    queue, lock, results, live = deque(students), threading.Lock(), [], set()
    stop = threading.Event()

    def slot_loop(slot):
        first = ahead(slot) if ahead else None  # its imports run while the grading process starts
        try:
            _slot_loop(slot, first)
        finally:
            if first is not None and first.proc is not None:  # never handed over: no student came
                first.discard()

    def _slot_loop(slot, first):
        worker = None
        while not stop.is_set():
            with lock:
                if not queue:
                    break
                student = queue.popleft()
                more = len(queue) >= 1
            result = None
            for _attempt in range(1 + RETRIES):
                if stop.is_set():
                    return
                if worker is None:
                    worker, first = Worker(root, assignment, slot, env, first), None
                    with lock:
                        live.add(worker)
                result, done = worker.grade(student, more)
                if result is not None:
                    break
                reason = worker.death() if not stop.is_set() else "grading was interrupted"
                with lock:
                    live.discard(worker)
                worker.discard()
                worker = None
            if stop.is_set() and result is None:
                return
            if result is None:
                result = failed_result(student, done, reason)
            with lock:
                results.append(result)
                on_result(result)
        if worker is not None:
            worker.close()

    threads = [threading.Thread(target=slot_loop, args=(i,), daemon=True) for i in range(max(1, workers))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        with lock:
            for w in live:
                w.kill()
        for t in threads:
            t.join(10)
        raise Interrupted(results)
    return results


class Interrupted(KeyboardInterrupt):
    def __init__(self, results):
        super().__init__("grading interrupted")
        self.results = results


def main(argv=None) -> int:
    """A grading process: one ``[student id, more students follow]`` (JSON) per line on stdin;
    results on the pipe ``fd``."""
    import ctypes

    from attnkit.grading import _safe_grade

    root, assignment, fd = (argv or sys.argv[1:])[:3]
    try:  # stop grading promptly when the batch's process dies (the gradebook stays consistent: sqlite)
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    out = os.fdopen(int(fd), "w", buffering=1)
    from attnkit.grading import start_ahead
    from attnkit.sandbox import adopt_handed

    # the first sandbox: the one the batch process started for this process, else one started now
    # (its imports overlap this process's start and its first line's wait)
    if not adopt_handed():
        start_ahead(root, assignment)
    for line in sys.stdin:
        student, more = json.loads(line)

        def notebook_done(nb: dict) -> None:
            out.write("NB " + json.dumps(nb) + "\n")

        result = _safe_grade(root, assignment, student, on_notebook=notebook_done, prestart=more)
        out.write("DONE " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
