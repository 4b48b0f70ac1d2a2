"""A course kernel started outside nbclient, for the benchmarks that time the grader's requests
(small_costs.py, scaling_verdict.py --where grader): the executor fields the grader's channel reads."""
from __future__ import annotations

import asyncio
import threading


def start(workdir: str):
    """(executor, run): a course kernel (the grading sandbox) in ``workdir``, ready; ``run(coro)`` runs
    a coroutine on the kernel's own event loop thread and returns its result."""
    from attnkit import sandbox

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    class Executor:  # what the channel reads of nbclient's executor
        timeout = 600

    ex = Executor()
    ex.loop = loop
    ex.km = sandbox.CourseKernelManager()
    run(ex.km.start_kernel(cwd=workdir))
    ex.kc = ex.km.client()
    ex.kc.start_channels()
    run(ex.kc.wait_for_ready(timeout=60))
    return ex, run


def stop(ex, run) -> None:
    ex.kc.stop_channels()
    run(ex.km.shutdown_kernel(now=True))
