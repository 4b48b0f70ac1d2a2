"""Launch the course's IPython kernel under resource limits (the kernel side of the sandbox).

The host side (attnkit/sandbox/) starts this module inside bubblewrap as an unprivileged
uid; here, before any notebook cell runs, the limits it passes are made hard (soft = hard, so
the notebook cannot raise them). No hidden test runs here: the grader process (attnkit/grader/)
reaches the kernel only through the agent (attnkit/kernel/agent.py), with data.

* memory (RLIMIT_DATA): a notebook that asks for too much gets an error in its own cell;
* processes (RLIMIT_NPROC, of the sandbox's uid): a fork bomb stops at the limit; where no cgroup of its
  own counts them (ATTNKIT_KERNEL_NO_PROCESSES), none at all: a syscall filter refuses fork, threads stay;
* file size (RLIMIT_FSIZE): a 10 GB file fails with "File too large";
* CPU seconds (RLIMIT_CPU): per kernel process, on top of the per-cell timeout;
* allocations: glibc's mmap threshold fixed, so a call costs the same whatever came before (the time verdicts).
"""
import os
import resource
import sys

_LIMITS = (("ATTNKIT_KERNEL_MEMORY_MB", resource.RLIMIT_DATA, 1024 * 1024),
           ("ATTNKIT_KERNEL_NPROC", resource.RLIMIT_NPROC, 1),
           ("ATTNKIT_KERNEL_FSIZE_MB", resource.RLIMIT_FSIZE, 1024 * 1024),
           ("ATTNKIT_KERNEL_CPU_S", resource.RLIMIT_CPU, 1))


def _steady_allocations() -> None:
    """glibc's mmap threshold fixed at its starting 128 KiB: every allocation from there up is mapped fresh and
    given back when freed, so a call's cost is the same whatever calls came before. (The threshold glibc moves by
    itself made fresh 1-4 MB tensors cost page faults in some calls and none in others: a right linear attention
    cost 3.4x per doubling of N where the faults began, and was judged quadratic.)"""
    try:
        import ctypes
        ctypes.CDLL(None).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (a set value also stops the trim threshold moving)
    except (OSError, AttributeError):  # not glibc
        pass


def _limit(nproc: bool = True) -> None:
    _steady_allocations()
    sandboxed = bool(os.environ.get("ATTNKIT_KERNEL_NPROC"))
    for var, which, unit in _LIMITS:
        if which == resource.RLIMIT_NPROC and not nproc:
            continue
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
    if nproc and os.environ.pop("ATTNKIT_KERNEL_NO_PROCESSES", "") == "1":
        try:  # threads only from here on (the grader checks from outside that the filter is in force)
            from attnkit.kernel.seal import load_no_processes
            load_no_processes()
        except Exception as exc:  # the grader then fails any measurement during which a process started
            print(f"attnkit.kernel: processes not refused: {type(exc).__name__}: {exc}", file=sys.stderr)


# ---------------------------------------------------------------------------- warm start (zygote)
# One interpreter per student, inside that student's sandbox, with torch, ipykernel and the agent
# imported; it never runs student code. Each notebook's kernel is a fork of it that cleans up
# after the previous notebook and starts its own IPKernelApp.
# It runs as root inside bwrap with only CAP_SETUID/CAP_SETGID (bwrap drops every other
# capability); each fork becomes the slot's uid before anything else, so a notebook cannot signal,
# ptrace or read the zygote (another uid, not dumpable), exactly as it cannot touch bwrap's init
# in a cold start. The host talks to it over an inherited socket (no file a notebook could replace).
HOME = os.environ.get("HOME", "/home/student")


def _wipe(folder: str, keep=()) -> None:
    """Remove what a notebook left in ``folder`` (the read-only bound grader files stay)."""
    import shutil
    import stat

    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name in keep:
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                for root, dirs, _files in os.walk(path):  # a chmod 000 folder must not stop the wipe
                    for d in dirs:
                        try:
                            os.chmod(os.path.join(root, d), 0o700, follow_symlinks=False)
                        except OSError:
                            pass
                os.chmod(path, 0o700)
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError:
            pass


