"""The grader's line to the kernel during autograding: hidden regions run here, their requests go there.

Grader process only. ``run_hidden_regions`` is called by CourseExecute (attnkit/preprocessors/execute.py) for a test
cell after the cell's visible part ran in the kernel. Each hidden region runs in a worker thread of this
process (attnkit/grader/hidden.py). Its requests go over a ``Line``: a Unix socket this process listens on,
private to the kernel's uid, which one execution in the kernel (wire.SESSION_CALL) connects to and serves,
a frame per request, until the cell's regions are done. Everything else the kernel sends meanwhile (the
student's prints, displays) is read and dropped.
"""
from __future__ import annotations

import asyncio
import os
import select
import shutil
import socket
import tempfile
import time
import uuid
from queue import Empty

from nbformat import NotebookNode

from attnkit.grader import hidden
from attnkit.grader.meter import CgroupMeter, KernelMeter
from attnkit.grader.remote import BadReply, Kernel, KernelDied, KernelGone, RequestTimeout
from attnkit.kernel import wire
from attnkit.kernel.wire import MAX_REPLY
from attnkit.authoring.notebooks import is_test_cell

PROFILE = os.environ.get("ATTNKIT_PROFILE_HIDDEN")   # a file: one line per hidden region (seconds, requests)
INTERRUPT_WAIT = 5.0   # seconds a kernel gets to stop after a timeout's interrupt
CLOSE_WAIT = 10.0      # seconds, at most, to learn whether a kernel that closed the line died


async def execute(executor, code: str, deadline: float) -> str:
    """Run ``code`` in the kernel as one execution (its outputs read and dropped) until the kernel is idle
    again: "idle", "died", or "timeout" once ``deadline`` (time.monotonic()) has passed."""
    kc, km = executor.kc, executor.km
    msg_id = kc.execute(code, silent=False, store_history=False, allow_stdin=False, stop_on_error=False)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        try:
            msg = await kc.get_iopub_msg(timeout=min(1.0, left))
        except Empty:
            if not await km.is_alive():
                return "died"
            continue
        if msg.get("parent_header", {}).get("msg_id") == msg_id and msg["msg_type"] == "status" \
                and msg.get("content", {}).get("execution_state") == "idle":
            await _shell_reply(kc, msg_id, max(1.0, min(5.0, deadline - time.monotonic())))
            return "idle"


