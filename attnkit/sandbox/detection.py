"""Which sandbox this host can run (bwrap, setpriv or none), found by trying each once."""
from __future__ import annotations

import os
import subprocess
import sys
from functools import lru_cache

from attnkit.sandbox import seccomp
from attnkit.sandbox.bwrap import BWRAP, SETPRIV, _setpriv_args, bwrap_argv, python_exe
from attnkit.sandbox.slots import SandboxUnavailable, UID_BASE


ENV_MODE = "ATTNKIT_SANDBOX"
MODES = ("bwrap", "setpriv", "none")
# ---------------------------------------------------------------------------- detection
def _run(argv, timeout=20) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, f"{type(exc).__name__}: {exc}"
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


@lru_cache(maxsize=None)
def probe(mode: str) -> str | None:
    """Actually try ``mode`` once (bwrap ... true). None when it works, else why not."""
    if mode == "none":
        return None
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if mode == "setpriv":
        if os.geteuid() != 0:
            return "needs root (to switch the kernel to an unprivileged uid)"
        rc, err = _run([SETPRIV, *_setpriv_args(UID_BASE), "--", "/bin/true"])
        if rc != 0:
            return f"setpriv failed: {err or rc}"
        if seccomp.program_path():
            rc, err = _run(seccomp.launcher([SETPRIV, *_setpriv_args(UID_BASE), "--", "/bin/true"]))
            if rc != 0:  # graded without it, and the sandbox line says so
                seccomp.disable(f"its launcher failed: {err or rc}")
        # the kernel runs this Python as that uid, straight from the host's folders: each must be
        # readable by it (a venv under a 0700 folder such as mktemp -d's is not)
        rc, err = _run([SETPRIV, *_setpriv_args(UID_BASE), "--", python_exe(), "-c", "import ipykernel"], timeout=60)
        return None if rc == 0 else (f"the Python environment ({sys.prefix}) cannot be run by an unprivileged uid: "
                                     f"{err or rc}")
    if not os.path.exists(BWRAP):
        return "bubblewrap (bwrap) is not installed"
    argv = bwrap_argv(["/bin/true"], uid=UID_BASE, workfiles={}, run_dir=None, env={})
    rc, err = _run(argv)
    if rc != 0 and seccomp.program_path():  # is it the filter? Then graded without it, and the line says so
        seccomp.disable(f"bwrap refused it: {err or rc}")
        if _run(bwrap_argv(["/bin/true"], uid=UID_BASE, workfiles={}, run_dir=None, env={}))[0] == 0:
            return None
        seccomp.disable("")
    return None if rc == 0 else f"bwrap failed: {err or rc}"


def detect() -> str:
    """The sandbox mode this grader uses: forced by ATTNKIT_SANDBOX, else the best that works."""
    forced = os.environ.get(ENV_MODE, "").strip()
    if forced:
        if forced not in MODES:
            raise SandboxUnavailable(f"{ENV_MODE}={forced!r}: expected one of {', '.join(MODES)}")
        why = probe(forced)
        if why:
            raise SandboxUnavailable(f"{ENV_MODE}={forced} but it does not work here: {why}")
        return forced
    for mode in ("bwrap", "setpriv"):
        if probe(mode) is None:
            return mode
    return "none"


def describe(mode: str) -> str:
    """One line for the instructor's terminal."""
    def why():  # only where a lesser mode is in use: probing setpriv runs an interpreter as its uid (0.3 s)
        return (f"forced by {ENV_MODE}={mode}" if os.environ.get(ENV_MODE, "").strip() == mode
                else f"bwrap: {probe('bwrap')}" + ("" if mode == "setpriv" else f"; setpriv: {probe('setpriv')}"))

    if mode == "bwrap":
        if os.geteuid() != 0:  # no uid of its own: the kernel is the grader's uid inside a user namespace
            return ("sandbox: bubblewrap in an unprivileged user namespace (own PID/mount/network namespaces, "
                    f"no view of the course; the kernel runs as the grader's own uid, not a uid of its own; "
                    f"{seccomp.describe()})")
        return (f"sandbox: bubblewrap (own PID/mount/network namespaces, unprivileged uid, no view of the course; "
                f"{seccomp.describe()})")
    if mode == "setpriv":
        return (f"sandbox: FALLBACK setpriv (unprivileged uid, course folders unreadable to it; NO network or "
                f"process isolation; {seccomp.describe()}; {why()})")
    return f"sandbox: NONE - submissions run with the grader's rights ({seccomp.describe(False, 'unsandboxed')}; {why()})"
