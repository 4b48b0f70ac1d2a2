"""The grader's line to the kernel during autograding: hidden regions run here, their requests go there.

Grader process only. ``run_hidden_regions`` is called by CourseExecute (attnkit/preprocessors/execute.py) for a test
cell after the cell's visible part ran in the kernel. Each hidden region runs in a worker thread of this
process (attnkit/grader/hidden.py); each request it makes to the student's kernel becomes one
execute_request for the agent (attnkit/kernel/agent.py), sent from the executor's event loop, and its reply is
the agent's display output for that request alone. Everything else the kernel sends meanwhile (the
student's prints, displays) is read and dropped.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from queue import Empty

import zmq
import zmq.asyncio
from nbformat import NotebookNode

from attnkit.grader import hidden
from attnkit.grader.meter import CgroupMeter, KernelMeter
from attnkit.grader.remote import BadReply, Kernel, KernelDied, KernelGone, RequestTimeout
from attnkit.kernel.wire import COMM_TARGET, MAX_REPLY, REPLY_MIME
from attnkit.authoring.notebooks import is_test_cell

PROFILE = os.environ.get("ATTNKIT_PROFILE_HIDDEN")   # a file: one line per hidden region (seconds, requests)
AGENT_CALL = "__import__('attnkit.kernel.agent').kernel.agent.serve({!r})"
LISTEN = "__import__('attnkit.kernel.agent').kernel.agent.listen()"


async def _time_left(executor, msg_id, deadline) -> float:
    """Seconds left for request ``msg_id``; past the deadline the kernel is interrupted and RequestTimeout raised."""
    left = deadline - time.monotonic()
    if left <= 0:
        await executor.km.interrupt_kernel()
        await _drain(executor.kc, msg_id, 5)
        raise RequestTimeout(f"stopped after {executor.timeout} s: the code this test calls did not finish "
                             "(an infinite loop?)")
    return left


async def _alive(km) -> None:
    if not await km.is_alive():
        raise KernelDied("the Python kernel died while a hidden test was calling your code")


async def _request(executor, kernel: Kernel | None, text: str | None, deadline: float, code: str | None = None) -> str:
    """One request as an execute_request of AGENT_CALL (``code`` instead: run that); the reply is the
    agent's display output. The kernel may call back (kernel.answer_callback) over the stdin channel."""
    kc, km = executor.kc, executor.km
    msg_id = kc.execute(code or AGENT_CALL.format(text), silent=False, store_history=False, allow_stdin=True,
                        stop_on_error=False)
    payload, idle, replies = None, False, 0
    poller = zmq.asyncio.Poller()  # either socket: an input request (a callback) or an output
    poller.register(kc.stdin_channel.socket, zmq.POLLIN)
    poller.register(kc.iopub_channel.socket, zmq.POLLIN)
    while not idle:
        left = await _time_left(executor, msg_id, deadline)
        ready = dict(await poller.poll(int(min(1.0, left) * 1000)))
        if kc.stdin_channel.socket in ready:  # a callback: a test function's value on arguments the kernel sends
            ask = await kc.get_stdin_msg(timeout=0)
            if kernel is not None and ask.get("parent_header", {}).get("msg_id") == msg_id \
                    and ask["msg_type"] == "input_request":
                prompt = ask.get("content", {}).get("prompt", "")
                kc.input(kernel.answer_callback(prompt if isinstance(prompt, str) else ""))
            continue
        if kc.iopub_channel.socket not in ready:
            await _alive(km)
            continue
        msg = await kc.get_iopub_msg(timeout=0)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg.get("content", {})
        if kind == "display_data" and isinstance(content.get("data"), dict) and REPLY_MIME in content["data"]:
            replies += 1  # one request, one reply: a second one (forged by the student's code) is kept by no one
            data = content["data"][REPLY_MIME]
            payload = data if replies == 1 and isinstance(data, str) and len(data) <= MAX_REPLY else ""
        elif kind == "status" and content.get("execution_state") == "idle":
            idle = True
    await _shell_reply(kc, msg_id, max(1.0, deadline - time.monotonic()))
    if code is not None:
        return ""
    if payload is None:
        raise KernelGone("the kernel gave no answer to a hidden test's request")
    if replies > 1:
        raise BadReply(f"{replies} replies to one request")
    return payload


