"""The grader's line to the kernel during autograding: hidden regions run here, their requests go there.

Grader process only. ``run_hidden_regions`` is called by CourseExecute (attnkit/sandbox.py) for a test
cell after the cell's visible part ran in the kernel. Each hidden region runs in a worker thread of this
process (attnkit/grader/hidden.py); each request it makes to the student's kernel becomes one
execute_request for the agent (attnkit/agent.py), sent from the executor's event loop, and its reply is
the agent's display output for that request alone. Everything else the kernel sends meanwhile (the
student's prints, displays) is read and dropped.
"""
from __future__ import annotations

import asyncio
import time
from queue import Empty

from nbformat import NotebookNode

from attnkit.grader import hidden
from attnkit.grader.remote import REPLY_MIME, Kernel, KernelDied, KernelGone, MAX_REPLY, RequestTimeout

AGENT_CALL = "__import__('attnkit.agent').agent.serve({!r})"


async def _request(executor, kernel: Kernel, text: str, deadline: float) -> str:
    kc, km = executor.kc, executor.km
    msg_id = kc.execute(AGENT_CALL.format(text), silent=False, store_history=False, allow_stdin=True,
                        stop_on_error=False)
    payload, idle = None, False
    while not idle:
        left = deadline - time.monotonic()
        if left <= 0:
            await km.interrupt_kernel()
            await _drain(kc, msg_id, 5)
            raise RequestTimeout(f"stopped after {executor.timeout} s: the code this test calls did not finish "
                                 "(an infinite loop?)")
        try:  # a callback: the kernel asks for a test function's value on arguments it sends
            ask = await kc.get_stdin_msg(timeout=0)
        except Empty:
            ask = None
        if ask is not None:
            if ask.get("parent_header", {}).get("msg_id") == msg_id and ask["msg_type"] == "input_request":
                prompt = ask.get("content", {}).get("prompt", "")
                kc.input(kernel.answer_callback(prompt if isinstance(prompt, str) else ""))
            continue
        try:
            msg = await kc.get_iopub_msg(timeout=min(0.05, left))
        except Empty:
            if not await km.is_alive():
                raise KernelDied("the Python kernel died while a hidden test was calling your code") from None
            continue
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg.get("content", {})
        if kind == "display_data" and REPLY_MIME in content.get("data", {}):
            data = content["data"][REPLY_MIME]
            payload = data if isinstance(data, str) and len(data) <= MAX_REPLY else ""
        elif kind == "status" and content.get("execution_state") == "idle":
            idle = True
    await _shell_reply(kc, msg_id, max(1.0, deadline - time.monotonic()))
    if payload is None:
        raise KernelGone("the kernel gave no answer to a hidden test's request")
    return payload


async def _shell_reply(kc, msg_id, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            msg = await kc.get_shell_msg(timeout=max(0.05, end - time.monotonic()))
        except Empty:
            return
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            return


async def _drain(kc, msg_id, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            msg = await kc.get_iopub_msg(timeout=max(0.05, end - time.monotonic()))
        except Empty:
            return
        if (msg.get("parent_header", {}).get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"].get("execution_state") == "idle"):
            await _shell_reply(kc, msg_id, 1)
            return


async def run_hidden_regions(executor, cell, sources, folder) -> str | None:
    """Run each hidden region (grader side) against ``executor``'s kernel; append its outputs to the cell.

    Returns None, or "died" when the kernel died meanwhile (the caller restarts it)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + float(executor.timeout or 60)

    def send(text: str) -> str:
        return asyncio.run_coroutine_threadsafe(_request(executor, kernel, text, deadline), loop).result()

    kernel = Kernel(send)
    for source in sources:
        printed, error = await asyncio.to_thread(hidden.run, source, kernel, folder)
        if printed:
            cell.outputs.append(NotebookNode(output_type="stream", name="stdout", text=printed))
        if error is not None:
            cause = error.pop("cause", None)
            cell.outputs.append(NotebookNode(output_type="error", traceback=[], **error))
            if cause == "died":
                return "died"
            return None
    return None