class Line:
    """The grader's end of one test cell's session with the kernel's agent (attnkit/kernel/line.py ``session``).

    ``send(text)`` is a Kernel's transport (grader/remote.py): a request frame out, then frames in until its
    reply, answering every callback frame on the way with ``answer`` (the Kernel's answer_callback). Called
    from a hidden region's thread, never from ``loop`` (the executor's event loop, which runs the session's
    execution and the kernel's interrupt). The socket is made in the kernel's run folder (the sandbox's, root's
    and not writable by the kernel's uid) and opened to that uid only; it is unlinked once the agent connects.
    Whatever comes over it is the student's to forge: frames are checked (kind, size: wire.MAX_REPLY), a
    second reply to one request breaks the line, and nothing is waited on past the cell's deadline."""

    def __init__(self, executor, loop, deadline: float):
        self.executor, self.loop, self.deadline = executor, loop, deadline
        self.answer = lambda prompt: '{"ok":false,"error":"no callback"}'
        self.sock = self.done = self._folder = None
        self.broken: str | None = None
        self.gone: KernelGone | None = None  # how the line ended, where the kernel's end closed it

    # -- the session
    def _open(self) -> None:
        km = self.executor.km
        run_dir = getattr(km, "_run_dir", None)
        folder = run_dir if run_dir and os.path.isdir(run_dir) else None
        if folder is None:  # no sandbox folder (an unsandboxed kernel): one of this process's own
            folder = self._folder = tempfile.mkdtemp(prefix="attnkit-line-")
        path = os.path.join(folder, f"l{uuid.uuid4().hex[:8]}")  # short: shorter than the kernel's zmq sockets there
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            os.chmod(path, 0o600)
            uid = getattr(km, "_uid", None)
            if uid is not None and os.geteuid() == 0:
                os.chown(path, uid, uid)
            listener.listen(1)
            self.done = asyncio.run_coroutine_threadsafe(
                execute(self.executor, wire.SESSION_CALL.format(path), self.deadline), self.loop)
            while True:  # the agent connects at once; a kernel that never does ends its execution (or dies)
                if self.done.done():
                    self._ended()
                if time.monotonic() > self.deadline:
                    self._timeout()
                if select.select([listener], [], [], 0.1)[0]:
                    self.sock, _ = listener.accept()
                    break
        finally:
            listener.close()
            try:
                os.unlink(path)
            except OSError:
                pass

    def _closed(self):
        """The agent's end closed (its execution ended, or the kernel died): say which, given the time the
        execution takes to tell (a dead kernel is found at its next liveness check: seconds on a loaded host)."""
        try:
            self.done.result(max(0.5, min(CLOSE_WAIT, self.deadline - time.monotonic())))
        except Exception:  # noqa: BLE001 (not over yet: the kernel went on without its agent)
            pass
        if self.done.done():
            self._ended()
        raise self._gone(KernelGone("the kernel closed the grading line"))

    def _ended(self):
        outcome = self.done.result()
        if outcome == "died":
            during = "a hidden test was calling your code"
            km = self.executor.km
            raise self._gone(KernelDied(km.death_message(during) if hasattr(km, "death_message") else
                                        f"the Python kernel died while {during}"))
        if outcome == "timeout":
            self._timeout()
        raise self._gone(KernelGone("the kernel closed the grading line (was the kit's agent changed in your "
                                    "notebook?)"))

    def _gone(self, exc: KernelGone) -> KernelGone:
        """The line is over: this and every later request of the cell fail so, at once."""
        self.gone = exc
        return exc

    def died(self) -> bool:
        """Did the session's execution end with the kernel dead (after the last reply, too)?"""
        try:
            return self.done is not None and self.done.done() and self.done.result() == "died"
        except Exception:  # noqa: BLE001 (an execution that raised: not a death this knows of)
            return False

    def _timeout(self):
        try:
            asyncio.run_coroutine_threadsafe(self.executor.km.interrupt_kernel(), self.loop).result(10)
        except Exception:  # noqa: BLE001 (a dead kernel: the next cell finds out)
            pass
        self.hang_up()
        if self.done is not None:
            try:
                self.done.result(INTERRUPT_WAIT)
            except Exception:  # noqa: BLE001 (still busy: the next cell's own timeout applies)
                pass
        self.broken = self.broken or "timeout"
        raise RequestTimeout(f"stopped after {self.executor.timeout} s: the code this test calls did not finish "
                             "(an infinite loop?)")

    def hang_up(self) -> None:
        """End the session: the agent sees the socket close and its execution returns."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    async def finished(self) -> None:
        """Wait (on the loop) until the session's execution is over, at most until the deadline."""
        self.hang_up()
        if self.done is not None:
            try:
                await asyncio.wait_for(asyncio.wrap_future(self.done),
                                       max(INTERRUPT_WAIT, self.deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 (a kernel still busy or dead: the next cell finds out)
                pass

    # -- frames
    def _break(self, why: str):
        self.broken = why
        self.hang_up()
        raise BadReply(why)

    def _recv_exact(self, size: int) -> bytes:
        buf = bytearray(size)
        view, got = memoryview(buf), 0
        while got < size:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self._timeout()
            if not select.select([self.sock], [], [], min(1.0, left))[0]:
                if self.done.done():
                    self._ended()
                continue
            n = self.sock.recv_into(view[got:])
            if not n:
                self._closed()
            got += n
        return bytes(buf)

    def _recv(self) -> tuple[bytes, str]:
        kind, size = wire.FRAME.unpack(self._recv_exact(wire.FRAME.size))
        if kind not in (wire.REPLY, wire.CALLBACK):
            self._break("a frame not in the protocol")
        if size > MAX_REPLY:
            self._break(f"a message over {MAX_REPLY} bytes")
        return kind, self._recv_exact(size).decode("utf-8", "replace")

    def _pending(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])

    def _unasked(self) -> bool:
        """With no request out, the socket is readable. A frame that nothing asked for (a second reply to the last
        request) breaks the line; else the agent's end closed (the kernel died, killed from outside as an
        out-of-memory kill in a shared container is, or its execution ended): True, for the caller to say which."""
        try:
            ahead = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, TimeoutError):  # (nothing after all)
            return False
        except ConnectionError:  # reset by a dying peer
            ahead = b""
        if ahead:
            self._break("2 replies to one request")
        return True

    def send(self, text: str) -> str:
        if self.broken:
            raise BadReply(self.broken) if self.broken != "timeout" else RequestTimeout("the line timed out")
        if self.gone is not None:
            raise type(self.gone)(*self.gone.args)
        if self.sock is None:
            self._open()
        elif self._pending() and self._unasked():  # the line closed since the last reply
            self._closed()
        try:
            self.sock.sendall(wire.frame(wire.REQUEST, text))
            while True:
                kind, body = self._recv()
                if kind == wire.REPLY:
                    if self._pending():
                        self._unasked()  # a closed line is found by the next request: this reply stands
                    return body
                self.sock.sendall(wire.frame(wire.ANSWER, self.answer(body)))
        except OSError:  # the agent's end closed while a frame went out
            self._closed()