def _remove_sysv_ipc() -> None:
    """SysV shared memory, semaphores and queues outlive their process: remove the notebook's."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for kind, call in (("shm", libc.shmctl), ("sem", libc.semctl), ("msg", libc.msgctl)):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            ident = int(row.split()[1])
            if kind == "sem":
                call(ident, 0, 0)   # IPC_RMID = 0
            else:
                call(ident, 0, None)


def _others() -> list[int]:
    """Processes of this uid other than the zygote (a notebook's leftovers)."""
    me, uid, out = os.getpid(), str(os.getuid()), []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            try:  # status, not the folder's owner: a non-dumpable process's folder is root's
                with open(f"/proc/{name}/status") as f:
                    uids = next(l for l in f if l.startswith("Uid:")).split()[1:]
                with open(f"/proc/{name}/stat") as f:
                    zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"  # dead already: its parent reaps it
            except (OSError, StopIteration, IndexError):
                continue
            if uid in uids and not zombie:
                out.append(int(name))
    return out


def _become_student(helper: bool = False) -> None:
    """In a fork of the zygote: the slot's uid, every capability gone for good, the kernel's limits (a ``helper``,
    which only signals or cleans up and exits, loads no filter of its own: the keeper's interpreter has none to load)."""
    import ctypes

    uid = int(os.environ.pop("ATTNKIT_KERNEL_UID"))  # gone from the kernel's environment, as in a cold one
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from root to another uid: the permitted capabilities are cleared
    if os.getuid() != uid or os.geteuid() != uid:
        os._exit(70)
    ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    _limit(nproc=not helper)


def _as_student(fn, *args) -> int:
    """Run ``fn`` in a fork that is the slot's uid (a root without CAP_KILL cannot signal it); its exit code."""
    pid = os.fork()
    if pid == 0:
        try:
            _become_student(helper=True)
            os._exit(0 if fn(*args) else 1)
        except BaseException:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    return True


def _clean(keep) -> bool:
    """Back to the state of a fresh sandbox: no process of the notebook, no file, no IPC object."""
    ok = _as_student(_clean_as_student, keep) == 0
    _reap()
    return ok


def _clean_as_student(keep) -> bool:
    import signal
    import time

    for _ in range(200):
        try:
            os.kill(-1, signal.SIGKILL)  # every process of this uid but this one
        except ProcessLookupError:
            pass
        _reap()
        if not _others():
            break
        time.sleep(0.01)
    else:
        return False
    _wipe(HOME, keep)
    _wipe(os.path.join(HOME, ".tmp"))
    _wipe("/dev/shm")
    _remove_sysv_ipc()
    return not _others()


def _reap(pid: int = -1):
    try:
        while True:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got == 0:
                return None
            if pid != -1:
                return os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        return None if pid == -1 else -9


def _child(sock, argv: list, log: str) -> None:
    """The forked kernel: a fresh process as far as a notebook can tell."""
    import ctypes
    import random

    try:
        sock.close()
        _become_student()
        os.setsid()
        ctypes.CDLL(None).prctl(4, 1)  # PR_SET_DUMPABLE: as any kernel (the zygote is not)
        fd = os.open("/dev/null", os.O_RDONLY)
        os.dup2(fd, 0)
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(HOME)
        random.seed()  # a fresh process would not share the zygote's random state
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        from ipykernel import kernelapp

        sys.argv = [sys.argv[0], *argv, *KERNEL_OPTIONS]  # as a cold kernel's command line
        kernelapp.launch_new_instance()
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)


