"""The kernel's second syscall filter: threads, but no new process (kernel side; bound into the sandbox).

Loaded by attnkit/kernel/__main__.py before any cell runs where no cgroup of the kernel's own counts its
processes (the grader's meters then read /proc, which loses what an ended process cost). A thread's CPU time
and memory are its process's, so threads stay; fork, vfork and clone without CLONE_THREAD fail with EPERM.
clone3 answers ENOSYS (its flags are in memory a filter cannot read), so glibc's threads fall back to clone.
A filter cannot be removed: nothing a cell does afterwards lifts it.
"""
import errno

CLONE_THREAD = 0x00010000
NO_PROCESSES = (
    ("fork", "EPERM", "a new process: no cgroup counts what it costs once it ends"),
    ("vfork", "EPERM", "the same"),
    ("clone", "EPERM", "without CLONE_THREAD (a process, not a thread): the same"),
    ("clone3", "ENOSYS", "its flags are in memory a filter cannot read"),
)


def load_no_processes() -> None:
    """No process may be started from now on by this process or its threads. Raises where libseccomp is
    missing or the kernel refuses the filter."""
    import pyseccomp as sc

    filt = sc.SyscallFilter(defaction=sc.ALLOW)
    for call, err, _ in NO_PROCESSES:
        action = sc.ERRNO(getattr(errno, err))
        if call == "clone":
            filt.add_rule(action, call, sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
        else:
            filt.add_rule(action, call)
    filt.load()
