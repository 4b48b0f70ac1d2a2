"""The host side of one warm-start interpreter (the "zygote", attnkit/kernel/__main__.py): its bwrap sandbox, the
socket the host talks to it on, its handover from the batch process to a grading process, and a kernel it forked
as the kernel manager holds it. Which zygote a kernel forks from, and when: attnkit/sandbox/warm.py."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from attnkit.sandbox.bwrap import bwrap_argv, python_exe
from attnkit.sandbox.limits import remove_dir
from attnkit.sandbox.slots import ENV_SLOT_FD

ENV_HANDED = "ATTNKIT_ZYGOTE"  # fd and JSON of a zygote the batch process started for a grading process


class ZygoteError(RuntimeError):
    pass


class Zygote:
    """Host side of one pre-imported interpreter (attnkit.kernel's zygote) in its own bwrap
    sandbox, from which the kernels of one student's notebooks are forked."""

    def __init__(self, key, uid: int, workfiles: dict, env: dict, scratch_mb: int, runs: str,
                 preload: tuple = (), wait: bool = True):
        self.key, self.proc, self.sock, self.runs, self.ready = key, None, None, runs, False
        self.home = tempfile.mkdtemp(prefix=f"attnkit-warm-{os.getpid()}-")  # (named for limits.sweep)
        os.chmod(self.home, 0o755)
        files = {}
        for name, path in workfiles.items():  # its own copies: the notebook's scratch copy is deleted after it
            files[name] = os.path.join(self.home, name)
            shutil.copy(path, files[name])
            os.chmod(files[name], 0o644)
        ours, theirs = socket.socketpair()
        try:
            # the control channel is an inherited socket: nothing in the sandbox's files a notebook could replace
            argv = bwrap_argv([python_exe(), "-m", "attnkit.kernel", "--zygote", str(theirs.fileno()),
                               ",".join(preload)], uid=uid,
                              workfiles=files, run_dir=runs, env=env, scratch_mb=scratch_mb, zygote=True,
                              keep_fds=(theirs.fileno(),))
            with open(os.path.join(self.home, "zygote.log"), "ab") as log:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             pass_fds=(theirs.fileno(),), start_new_session=True,
                                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        finally:
            theirs.close()
        self.sock = ours
        self.reader = ours.makefile("r")
        if wait:
            self.wait_ready()

    # -- handing a zygote started by the batch process over to a grading process -------------
    slot_lock = None  # the lock of the slot uid it runs kernels as, when started for another process

    def handover(self) -> tuple[dict, list[int]]:
        """(environment for the grading process, fds it must inherit). The caller then calls
        ``released()`` once that process has started."""
        info = {"pid": self.proc.pid, "key": self.key, "runs": self.runs, "home": self.home}
        env, fds = {ENV_HANDED: f"{self.sock.fileno()} {json.dumps(info)}"}, [self.sock.fileno()]
        if self.slot_lock is not None:
            env[ENV_SLOT_FD] = f"{self.slot_lock.fileno()} {self.key[0]}"
            fds.append(self.slot_lock.fileno())
        return env, fds

    def released(self) -> None:
        """In the batch process, after the handover: forget the zygote, but reap it when it ends."""
        import threading

        with contextlib.suppress(OSError):
            self.reader.close()
            self.sock.close()
            if self.slot_lock is not None:
                self.slot_lock.close()  # the grading process's inherited copy holds the lock now
        self.sock = None
        proc, self.proc = self.proc, None
        threading.Thread(target=proc.wait, daemon=True).start()

    @classmethod
    def adopt(cls, fd: int, info: str) -> "Zygote":
        """In the grading process: the zygote handed over (``handover``) through inherited fd ``fd``."""
        data = json.loads(info)
        self = cls.__new__(cls)
        uid, digest, env, scratch_mb, preload = data["key"]
        self.key = (uid, digest, tuple(tuple(kv) for kv in env), scratch_mb, tuple(preload))
        self.runs, self.home, self.ready = data["runs"], data["home"], False
        self.proc = _Handed(int(data["pid"]))
        self.sock = socket.socket(fileno=fd)
        self.reader = self.sock.makefile("r")
        return self

    def wait_ready(self) -> None:
        if not self.ready:
            self._reply(timeout=180)  # {"ready": true} once torch, ipykernel and the preloads are imported
            self.ready = True

    def _reply(self, timeout: float) -> dict:
        try:
            self.sock.settimeout(timeout)
            line = self.reader.readline()
        except OSError as exc:
            self.stop()
            raise ZygoteError(f"the warm-start interpreter did not answer ({type(exc).__name__}){self._log()}")
        if not line:
            self.stop()
            raise ZygoteError(f"the warm-start interpreter is gone{self._log()}")
        return json.loads(line)

    def call(self, timeout: float = 30, **request) -> dict:
        if self.sock is None:
            raise ZygoteError("the warm-start interpreter was stopped")
        self.wait_ready()
        try:
            self.sock.sendall((json.dumps(request) + "\n").encode())
        except OSError as exc:
            self.stop()
            raise ZygoteError(f"the warm-start interpreter is gone ({exc})")
        reply = self._reply(timeout)
        if not reply.get("ok"):
            self.stop()  # never reuse a sandbox that could not be cleaned
            raise ZygoteError(f"warm start refused: {reply.get('error')}")
        return reply

    def _log(self) -> str:
        try:
            with open(os.path.join(self.home, "zygote.log"), errors="replace") as f:
                tail = f.read()[-300:].strip()
            return f": {tail}" if tail else ""
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.sock is not None and self.proc is not None and self.proc.poll() is None

    def discard(self) -> None:
        """Stop it and remove its runs folder: for one no warm_start() scope took over."""
        self.stop()
        remove_dir(self.runs)

    def stop(self) -> None:
        """Kill the sandbox (bwrap's PID namespace ends with it, and every process in it)."""
        if self.slot_lock is not None:
            with contextlib.suppress(OSError):
                self.slot_lock.close()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.reader.close()
                self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=30)
        shutil.rmtree(self.home, ignore_errors=True)


class _Handed:
    """What a grading process holds of a zygote's bwrap process that the batch process started (and reaps)."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return -signal.SIGKILL if f.read().rsplit(")", 1)[1].split()[0] == "Z" else None
        except OSError:
            return -signal.SIGKILL

    def wait(self, timeout=None):
        deadline = time.monotonic() + (timeout or 0)
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.poll()


class ForkedKernel:
    """What the kernel manager's provisioner holds in place of a Popen: a kernel the zygote forked."""

    stdin = stdout = stderr = None

    def __init__(self, zygote: Zygote, pid: int):
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self):
        if self.returncode is None:
            try:
                self.returncode = self.zygote.call(op="poll", pid=self.pid)["rc"]
            except ZygoteError:
                self.returncode = -signal.SIGKILL  # the sandbox is gone, and the kernel with it
        return self.returncode

    def wait(self, timeout=None):
        return self.poll()

    def send_signal(self, signum: int) -> None:
        if self.returncode is not None:
            return
        try:
            if signum in (signal.SIGKILL, signal.SIGTERM):
                # kills every process of the notebook and wipes its files; a sandbox it cannot clean is dropped
                if not self.zygote.call(op="kill", pid=self.pid).get("clean"):
                    self.zygote.stop()
                self.returncode = -signal.SIGKILL  # dead and reaped either way: no need to poll for it
            else:
                self.zygote.call(op="signal", pid=self.pid, sig=int(signum))
        except ZygoteError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)
