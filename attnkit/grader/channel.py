"""The grader's line to the kernel during autograding: hidden regions run here, their requests go there.

Grader process only. ``run_hidden_regions`` is called by CourseExecute (attnkit/sandbox.py) for a test
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
from attnkit.grader.remote import REPLY_MIME, Kernel, KernelDied, KernelGone, MAX_REPLY, RequestTimeout

PROFILE = os.environ.get("ATTNKIT_PROFILE_HIDDEN")   # a file: one line per hidden region (seconds, requests)
AGENT_CALL = "__import__('attnkit.kernel.agent').kernel.agent.serve({!r})"
LISTEN = "__import__('attnkit.kernel.agent').kernel.agent.listen()"
COMM_TARGET = "attnkit.kernel.agent"   # attnkit.kernel.agent.COMM_TARGET


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
    payload, idle = None, False
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
        if kind == "display_data" and REPLY_MIME in content.get("data", {}):
            data = content["data"][REPLY_MIME]
            payload = data if isinstance(data, str) and len(data) <= MAX_REPLY else ""
        elif kind == "status" and content.get("execution_state") == "idle":
            idle = True
    await _shell_reply(kc, msg_id, max(1.0, deadline - time.monotonic()))
    if code is not None:
        return ""
    if payload is None:
        raise KernelGone("the kernel gave no answer to a hidden test's request")
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
    while True:
        left = await _time_left(executor, msg_id, deadline)
        try:
            reply = await kc.get_iopub_msg(timeout=min(1.0, left))
        except Empty:
            await _alive(km)
            continue
        if reply.get("parent_header", {}).get("msg_id") == msg_id and reply["msg_type"] == "comm_msg":
            data = reply.get("content", {}).get("data", {})
            payload = data.get("reply") if isinstance(data, dict) else None
            if not isinstance(payload, str) or len(payload) > MAX_REPLY:
                raise KernelGone("the kernel's reply is not in the format")
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


def kernel_meter(executor) -> KernelMeter | CgroupMeter:
    """The meter of ``executor``'s kernel: its cgroup (every process counted), else its sandbox uid's
    processes, else its process tree."""
    found = CgroupMeter.of(getattr(executor.km, "_cgroup", None))
    if found is not None:
        return found
    uid = getattr(executor.km, "_uid", None)
    if uid is not None:
        return KernelMeter(uid=uid)
    return KernelMeter(root_pid=executor.km.provisioner.process.pid)


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
    started = time.perf_counter()
    for source in sources:
        printed, error = await asyncio.to_thread(hidden.run, source, kernel, folder, {"meter": kernel_meter(executor)})
        if PROFILE:
            with open(PROFILE, "a") as log:
                print(f"{cell.metadata.get('nbgrader', {}).get('grade_id')} {time.perf_counter() - started:.3f} "
                      f"requests={kernel.requests} callbacks={kernel.callbacks}", file=log)
        if printed:
            cell.outputs.append(NotebookNode(output_type="stream", name="stdout", text=printed))
        if error is not None:
            cause = error.pop("cause", None)
            cell.outputs.append(NotebookNode(output_type="error", traceback=[], **error))
            if cause == "died":
                return "died"
            return None
    return None