async def _comm_request(executor, text: str, deadline: float) -> str:
    """One request as a comm message to the agent (opened on first use in each kernel)."""
    kc, km = executor.kc, executor.km
    opened = getattr(executor, "_attnkit_comm", None)
    if opened is None or opened[0] is not kc:  # a new kernel (or a restarted one): open its comm first
        await _request(executor, None, None, deadline, code=LISTEN)
        comm_id = uuid.uuid4().hex
        kc.shell_channel.send(kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": COMM_TARGET, "data": {}}))
        executor._attnkit_comm = opened = (kc, comm_id)
    msg = kc.session.msg("comm_msg", {"comm_id": opened[1], "data": {"request": text}})
    kc.shell_channel.send(msg)
    msg_id = msg["header"]["msg_id"]
    payload, replies = None, 0
    while True:  # until the kernel is idle after this request: one reply, and only one, must have come
        left = await _time_left(executor, msg_id, deadline)
        try:
            reply = await kc.get_iopub_msg(timeout=min(1.0, left))
        except Empty:
            await _alive(km)
            continue
        if reply.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if reply["msg_type"] == "comm_msg":
            replies += 1
            data = reply.get("content", {}).get("data", {})
            payload = data.get("reply") if isinstance(data, dict) and replies == 1 else payload
            if not isinstance(payload, str) or len(payload) > MAX_REPLY:
                raise KernelGone("the kernel's reply is not in the format")
        elif reply["msg_type"] == "status" and reply.get("content", {}).get("execution_state") == "idle":
            if payload is None:
                raise KernelGone("the kernel gave no answer to a hidden test's request")
            if replies > 1:
                raise BadReply(f"{replies} replies to one request")
            return payload


async def _until(get, msg_id, timeout, done=lambda msg: True) -> bool:
    """Read messages with ``get`` until one answering request ``msg_id`` satisfies ``done`` (True) or the
    time is up (False); the others are dropped."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            msg = await get(timeout=max(0.05, end - time.monotonic()))
        except Empty:
            return False
        if msg.get("parent_header", {}).get("msg_id") == msg_id and done(msg):
            return True
    return False


async def _shell_reply(kc, msg_id, timeout):
    await _until(kc.get_shell_msg, msg_id, timeout)


async def _drain(kc, msg_id, timeout):
    """After an interrupt: wait until the kernel is idle again, then for the request's reply."""
    idle = lambda msg: msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle"
    if await _until(kc.get_iopub_msg, msg_id, timeout, idle):
        await _until(kc.get_shell_msg, msg_id, 1)


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
    found = None if proc else CgroupMeter.of(getattr(km, "_cgroup", None))
    if found is not None:
        return found
    sealed = km.sealed_filters() if proc and hasattr(km, "sealed_filters") else 0
    uid = getattr(km, "_uid", None)
    if uid is not None:
        return KernelMeter(uid=uid, sealed_filters=sealed)
    return KernelMeter(root_pid=km.provisioner.process.pid, sealed_filters=sealed)


async def run_hidden_regions(executor, cell, sources, folder) -> str | None:
    """Run each hidden region (grader side) against ``executor``'s kernel; append its outputs to the cell.

    Returns None, or "died" when the kernel died meanwhile (the caller restarts it)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + float(executor.timeout or 60)

    def send(text: str) -> str:
        # Requests go as comm messages (fast); once a test has handed the kernel a function of its own,
        # calls go as executions, whose stdin channel carries the callbacks.
        calls = kernel._callbacks and ('"op":"call"' in text[:200] or '"op":"noop"' in text[:200])
        request = _request(executor, kernel, text, deadline) if calls else _comm_request(executor, text, deadline)
        return asyncio.run_coroutine_threadsafe(request, loop).result()

    kernel = Kernel(send)
    kernel.sources = student_sources(executor.nb, cell)
    started = time.perf_counter()
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
            if cause == "died":
                return "died"
            return None
    return None
