"""Launch the course's IPython kernel under resource limits (the kernel side of the sandbox).

The host side (attnkit/sandbox.py) starts this module inside bubblewrap as an unprivileged
uid; here, before any notebook cell runs, the limits it passes are made hard (soft = hard, so
the notebook cannot raise them) and the guard's originals are saved.

* memory (RLIMIT_DATA): a notebook that asks for too much gets an error in its own cell;
* processes (RLIMIT_NPROC, of the sandbox's uid): a fork bomb stops at the limit;
* file size (RLIMIT_FSIZE): a 10 GB file fails with "File too large";
* CPU seconds (RLIMIT_CPU): per kernel process, on top of the per-cell timeout.
"""
import os
import resource
import sys

_LIMITS = (("ATTNKIT_KERNEL_MEMORY_MB", resource.RLIMIT_DATA, 1024 * 1024),
           ("ATTNKIT_KERNEL_NPROC", resource.RLIMIT_NPROC, 1),
           ("ATTNKIT_KERNEL_FSIZE_MB", resource.RLIMIT_FSIZE, 1024 * 1024),
           ("ATTNKIT_KERNEL_CPU_S", resource.RLIMIT_CPU, 1))


def _limit() -> None:
    sandboxed = bool(os.environ.get("ATTNKIT_KERNEL_NPROC"))
    for var, which, unit in _LIMITS:
        value = int(os.environ.get(var, "0") or 0)
        if value <= 0:
            continue
        limit = value * unit
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        # in the sandbox the hard limit too (the notebook cannot raise it); on a student's own
        # machine (./kit validate) only the soft memory limit, as a courtesy
        resource.setrlimit(which, (limit, limit if sandboxed else hard))


if __name__ == "__main__":
    _limit()
    # The guard's originals are saved here, before any notebook cell can patch them.
    import attnkit.guard  # noqa: F401
    from ipykernel import kernelapp

    # The TCP-without-encryption notice is noise on a grading machine's terminal.
    sys.argv.append("--IPKernelApp.log_level=ERROR")
    kernelapp.launch_new_instance()
