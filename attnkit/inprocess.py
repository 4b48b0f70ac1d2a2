"""An agent in this process, for benchmarks and unit tests: the grader's Kernel (grader/remote.py) wired to
the kernel's agent (kernel/agent.py) with no sandbox and no kernel between them. Neither side imports the
other; this module joins them, and nothing of the grading path imports it."""
from __future__ import annotations

import json

from attnkit.grader.remote import Kernel
from attnkit.kernel import agent


def in_process(namespace: dict, sources=None) -> Kernel:
    """A Kernel whose agent runs in this process over ``namespace`` (benchmarks, unit tests): the same
    requests and the same format, without a sandbox. ``sources``: the code that made ``namespace`` (as a
    notebook's code cells), for the checks that read the student's source."""
    def send(text):
        agent._ask = kernel.answer_callback
        try:
            reply = {"ok": True, "value": agent.handle(json.loads(text), namespace)}
        except BaseException as exc:  # noqa: B902 (what the agent does in a kernel)
            reply = {"ok": False, "error": agent._error(exc)}
        finally:
            agent._ask = None
        return json.dumps(reply, separators=(",", ":"), allow_nan=False)

    kernel = Kernel(send)
    kernel.sources = list(sources) if sources is not None else None
    return kernel