# Every kernel's options: the TCP-without-encryption notice is noise on a grading machine's terminal; and IPython's
# history stays in memory (In, _i, %history as ever), not in a database in the kernel's own HOME, which is thrown
# away with it: a thread woke at each cell to commit it there (1.3 ms of every execution on a disk; little on the
# sandbox's tmpfs).
KERNEL_OPTIONS = ("--IPKernelApp.log_level=ERROR", "--HistoryManager.enabled=False")


# what IPKernelApp.initialize imports (debugpy alone is 0.07 s of every kernel's start)
KERNEL_PRELOAD = ("ipykernel.debugger", "ipykernel.zmqshell", "IPython.core.completerlib", "IPython.core.debugger",
                  "IPython.extensions.storemagic", "sqlite3", "pydoc", "faulthandler", "tornado.queues",
                  "tornado.platform.asyncio", "xmlrpc.server", "encodings.idna")


FIGURE = ":figure"  # the last preload step: draw one figure off-screen


def _preload_step(name: str) -> None:
    """One step of the zygote's preloading: import a module the notebooks (or IPKernelApp) import,
    so that no forked kernel pays for it again; or, last, draw one figure off-screen, so that
    matplotlib's font list and font files are loaded once, here. Steps run while no request waits."""
    import importlib

    # what ipykernel sets in every kernel before any cell runs; matplotlib reads it at import
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    try:
        if name != FIGURE:
            importlib.import_module(name)
        elif "matplotlib" in sys.modules:  # no pyplot state: a bare Figure on Agg, as the inline backend draws
            import io

            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            fig = Figure(figsize=(2, 2))
            ax = fig.subplots()
            ax.loglog([1, 10], [1, 100], "o-", label="a")
            ax.set_xlabel("N")
            ax.set_title("t")
            ax.legend()
            FigureCanvasAgg(fig).print_png(io.BytesIO())
    except Exception as exc:  # a kernel imports it itself (and shows its error) if a notebook needs it
        print(f"preload {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    _remove_own_files(os.path.join(HOME, ".tmp"))  # e.g. matplotlib's font cache: not the notebooks' files


def _remove_own_files(folder: str) -> None:
    """Remove what this process (root in the sandbox) wrote into ``folder``; a notebook's files stay."""
    import shutil

    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        path = os.path.join(folder, name)
        try:
            if os.lstat(path).st_uid == os.getuid():
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
        except OSError:
            pass


def zygote(fd: int, preload: list[str] = ()) -> None:
    import ctypes
    import gc
    import json
    import select
    import socket
    import threading

    ctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE=0: no ptrace or /proc/<pid>/mem by a notebook
    import torch  # noqa: F401
    import attnkit.kernel.line  # noqa: F401  (the agent, and the line hidden tests reach it through)
    import numpy  # noqa: F401
    from ipykernel import kernelapp  # noqa: F401
    import ipykernel.ipkernel  # noqa: F401

    keep = set(os.listdir(HOME))  # the grader's files bound in, and .tmp
    sock = socket.socket(fileno=fd)
    reader = sock.makefile("r")
    sock.sendall(b'{"ready": true}\n')
    # the rest is imported while no request waits (the first notebook need not wait for matplotlib);
    # a fork never happens in the middle of an import: requests are served between steps
    pending = [*KERNEL_PRELOAD, *preload, FIGURE]
    # emptied (_clean) since the last kernel: only this process forks as the student's uid, so nothing of the
    # notebook's can appear in between, and a spawn right after a kill need not empty the sandbox twice
    pristine = False
    while True:
        while pending and not select.select([sock], [], [], 0)[0]:
            _preload_step(pending.pop(0))
        line = reader.readline()  # one request at a time: nothing is left buffered after it
        if not line:
            break
        req = json.loads(line)
        op, reply = req.get("op"), {"ok": True}
        if op == "spawn":
            if threading.active_count() > 1 or len(os.listdir("/proc/self/task")) > 1:
                reply = {"ok": False, "error": "the zygote has threads: fork is unsafe"}
            elif not (pristine or _clean(keep)):
                reply = {"ok": False, "error": "a notebook's processes survived"}
            else:
                pristine = False
                # the kernel's collector then never visits (so never copies) the pages of what it inherits:
                # torch's and matplotlib's objects stay shared, and no collection copies them inside a measured call
                gc.freeze()
                pid = os.fork()
                if pid == 0:
                    reader.close()
                    _child(sock, req["argv"], req["log"])
                reply["pid"] = pid
        else:
            reply, pristine = _serve(req, keep, pristine)
        sock.sendall((json.dumps(reply) + "\n").encode())
        if op == "spawn" and reply.get("pid") and req.get("last"):
            _become_keeper(sock, keep)


def _serve(req: dict, keep, pristine: bool) -> tuple[dict, bool]:
    """(the reply, whether the sandbox is now emptied) to a request about a kernel already forked."""
    op, reply = req.get("op"), {"ok": True}
    if op == "poll":
        reply["rc"] = _reap(req["pid"])
    elif op == "signal":
        pristine = False
        _as_student(_signal, req["pid"], req["sig"])
    elif op == "kill":  # the kernel and everything of its uid, then its files
        reply["clean"] = pristine = _clean(keep)
    elif op == "spawn":
        reply = {"ok": False, "error": "this sandbox forks no more kernels (its last kernel was forked)"}
    else:
        reply = {"ok": False, "error": f"unknown op {op!r}"}
    return reply, pristine


def _become_keeper(sock, keep) -> None:
    """After the last kernel's fork: this process becomes a small interpreter (no torch, no preloads) that
    serves the same socket for that kernel (poll, signal, kill). bubblewrap ends the sandbox when this process
    exits, so it stays; its pages, the copies beside every page the kernel wrote, go (about 30 MB on Gradescope).
    The kernel stays its child, the socket the same (nothing read and not answered), its uid and capabilities
    those it had; if the exec fails it stays the zygote."""
    import json

    for f in (sys.stdout, sys.stderr):
        f.flush()
    try:
        os.set_inheritable(sock.fileno(), True)
        # never a module from a folder a notebook can write to: "-m" would put the working folder (the sandbox's
        # home, where the kernel just forked runs) first on sys.path; "/" is root's, and -P puts nothing there
        os.chdir("/")
        safe = ["-P"] if sys.version_info >= (3, 11) else []
        os.execv(sys.executable, [sys.executable, "-S", *safe, "-m", "attnkit.kernel", "--keeper",
                                  str(sock.fileno()), json.dumps(sorted(keep))])
    except OSError as exc:
        print(f"zygote: stays (exec: {exc})", file=sys.stderr)


def keeper(fd: int, keep) -> None:
    """The zygote's last form (``_become_keeper``): it answers for the kernel it forked last, and forks no more."""
    import ctypes
    import json
    import socket

    ctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE=0, as the zygote (an exec sets it again)
    sock = socket.socket(fileno=fd)
    reader = sock.makefile("r")
    pristine, keep = False, set(keep)
    for line in reader:
        reply, pristine = _serve(json.loads(line), keep, pristine)
        sock.sendall((json.dumps(reply) + "\n").encode())


if __name__ == "__main__" and sys.argv[1:2] == ["--zygote"]:
    _limit(nproc=False)  # NPROC counts the uid's processes: root's are the host's; each fork sets it
    zygote(int(sys.argv[2]), [m for m in (sys.argv[3] if len(sys.argv) > 3 else "").split(",") if m])
elif __name__ == "__main__" and sys.argv[1:2] == ["--keeper"]:
    import json

    keeper(int(sys.argv[2]), json.loads(sys.argv[3]))
elif __name__ == "__main__":
    _limit()
    from ipykernel import kernelapp

    sys.argv.extend(KERNEL_OPTIONS)
    kernelapp.launch_new_instance()
