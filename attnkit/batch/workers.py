"""A small pool of grading processes that always finishes the batch.

Each worker slot runs one grading process (``main`` below: for a slot's first, a fork of ``./kit
autograde``, ``Forked``; else a new ``python -m attnkit.batch.workers``) that grades the students it is
sent one at a time and reports every finished notebook at once, over a pipe of its own (never its
stdout, which a kernel may share). A process that dies (killed, out of
memory, a crash) is replaced; its student is retried once in a fresh process, and if that
dies too, the notebooks it had not finished are recorded as could-not-be-graded (status
"failed", scored 0) and the batch goes on. A student whose grading runs past the per-student
wall-clock limit (a stall of any kind) is stopped the same way, not retried. Ctrl-C stops the
workers (each in its own session, so the terminal's signal reaches only this process) and keeps
every result already written.
"""
from __future__ import annotations

import gc
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

from attnkit import switched_on
from attnkit.quick_exit import exit_now

RETRIES = 1  # a student whose grading process died is graded once more in a fresh one
GRADER_MEMORY_ENV = "ATTNKIT_GRADER_MEMORY_MB"  # CourseExecute.grader_memory_mb, handed to each grading process


def limit_own_memory(mb: int) -> None:
    """RLIMIT_DATA of this grading process (soft only: the kernels it starts set their own, which may be higher).
    Over it an allocation fails (MemoryError) instead of taking memory from the other workers."""
    import resource

    if mb > 0:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        want = mb << 20
        resource.setrlimit(resource.RLIMIT_DATA, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


class Worker:
    def __init__(self, root: str, assignment: str, slot: int, env: dict, zygote=None, fork: bool = False,
                 release: list | None = None):
        """``zygote``: a warm-start interpreter the batch process started for this process (handed over).
        ``fork``: a fork of this process (which must have no other thread), not a new interpreter: it starts
        with nbgrader and the course's configuration already loaded, and shares their memory.
        ``release``: where to leave the handed-over zygote for the caller to release (after its last fork)."""
        read_fd, write_fd = os.pipe()
        self.log = tempfile.NamedTemporaryFile(prefix=f"attnkit-worker-{os.getpid()}-", suffix=".log", delete=False)
        env = {**os.environ, **env, "ATTNKIT_SANDBOX_SLOT": str(slot)}
        fds = (write_fd,)
        if zygote is not None:
            handed, extra = zygote.handover()
            env.update(handed)
            fds = (write_fd, *extra)
        try:
            args = [root, assignment, str(write_fd)]
            self.proc = None
            if fork:
                try:
                    self.proc = Forked(args, env, fds, self.log.fileno())
                except OSError:  # no memory or process left for a fork: a new interpreter may still start
                    pass
            if self.proc is None:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "attnkit.batch.workers", *args],
                    stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, pass_fds=fds, text=True,
                    start_new_session=True, env=env)
        finally:
            if zygote is not None:
                if release is not None:
                    release.append(zygote)
                else:
                    zygote.released()
        os.close(write_fd)
        self.results = os.fdopen(read_fd, "rb", buffering=0)
        self._buf = b""
        self.timed_out = False

    def _lines(self, deadline: float | None):
        """The result pipe's lines until EOF, or until ``deadline`` (time.monotonic()): then timed_out."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = self._buf[:nl], self._buf[nl + 1:]
                yield line.decode("utf-8", "replace")
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and (left <= 0 or not select.select([self.results], [], [], left)[0]):
                self.timed_out = True
                return
            chunk = os.read(self.results.fileno(), 1 << 16)
            if not chunk:
                return
            self._buf += chunk

    def grade(self, student: str, more: bool = False, limit: float | None = None) -> tuple[dict | None, list[dict]]:
        """(the student's result, or None if the process died or ran past ``limit`` seconds (then
        ``timed_out``); the notebooks it finished). ``more``: other students are waiting (the process may
        start their sandbox ahead)."""
        done = []
        try:
            self.proc.stdin.write(json.dumps([student, more]) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None, done
        for line in self._lines(time.monotonic() + limit if limit else None):
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
        """After the process died: release its pipes and log, and what its kernels left (cgroups, mounts)."""
        for f in (self.proc.stdin, self.results):
            try:
                f.close()
            except OSError:
                pass
        try:
            os.unlink(self.log.name)
        except OSError:
            pass
        try:
            from attnkit.sandbox.limits import sweep

            sweep()
        except Exception:  # only tidying: the next batch sweeps again
            pass

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except Exception:
            self.kill()
        self.results.close()
        os.unlink(self.log.name)


class Forked:
    """A grading process forked from this one (the batch's), held as a Popen is (``pid``, ``stdin``, ``poll``,
    ``wait``). It starts with nbgrader and the course's configuration loaded, and shares their pages with this
    process (Gradescope's 768 MB: 30-70 MB less than a new interpreter). Like a new interpreter it is in its own
    session, reads its students from a pipe, writes its output to ``log_fd``, holds no other fd of this process
    but ``fds``, has ``env`` for its environment, and on exit runs the exit handlers of what it holds: not this
    process's finalizers (a temporary folder of the batch's would be deleted) nor its children."""

    NAME = b"attnkit-grading"  # what ps and top show (its command line is the batch's)

    def __init__(self, args: list[str], env: dict, fds: tuple, log_fd: int):
        stdin_r, stdin_w = os.pipe()
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()  # else the fork would print it again
            except Exception:  # noqa: BLE001 (a closed stream: nothing to print twice)
                pass
        gc.freeze()  # the fork's collector never visits (so never copies) the pages it inherits
        try:
            pid = os.fork()
        except OSError:
            gc.unfreeze()
            os.close(stdin_r)
            os.close(stdin_w)
            raise
        if pid == 0:
            code = 1
            try:
                self._become(args, env, (stdin_r, *fds), log_fd)
                code = main(args)
            except BaseException:  # noqa: BLE001 - said in its log, and its status says it failed
                import traceback

                traceback.print_exc()
            finally:
                exit_now(code)
        gc.unfreeze()
        os.close(stdin_r)
        self.pid, self.returncode = pid, None
        self.stdin = os.fdopen(stdin_w, "w")

    @classmethod
    def _become(cls, args: list[str], env: dict, fds: tuple, log_fd: int) -> None:
        """In the fork: what a new interpreter started with Popen(start_new_session, pass_fds, env) would be."""
        import ctypes
        import weakref

        os.setsid()
        stdin_r = fds[0]
        os.dup2(stdin_r, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        keep = {0, 1, 2, *fds[1:]}
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep:
                try:
                    os.close(int(name))
                except OSError:  # the listing's own fd, gone already
                    pass
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [os.path.abspath(__file__), *args]
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        for fin in list(getattr(weakref.finalize, "_registry", {})):
            fin.atexit = False  # the batch's objects: the batch finalizes them
        children = getattr(sys.modules.get("multiprocessing.process"), "_children", None)
        if children is not None:
            children.clear()  # the batch's: its exit handler would join them
        try:
            ctypes.CDLL(None).prctl(15, cls.NAME)  # PR_SET_NAME
        except Exception:  # noqa: BLE001 (a name for ps only)
            pass

    def poll(self):
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("grading process", timeout)
            time.sleep(0.02)
        return self.returncode


FORK_ENV = "ATTNKIT_FORK_WORKERS"
# "1": a batch of one student with one worker is graded in the batch's own process, not in a grading process of its
# own: no second copy of the pages a fork would write (40-60 MB: Gradescope's 768 MB then fits warm kernels). Only
# where something outside supervises the command as the pool supervises a grading process (a time limit, a retry
# after a death, the reason said): Gradescope's runner sets it (lms/gradescope.py).
IN_PROCESS_ENV = "ATTNKIT_GRADE_IN_PROCESS"


def can_fork() -> bool:
    """May a grading process be forked from this one? Only with no other thread here (a fork copies one thread, and
    a lock another held stays held) and ATTNKIT_FORK_WORKERS not 0. The batch asks only where it is the command's
    own fresh process (the CLI): a caller that ran other work first may hold what a fork must not share (an event
    loop, a database connection); there, and for a process that replaces one that died, a new interpreter."""
    return hasattr(os, "fork") and threading.active_count() == 1 and switched_on(FORK_ENV)


def _get_ready(root: str, assignment: str, take_sandbox) -> None:
    """What a grading process does before its first student: its own memory limit; the hidden tests' modules
    (torch: 1-2 s) loading in a thread while it waits for its sandbox and the first cells run, instead of at the
    first test cell with the kernel idle; its first sandbox, the one ``take_sandbox()`` takes (True) from the batch
    process, else one started now (its imports overlap this process's start and its first student's wait)."""
    from attnkit.batch.student import start_ahead

    limit_own_memory(int(os.environ.get(GRADER_MEMORY_ENV, "0") or 0))
    taken = take_sandbox()  # (before the thread: starting the batch's sandbox here is Python work too)
    threading.Thread(target=_import_grader, daemon=True).start()
    if not taken:
        start_ahead(root, assignment)


def grades_in_process(students: int, workers: int, fork: bool) -> bool:
    """Does the batch grade its one student in its own process (IN_PROCESS_ENV, one worker, a process that may
    fork: the command's own, with no other thread)?"""
    return fork and students == 1 and workers == 1 and can_fork() and os.environ.get(IN_PROCESS_ENV) == "1"


def _grade_here(root: str, assignment: str, student: str, env: dict, on_result, ahead=None) -> list[dict]:
    """The one student graded in this process, as a grading process would grade it (its environment, its own
    memory limit, its sandbox and slot, torch on one thread, loaded while the first cells run). No retry and no
    per-student limit: the supervisor that asked for this (IN_PROCESS_ENV) keeps both."""
    from attnkit.batch.student import _safe_grade
    from attnkit.sandbox.warm import keep_here

    os.environ.update({**env, "ATTNKIT_SANDBOX_SLOT": "0"})

    def take_started():
        zygote = ahead(0) if ahead else None
        if zygote is not None:
            keep_here(zygote)
        return zygote is not None

    _get_ready(root, assignment, take_started)
    try:
        result = _safe_grade(root, assignment, student, prestart=False)
    except KeyboardInterrupt:
        raise Interrupted([]) from None
    on_result(result)
    return [result]


def run_batch(root: str, assignment: str, students: list[str], workers: int, env: dict, on_result,
              notebooks: list[str], failed_result, ahead=None, limit: float | None = None,
              fork: bool = False) -> list[dict]:
    """Grade ``students`` with ``workers`` processes; ``on_result(result)`` after each student.
    ``failed_result(student, done, reason, tries)`` builds the result of a student whose grading kept dying
    or ran past ``limit`` seconds (wall clock, per student).
    ``ahead(slot)``: a warm-start interpreter started here for a worker slot's first process (or None).
    ``fork``: this is the command's own process: each slot's first grading process may be a fork of it, or, where
    ``grades_in_process``, the grading process is this one."""
    if grades_in_process(len(students), workers, fork):
        return _grade_here(root, assignment, students[0], env, on_result, ahead)
    queue, lock, results, live = deque(students), threading.Lock(), [], set()
    stop = threading.Event()
    # each slot's first grading process and its sandbox start here, before any thread: a fork then copies one
    # thread (a sandbox's imports run while that process starts)
    forking, handed, firsts = fork and can_fork(), [], {}
    try:
        for slot in range(max(1, workers)):
            zygote = ahead(slot) if ahead else None
            try:
                firsts[slot] = Worker(root, assignment, slot, env, zygote, fork=forking, release=handed)
            except BaseException:
                if zygote is not None and zygote not in handed:  # never handed over: nobody else stops it
                    zygote.discard()
                raise
    except BaseException:
        for worker in firsts.values():
            worker.kill()
        raise
    finally:
        for zygote in handed:
            zygote.released()
    live.update(firsts.values())

    def slot_loop(slot):
        worker = firsts.pop(slot)
        while not stop.is_set():
            with lock:
                if not queue:
                    break
                student = queue.popleft()
                more = len(queue) >= 1
            result, timed_out = None, False
            for _attempt in range(1 + RETRIES):
                if stop.is_set():
                    return
                if worker is None:  # a new interpreter (a fork now would copy this thread alone)
                    worker = Worker(root, assignment, slot, env)
                    with lock:
                        live.add(worker)
                result, done = worker.grade(student, more, limit)
                if result is not None:
                    break
                timed_out = worker.timed_out
                if timed_out:  # a stall: stopped, not retried (it would stall again)
                    worker.kill()
                    try:
                        worker.proc.wait(timeout=30)   # its slot lock goes with it
                        from attnkit.sandbox.fallback import reap_free_slots

                        reap_free_slots()              # ... and its kernels, in sessions of their own
                    except Exception:  # tidying: the sweep and the next kernel's kill_uid still run
                        pass
                reason = worker.death() if not stop.is_set() else "grading was interrupted"
                if timed_out:
                    reason = (f"stopped after {limit:.0f} s, the per-student time limit (CourseExecute.student_timeout)"
                              f"; notebooks already graded keep their scores")
                with lock:
                    live.discard(worker)
                worker.discard()
                worker = None
                if timed_out:
                    break
            if stop.is_set() and result is None:
                return
            if result is None:
                result = failed_result(student, done, reason, 1 if timed_out else 1 + RETRIES)
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


GRADER_THREADS = 1  # torch threads of a grading process


def _import_grader() -> None:
    """The hidden tests' modules, torch on one thread: the grading process computes small references while its
    kernel waits, and torch's idle pool threads spin on the CPU the kernels need (2 workers on 2 cores: 18% less
    wall time with one). What they make lives as long as this process: no collection runs while they load, and
    afterwards the collector's full passes skip them (each such pass took 50-75 ms, a few a student)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            import attnkit.grader.channel  # noqa: F401
        except Exception:  # imported again where it is needed: that import raises
            pass
        try:
            import torch

            torch.set_num_threads(GRADER_THREADS)
        except Exception:  # noqa: BLE001 (no torch: the import above said so)
            pass
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def main(argv=None) -> int:
    """A grading process: one ``[student id, more students follow]`` (JSON) per line on stdin;
    results on the pipe ``fd``."""
    import ctypes

    from attnkit.batch.student import _safe_grade

    root, assignment, fd = (argv or sys.argv[1:])[:3]
    try:  # stop grading promptly when the batch's process dies (the gradebook stays consistent: sqlite)
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    out = os.fdopen(int(fd), "w", buffering=1)
    from attnkit.sandbox.warm import adopt_handed

    _get_ready(root, assignment, adopt_handed)
    peaks = os.environ.get("ATTNKIT_PEAK_LOG")  # measurements: this process's peak memory after each student
    for line in sys.stdin:
        student, more = json.loads(line)

        def notebook_done(nb: dict) -> None:
            out.write("NB " + json.dumps(nb) + "\n")

        result = _safe_grade(root, assignment, student, on_notebook=notebook_done, prestart=more)
        if peaks:
            with open("/proc/self/status") as f, open(peaks, "a") as log:
                hwm = next((l.split()[1] for l in f if l.startswith("VmHWM:")), "0")
                log.write(f"{student} {hwm}\n")  # kB
        out.write("DONE " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    exit_now(main())
