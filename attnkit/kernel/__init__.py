"""Kernel side: everything in this package runs inside the student's sandboxed kernel.

It is bound read-only into the sandbox (attnkit/sandbox/bwrap.py, KERNEL_MODULES) and students may read it:
it holds no hidden test, no answer and no reference. ``__main__`` starts the kernel under its limits
(and the warm-start zygote); ``agent`` answers the grader's requests, which travel on ``line`` (a Unix
socket per test cell); ``wire`` is the data-only format both sides speak. The grader side is attnkit/grader/; the two meet only through wire messages.
"""
