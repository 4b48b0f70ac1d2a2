"""The syscall filter on every process of a student's kernel (host side; never bound into the sandbox).

Modelled on Docker's default seccomp profile, which the containers of Gradescope, PrairieLearn and
Otter run under: everything is allowed except the calls in ``DENIED``, which fail with their errno
(EPERM: a library that probes a call gets an error, not a kill). Calls of another architecture's
ABI (32-bit ``int 0x80``, x32) kill the process: libseccomp's filter only admits the native one.

bubblewrap loads the compiled program (``bwrap --seccomp FD``, see sandbox.bwrap_argv); the setpriv
fallback loads it in its launcher before exec (``launcher``). It is compiled once per grading process.
"""
from __future__ import annotations

import atexit
import errno
import os
import shutil
import sys
import tempfile
from functools import lru_cache

# namespace flags of clone(2)'s first argument (CLONE_NEWTIME, 0x80, is the exit signal's byte there:
# that namespace can only be made through unshare and clone3, both refused)
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
CLONE_NAMESPACES = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET)
PER_LINUX = 0  # personality(2)'s standard domain

# (call, errno, reason): what a kernel's processes may not do. The one exception to "denied whatever its
# arguments" is in _rules(): clone only with a namespace flag, personality other than the standard value.
DENIED = (
    ("unshare", "EPERM", "new namespaces: a user namespace gives every capability inside it, the way into most container escapes"),
    ("setns", "EPERM", "joining another namespace"),
    ("clone", "EPERM", "only with a namespace flag (CLONE_NEWUSER, CLONE_NEWNS, ...): the same as unshare; threads and fork stay"),
    ("clone3", "ENOSYS", "its flags are in memory a filter cannot read: ENOSYS makes glibc fall back to clone, whose flags it can"),
    ("mount", "EPERM", "mounting filesystems (cgroupfs, tmpfs, ...)"),
    ("umount2", "EPERM", "unmounting what hides the host's files"),
    ("pivot_root", "EPERM", "changing the root filesystem"),
    ("fsopen", "EPERM", "the new mount API: a filesystem context"),
    ("fsconfig", "EPERM", "the new mount API: configuring it"),
    ("fsmount", "EPERM", "the new mount API: a mount from it"),
    ("fspick", "EPERM", "the new mount API: reconfiguring a mount"),
    ("move_mount", "EPERM", "the new mount API: attaching a mount"),
    ("open_tree", "EPERM", "the new mount API: cloning a mount tree"),
    ("mount_setattr", "EPERM", "the new mount API: changing a mount's flags"),
    ("bpf", "EPERM", "loading BPF programs into the kernel"),
    ("perf_event_open", "EPERM", "performance counters: reveal kernel addresses, a frequent exploit target"),
    ("userfaultfd", "EPERM", "page faults handled in user space: the usual way to win a kernel race"),
    ("io_uring_setup", "EPERM", "io_uring: most kernel exploits submitted to Google's kCTF used it (Docker denies it since 2023)"),
    ("io_uring_enter", "EPERM", "io_uring: submitting work"),
    ("io_uring_register", "EPERM", "io_uring: registering buffers and files"),
    ("add_key", "EPERM", "the kernel keyring is not namespaced"),
    ("request_key", "EPERM", "the kernel keyring is not namespaced"),
    ("keyctl", "EPERM", "the kernel keyring is not namespaced"),
    ("ptrace", "EPERM", "tracing a process: reading and changing its memory and registers"),
    ("process_vm_readv", "EPERM", "reading another process's memory"),
    ("process_vm_writev", "EPERM", "writing another process's memory"),
    ("kexec_load", "EPERM", "loading a new kernel"),
    ("kexec_file_load", "EPERM", "loading a new kernel"),
    ("init_module", "EPERM", "loading a kernel module"),
    ("finit_module", "EPERM", "loading a kernel module"),
    ("delete_module", "EPERM", "unloading a kernel module"),
    ("reboot", "EPERM", "rebooting the machine"),
    ("swapon", "EPERM", "adding swap"),
    ("swapoff", "EPERM", "removing swap"),
    ("acct", "EPERM", "process accounting to a file"),
    ("settimeofday", "EPERM", "setting the clock"),
    ("clock_settime", "EPERM", "setting the clock"),
    ("clock_adjtime", "EPERM", "adjusting the clock"),
    ("syslog", "EPERM", "the kernel's log: kernel addresses"),
    ("quotactl", "EPERM", "disk quotas"),
    ("open_by_handle_at", "EPERM", "opening a file by handle, past the mount's paths (Docker's 'shocker' escape)"),
    ("name_to_handle_at", "EPERM", "the handle open_by_handle_at takes"),
    ("lookup_dcookie", "EPERM", "kernel profiling: path names from cookies"),
    ("uselib", "EPERM", "an obsolete loader call"),
    ("iopl", "EPERM", "raw I/O ports"),
    ("ioperm", "EPERM", "raw I/O ports"),
    ("personality", "EPERM", "except the standard value: other domains turn off address-space randomisation"),
)


