"""Launch the course's IPython kernel under a data-size limit.

A notebook that asks for more memory than the limit gets a MemoryError/RuntimeError in
its own cell instead of taking the grading machine (and the other workers) down.
"""
import os
import resource


def _limit_memory() -> None:
    mb = int(os.environ.get("ATTNKIT_KERNEL_MEMORY_MB", "0") or 0)
    if mb > 0:
        limit = mb * 1024 * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


if __name__ == "__main__":
    _limit_memory()
    import sys

    from ipykernel import kernelapp

    # The TCP-without-encryption notice is noise on a grading machine's terminal.
    sys.argv.append("--IPKernelApp.log_level=ERROR")
    kernelapp.launch_new_instance()
