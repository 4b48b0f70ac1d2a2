"""The bwrap command a kernel runs under, and the working folder it sees."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache

from attnkit.package import kit_dir
from attnkit.procs import children
from attnkit.sandbox import seccomp
from attnkit.sandbox.limits import LIMITS, killed_first


BWRAP, SETPRIV = shutil.which("bwrap") or "/usr/bin/bwrap", shutil.which("setpriv") or "/usr/bin/setpriv"
KIT_DIR = str(kit_dir())  # the installed attnkit package (a wheel's or a checkout's)
# Only these kit modules are visible to a kernel: the package will hold fixture banks with right answers.
# The kit's files a kernel can see: its start-up, the agent hidden tests reach it through, their data format.
# Nothing of the grader (hidden tests, references, attnkit/grader/) is ever bound in.
KERNEL_MODULES = ("__init__.py", "kernel/__init__.py", "kernel/__main__.py", "kernel/agent.py", "kernel/line.py",
                  "kernel/wire.py", "kernel/seal.py")
SANDBOX_KIT = "/opt/attnkit"          # the kernel's PYTHONPATH entry holding attnkit/<KERNEL_MODULES>
SANDBOX_HOME = "/home/student"        # the kernel's working folder (tmpfs)
def _setpriv_args(uid: int) -> list[str]:
    return [f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--inh-caps=-all"]


# ---------------------------------------------------------------------------- the bwrap command
def python_exe() -> str:
    """This venv's interpreter with its folder resolved: the path the sandbox binds (``_python_roots``), whatever
    symlinks the kit was reached through (the last link, venv/bin/python -> base, stays: it finds the venv)."""
    return os.path.join(os.path.realpath(os.path.dirname(sys.executable)), os.path.basename(sys.executable))


def _python_roots() -> list[str]:
    """The venv and the base interpreter it links to (read-only in the sandbox)."""
    roots = [sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    out = []
    for r in map(os.path.realpath, roots):
        if not any(r == o or r.startswith(o + "/") for o in out):
            out = [o for o in out if not o.startswith(r + "/")] + [r]
    return out


@lru_cache(maxsize=None)
def bwrap_has(option: str) -> bool:
    """Does the installed bwrap know ``option`` (--disable-userns came with 0.8.0)?"""
    try:
        out = subprocess.run([BWRAP, "--help"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in out.split()


def bwrap_argv(inner: list[str], *, uid: int, workfiles: dict, run_dir: str | None, env: dict,
               scratch_mb: int = LIMITS.scratch_mb, zygote: bool = False, keep_fds: tuple = ()) -> list[str]:
    """The full command: bwrap (as root: no user namespace, so the uid below is a real host uid)
    then setpriv to the slot's uid, then ``inner``. ``workfiles``: name -> host file bound
    read-only into the working folder; ``run_dir``: the host folder with the connection file
    and the IPC sockets, bound at the same path. With the syscall filter (attnkit.sandbox.seccomp), a
    shell in front opens its compiled program on an fd bwrap reads (``--seccomp``), one not in
    ``keep_fds`` (fds the caller passes on)."""
    a = [BWRAP, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
         "--die-with-parent", "--new-session", "--hostname", "grader", "--clearenv"]
    if os.geteuid() != 0:  # unprivileged bwrap needs a user namespace; the uid stays the grader's
        a += ["--unshare-user"]
        if bwrap_has("--disable-userns"):  # and none nested in it (the filter refuses them as well)
            a += ["--disable-userns"]
    program = seccomp.program_path()
    if program:
        fd = next(n for n in range(3, 10) if n not in keep_fds)  # dash redirects single-digit fds only
        a = ["/bin/sh", "-c", f'exec "$@" {fd}<"$0"', program, *a, "--seccomp", str(fd)]
    mounted = ["/usr"]
    a += ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev"]
    # a GPU node: the kernel runs the CUDA cases (--dev alone hides the GPU's device files)
    for gpu in sorted(f"/dev/{n}" for n in os.listdir("/dev") if n.startswith("nvidia")):
        a += ["--dev-bind-try", gpu, gpu]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            a += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            a += ["--ro-bind", top, top]
            mounted.append(top)
    made = set()

    def parents(path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in made and not any(d == m or d.startswith(m + "/") for m in mounted):
                made.add(d)
                a.extend(["--perms", "0755", "--dir", d])  # bwrap would make them 0700: unreadable to the uid

    for root in _python_roots():
        if any(root == m or root.startswith(m + "/") for m in mounted):
            continue
        parents(root)
        a += ["--ro-bind", root, root]
        mounted.append(root)
    a += ["--perms", "0755", "--dir", SANDBOX_KIT, "--perms", "0755", "--dir", f"{SANDBOX_KIT}/attnkit"]
    for sub in sorted({os.path.dirname(n) for n in KERNEL_MODULES if os.path.dirname(n)}):
        a += ["--perms", "0755", "--dir", f"{SANDBOX_KIT}/attnkit/{sub}"]
    for name in KERNEL_MODULES:
        path = os.path.join(KIT_DIR, name)
        if os.path.isfile(path):
            a += ["--ro-bind", path, f"{SANDBOX_KIT}/attnkit/{name}"]
    if run_dir:  # at its host path: the connection file names the sockets by absolute path
        parents(run_dir)
        a += ["--bind", run_dir, run_dir]
    # the one writable folder (TMPDIR too); /tmp, where the run folder is bound, is not writable
    a += ["--size", str(scratch_mb * 1024 * 1024), "--perms", "1777", "--tmpfs", SANDBOX_HOME,
          "--perms", "1777", "--dir", f"{SANDBOX_HOME}/.tmp"]
    for name, path in sorted(workfiles.items()):
        a += ["--ro-bind", path, f"{SANDBOX_HOME}/{name}"]
    a += ["--chdir", SANDBOX_HOME]
    base = {"PATH": f"{os.path.dirname(python_exe())}:/usr/bin:/bin", "HOME": SANDBOX_HOME,
            "TMPDIR": f"{SANDBOX_HOME}/.tmp", "LANG": "C.UTF-8", "PYTHONPATH": SANDBOX_KIT,
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "MPLCONFIGDIR": f"{SANDBOX_HOME}/.tmp"}
    for k, v in {**base, **env}.items():
        a += ["--setenv", k, str(v)]
    if zygote:  # root in the sandbox with only these two capabilities; every fork drops to ``uid`` at once
        return killed_first(a + ["--setenv", "ATTNKIT_KERNEL_UID", str(uid), "--cap-add", "CAP_SETUID",
                                 "--cap-add", "CAP_SETGID", *inner])
    if os.geteuid() == 0:
        a += [SETPRIV, *_setpriv_args(uid), "--"]
    return killed_first(a + list(inner))


def _host_pid(root: int, ns_pid: int) -> int | None:
    """The host pid of the process that is ``ns_pid`` in the PID namespace under host process ``root``."""
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                nspid = next((l.split()[1:] for l in f if l.startswith("NSpid:")), [])
            if len(nspid) > 1 and nspid[-1] == str(ns_pid):
                return pid
            todo += children(pid)
        except (OSError, ValueError):
            continue
    return None


def workdir_files(folder: str) -> dict:
    """name -> path of the plain files in ``folder`` (the grader's copies), as bound into the sandbox."""
    return {n: os.path.join(folder, n) for n in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, n)) and not os.path.islink(os.path.join(folder, n))}


# ---------------------------------------------------------------------------- the kernel
# nbgrader's record of when a submission was made: not the kernel's business, and it differs per
# student (the interpreter started ahead for the next student is only used if the files are the same)
NOT_FOR_KERNELS = ("timestamp.txt",)


def isolated_copy(folder: str) -> str:
    """A fresh folder in the system temp dir with copies of ``folder``'s files (not notebooks)."""
    workdir = tempfile.mkdtemp(prefix=f"attnkit-kernel-{os.getpid()}-")  # (named for limits.sweep)
    for name in os.listdir(folder):
        src = os.path.join(folder, name)
        # regular files only: a symlink (to the instructor's notebook, to /dev/zero) is never followed
        if os.path.isfile(src) and not os.path.islink(src) and not name.endswith(".ipynb") \
                and name not in NOT_FOR_KERNELS:
            shutil.copy(src, os.path.join(workdir, name))
    os.chmod(workdir, 0o755)  # read by the sandbox's uid; only the unsandboxed kernel writes here
    for name in os.listdir(workdir):
        os.chmod(os.path.join(workdir, name), 0o644)
    return workdir
