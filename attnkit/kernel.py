"""Launch the course's IPython kernel under a data-size limit, with the course's secrets hidden.

* A notebook that asks for more memory than the limit gets an error in its own cell instead
  of taking the grading machine (and the other workers) down.
* Where the grader may create a mount namespace (as root on Linux), the kernel gets one in
  which the course's source/, submitted/, autograded/, feedback/, reports/ and gradebook are
  covered by empty mounts: code under test cannot read the instructor's notebooks or other
  students' work, nor write its own score. Elsewhere this step is skipped (best effort).
"""
import ctypes
import os
import resource
import sys

CLONE_NEWNS, MS_RDONLY, MS_BIND, MS_REC, MS_PRIVATE = 0x00020000, 1, 4096, 16384, 1 << 18


def _limit_memory() -> None:
    mb = int(os.environ.get("ATTNKIT_KERNEL_MEMORY_MB", "0") or 0)
    if mb > 0:
        limit = mb * 1024 * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def hide_paths(paths) -> list:
    """Cover each existing folder with an empty read-only tmpfs and each file with /dev/null,
    in a private mount namespace. Returns the paths hidden ([] where not permitted)."""
    paths = [p for p in paths if p and os.path.exists(p)]
    if not paths or not sys.platform.startswith("linux"):
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return []
    hidden = []
    for path in paths:
        p = os.fsencode(path)
        if os.path.isdir(path):
            ok = libc.mount(b"tmpfs", p, b"tmpfs", MS_RDONLY, b"size=16k") == 0
        else:
            ok = libc.mount(b"/dev/null", p, None, MS_BIND, None) == 0
        if ok:
            hidden.append(path)
    return hidden


if __name__ == "__main__":
    _limit_memory()
    hide_paths([p for p in os.environ.get("ATTNKIT_KERNEL_HIDE", "").split(os.pathsep) if p])
    # The guard's originals are saved here, before any notebook cell can patch them.
    import attnkit.guard  # noqa: F401
    from ipykernel import kernelapp

    # The TCP-without-encryption notice is noise on a grading machine's terminal.
    sys.argv.append("--IPKernelApp.log_level=ERROR")
    kernelapp.launch_new_instance()