def _rules(sc) -> list[tuple]:
    """(action, call, *argument conditions) for libseccomp, from DENIED."""
    out = []
    for call, err, _ in DENIED:
        action = sc.ERRNO(getattr(errno, err))
        if call == "clone":
            out += [(action, call, sc.Arg(0, sc.MASKED_EQ, flag, flag)) for flag in CLONE_NAMESPACES]
        elif call == "personality":
            # one comparison per argument and rule (libseccomp): so the query value 0xffffffff is refused too
            out.append((action, call, sc.Arg(0, sc.NE, PER_LINUX)))
        else:
            out.append((action, call))
    return out


def compile_filter() -> bytes:
    """The BPF program (what ``bwrap --seccomp`` reads). Raises (ImportError, RuntimeError, OSError)
    where libseccomp or its bindings are missing or refuse a rule."""
    import pyseccomp as sc

    filt = sc.SyscallFilter(defaction=sc.ALLOW)
    for action, call, *args in _rules(sc):
        filt.add_rule(action, call, *args)
    with tempfile.TemporaryFile() as f:
        filt.export_bpf(f)
        f.seek(0)
        return f.read()


@lru_cache(maxsize=None)
def _compiled() -> tuple[str | None, str]:
    """(path of the compiled program, "") or (None, why there is none). Compiled once per process, in a
    folder of the grader's alone; a forked grading process uses its parent's."""
    if not sys.platform.startswith("linux"):
        return None, "needs Linux"
    try:
        program = compile_filter()
    except (ImportError, RuntimeError, OSError, ValueError) as exc:
        return None, f"libseccomp unavailable ({type(exc).__name__}: {exc})"
    _sweep()
    folder = tempfile.mkdtemp(prefix=f"attnkit-seccomp-{os.getpid()}-")
    path = os.path.join(folder, "filter.bpf")
    with open(path, "wb") as f:
        f.write(program)
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
    return path, ""


# Where no cgroup of its own counts a kernel's processes, the kernel loads a second filter itself, before any
# cell runs (attnkit/kernel/seal.py: inside the sandbox, where this module is not bound).
ENV_NO_PROCESSES = "ATTNKIT_KERNEL_NO_PROCESSES"


def filters_of(pid="self") -> int:
    """How many seccomp filters a process runs under (/proc: the kernel's count, which no process can lower)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next((line.split()[1] for line in f if line.startswith("Seccomp_filters:")), "0"))
    except (OSError, ValueError):
        return 0


ENV_OFF = "ATTNKIT_SECCOMP_OFF"  # 1: no syscall filter (for the benchmark's comparison, and diagnosis)
_refused = ""  # why the sandbox could not start with the filter (sandbox.probe), where it could without


def disable(why: str) -> None:
    """No filter in this process from now on, for ``why`` ("" puts it back)."""
    global _refused
    _refused = why


def unavailable() -> str:
    """Why there is no filter ("" where there is one)."""
    if os.environ.get(ENV_OFF, "").strip() == "1":
        return f"turned off by {ENV_OFF}=1"
    return _refused or _compiled()[1]


def _sweep() -> None:
    """The folders of grading processes that were killed before they could remove theirs."""
    top = tempfile.gettempdir()
    for name in os.listdir(top):
        pid = name.split("-")[2] if name.startswith("attnkit-seccomp-") else ""
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(top, name), ignore_errors=True)


def program_path() -> str | None:
    """The compiled filter's file, or None where there is none (``unavailable()`` says why)."""
    return None if unavailable() else _compiled()[0]


def describe(active: bool = True, why_not: str = "") -> str:
    """The words the sandbox line ends with: 'syscall filter: on, N calls denied' or 'off: <why>'."""
    why = why_not or unavailable()
    if active and not why:
        return f"syscall filter: on, {len(DENIED)} calls denied"
    return f"syscall filter: off: {why}"


# The setpriv fallback's launcher: ``python -I -S -c LAUNCHER program.bpf argv...`` loads the program into
# itself (root: CAP_SYS_ADMIN, so no no_new_privs needed yet) and execs argv (setpriv, then the kernel),
# which inherit it. Plain ctypes: no import of the kit or of pyseccomp in that process.
LAUNCHER = r"""
import ctypes, os, sys
prog = open(sys.argv[1], "rb").read()
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
fprog = Fprog(len(prog) // 8, prog)
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    sys.exit("seccomp: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[2], sys.argv[2:])
"""


def launcher(argv: list[str]) -> list[str]:
    """``argv`` started with the filter loaded (the setpriv fallback); ``argv`` as is where there is none."""
    path = program_path()
    if path is None:
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", LAUNCHER, path, *argv]


def container_filter() -> str:
    """Where the grader itself runs under a filter (a container's profile, as on Gradescope), that filter
    also applies to every kernel, whatever ours does: one clause saying whether there is one."""
    try:
        with open("/proc/self/status") as f:
            mode = next((line.split()[1] for line in f if line.startswith("Seccomp:")), "")
    except OSError:
        mode = ""
    if mode == "2":
        return "the container's own seccomp profile applies to the grader and every kernel (Seccomp: 2)"
    return f"no container seccomp profile on the grader (Seccomp: {mode or 'unknown'})"