async def _shell_reply(kc, msg_id, timeout: float) -> None:
    """Read shell messages until the reply to ``msg_id`` (or the time is up); the others are dropped."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            msg = await kc.get_shell_msg(timeout=max(0.05, end - time.monotonic()))
        except Empty:
            return
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            return


def student_sources(nb, cell) -> list[str]:
    """The code cells of the submitted notebook before ``cell``, the course's test cells left out: the
    student's source as the grader holds it (checks read it here, never through the kernel)."""
    out = []
    for c in nb.cells:
        if c is cell:
            break
        if c.cell_type == "code" and not is_test_cell(c):
            out.append(c.source if isinstance(c.source, str) else "".join(c.source))
    return out


def kernel_meter(executor) -> KernelMeter | CgroupMeter:
    """The meter of ``executor``'s kernel: its cgroup (every process counted), else its sandbox uid's
    processes, else its process tree."""
    km = executor.km
    proc = getattr(km, "meters_proc", lambda: True)()
    uid = getattr(km, "_uid", None)
    own_uid = uid is not None and uid != os.getuid()  # a uid of the kernel's own: root's sandbox slots
    # (the uid meter never sees bubblewrap's processes, which are root's: no launchers to allow there)
    launchers = km.launchers() if hasattr(km, "launchers") and not (proc and own_uid) else frozenset()
    found = None if proc else CgroupMeter.of(getattr(km, "_cgroup", None), launchers)
    if found is not None:
        return found
    sealed = km.sealed_filters() if proc and hasattr(km, "sealed_filters") else 0
    if own_uid:
        return KernelMeter(uid=uid, sealed_filters=sealed)
    # an unprivileged grader's kernel keeps the grader's uid (in bubblewrap's user namespace), which this process,
    # the batch, the other workers and every other process of that user share: the kernel's process tree instead
    return KernelMeter(root_pid=km.provisioner.process.pid, sealed_filters=sealed, launchers=launchers)


async def run_hidden_regions(executor, cell, sources, folder) -> str | None:
    """Run each hidden region (grader side) against ``executor``'s kernel; append its outputs to the cell.

    Returns None, or "died" when the kernel died meanwhile (the caller restarts it)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + float(executor.timeout or 60)
    line = Line(executor, loop, deadline)
    kernel = Kernel(line.send)
    line.answer = kernel.answer_callback
    kernel.sources = student_sources(executor.nb, cell)
    started = time.perf_counter()
    outcome = None
    try:
        for source in sources:
            printed, error = await asyncio.to_thread(hidden.run, source, kernel, folder,
                                                   {"meter": kernel_meter(executor),
                                                    "diagnoses": bool(getattr(executor, "diagnoses", True))},
                                                   getattr(executor, "grader_file", None))
            if PROFILE:
                with open(PROFILE, "a") as log:
                    print(f"{cell.metadata.get('nbgrader', {}).get('grade_id')} {time.perf_counter() - started:.3f} "
                          f"requests={kernel.requests} callbacks={kernel.callbacks} waited={kernel.waited:.3f} "
                          f"growth={kernel.growth:.3f}", file=log)
            if printed:
                cell.outputs.append(NotebookNode(output_type="stream", name="stdout", text=printed))
            if error is not None:
                cause = error.pop("cause", None)
                cell.outputs.append(NotebookNode(output_type="error", traceback=[], **error))
                outcome = "died" if cause == "died" else None
                break
    finally:
        await line.finished()   # the session's execution over: the kernel is idle for the next cell
    # a kernel that died after its last reply: restarted now, not found dead by the next cell (which it would fail)
    return "died" if outcome == "died" or line.died() else None
