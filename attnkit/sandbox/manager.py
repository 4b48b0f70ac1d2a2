"""jupyter_client's kernel manager and client for sandboxed kernels: start, capped messages, stop."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from queue import Empty

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from traitlets import Bool, default, DottedObjectName, Integer, List, Unicode

from attnkit.sandbox import seccomp
from attnkit.sandbox import warm as _ws
from attnkit.procs import children, comm
from attnkit.sandbox.bwrap import (KERNEL_MODULES, KIT_DIR, SETPRIV, _host_pid, _setpriv_args, bwrap_argv, python_exe,
                                   workdir_files)
from attnkit.sandbox.detection import detect, probe
from attnkit.sandbox.fallback import kill_uid
from attnkit.sandbox.limits import (LIMITS, KernelCgroup, killed_first, memory_cgroups, meter_cgroups,
                                    mount_small_tmpfs, remove_dir)
from attnkit.sandbox.slots import SandboxUnavailable, claim_slot, uid_slot
from attnkit.sandbox.warm import (PRELOAD, _zygote_for, drop_early, forget_first, launch_ahead, remember_first,
                                  start_ahead, take_early, warm_enabled, warm_start)
from attnkit.sandbox.zygote import ForkedKernel, ZygoteError


TIMEOUT_NAMES = {"CellTimeoutError", "KeyboardInterrupt"}
# The largest message the grader takes from a kernel: an agent's reply (grader/remote.py MAX_REPLY, 64 MiB)
# and its envelope. Outputs are capped far below this as they arrive (CourseExecute.output).
MAX_MESSAGE = 66 << 20
RCV_QUEUE = 2  # messages waiting in the grader per socket: with MAX_MESSAGE, what a flood can hold here
KERNEL_DIED = "KernelDied"
DIAGNOSES_DEFAULT = True  # CourseExecute.diagnoses when the course config leaves it unset
class CourseKernelClient(AsyncKernelClient):
    """jupyter_client's client, ready as soon as the kernel has answered kernel_info and IOPub has
    delivered that request's messages: jupyter_client then also waits for 0.2 s of silence on
    IOPub (0.2 s or more per notebook). Nothing is lost by not waiting: nbclient reads only the
    messages whose parent is the cell it runs."""

    @default("context")
    def _context_default(self):
        # the client connects before the forked kernel has bound its sockets; zmq retries a
        # failed connect every 100 ms by default, a tenth of a second lost on every notebook
        self._created_context = True
        ctx = zmq.asyncio.Context()
        ctx.setsockopt(zmq.RECONNECT_IVL, 5)
        # A flood must not pile up in the grader: no message over MAX_MESSAGE is taken in (zmq drops the
        # connection instead, see iopub_lost), and at most RCV_QUEUE wait here (the rest waits in the kernel).
        ctx.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        ctx.setsockopt(zmq.RCVHWM, RCV_QUEUE)
        return ctx

    _iopub_monitor = None
    _iopub_gone = False

    def start_channels(self, *args, **kwargs):
        super().start_channels(*args, **kwargs)
        self._watch_iopub()

    def _watch_iopub(self) -> None:
        # an oversized message ends the IOPub connection for good (zmq does not reconnect): watch for it
        addr = f"inproc://attnkit-iopub-{id(self)}-{time.monotonic_ns()}"
        self.iopub_channel.socket.monitor(addr, zmq.EVENT_DISCONNECTED)
        pair = self.context.socket(zmq.PAIR)  # the context's own: destroyed with it whatever happens
        pair.connect(addr)
        self._iopub_monitor = (pair, zmq.Socket.shadow(pair.underlying))  # read without the event loop
        self._iopub_gone = False

    def reconnect_iopub(self) -> None:
        """A new IOPub connection in place of one an oversized message ended (the kernel's state is kept)."""
        self._unwatch_iopub()
        with contextlib.suppress(Exception):
            self._iopub_channel.close()
        self._iopub_channel = None
        self._watch_iopub()

    def _unwatch_iopub(self) -> None:
        if self._iopub_monitor is not None:
            with contextlib.suppress(Exception):
                if self._iopub_channel is not None:
                    self._iopub_channel.socket.disable_monitor()
            self._iopub_monitor[0].close(linger=0)
            self._iopub_monitor = None

    def iopub_lost(self) -> bool:
        """Has the IOPub connection dropped (a message over MAX_MESSAGE, or the kernel gone)?"""
        while self._iopub_monitor is not None and not self._iopub_gone:
            try:
                self._iopub_monitor[1].recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._iopub_gone = True
        return self._iopub_gone

    def stop_channels(self):
        self._unwatch_iopub()
        super().stop_channels()

    async def _async_wait_for_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        while True:
            self.kernel_info()
            try:
                reply = await self.shell_channel.get_msg(timeout=1)
            except Empty:
                reply = None
            if reply is not None and reply["msg_type"] == "kernel_info_reply":
                # IOPub is connected once it delivers this request's "idle" (else ask again)
                parent = reply["parent_header"].get("msg_id")
                try:
                    while True:
                        msg = await self.iopub_channel.get_msg(timeout=0.5)
                        if (msg["msg_type"] == "status" and msg["parent_header"].get("msg_id") == parent
                                and msg["content"].get("execution_state") == "idle"):
                            self._handle_kernel_info_reply(reply)
                            return
                except Empty:
                    pass
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")

    wait_for_ready = _async_wait_for_ready


class CourseKernelManager(AsyncKernelManager):
    """Always start the course's Python kernel, whatever kernelspec the notebook names, in the sandbox."""

    sandbox = Unicode("auto", help="bwrap, setpriv, none, or auto (ATTNKIT_SANDBOX, else the best that works).").tag(config=True)
    memory_limit_mb = Integer(LIMITS.memory_limit_mb,
                              help="RLIMIT_DATA of every kernel process, MiB; 0 = none.").tag(config=True)
    cgroup_memory_mb = Integer(LIMITS.cgroup_memory_mb,
                               help="Where the host offers a writable memory cgroup: the limit of each kernel's "
                               "cgroup (all its processes together, memfd, shared memory and tmpfs included), "
                               "MiB; 0 = memory_limit_mb + 1024 (an ordinary allocation then fails with "
                               "MemoryError in its cell first; near a cgroup limit a kernel slows down as it "
                               "reclaims before it is killed).").tag(config=True)
    max_processes = Integer(LIMITS.max_processes,
                            help="RLIMIT_NPROC of the sandbox uid (processes and threads).").tag(config=True)
    max_file_mb = Integer(LIMITS.max_file_mb,
                          help="RLIMIT_FSIZE: the largest file a kernel may write, MiB.").tag(config=True)
    scratch_mb = Integer(LIMITS.scratch_mb,
                         help="Size of the kernel's writable working folder (tmpfs), MiB.").tag(config=True)
    cpu_seconds = Integer(LIMITS.cpu_seconds,
                          help="RLIMIT_CPU of each kernel process (on top of the per-cell timeout).").tag(config=True)
    threads = Integer(1, help="Torch/BLAS threads in a grading kernel (0 = library default).").tag(config=True)
    cost_meter = Unicode("auto", help="What the time and memory verdicts read: auto (the kernel's cgroup where "
                         "the host gives one, else /proc, and then the kernel may start no process) or proc "
                         "(/proc and no processes even where a cgroup could count them: to test that path). "
                         "Default: ATTNKIT_COST_METER, else auto."
                         ).tag(config=True)
    display_name = Unicode("Python 3 (attention kit)").tag(config=True)

    @default("cost_meter")
    def _cost_meter_default(self):
        return os.environ.get("ATTNKIT_COST_METER", "auto")  # (worker processes inherit it)
    warm_start = Bool(True, help="Inside a warm_start() scope (bwrap as root), fork kernels from a pre-imported "
                                 "interpreter (ATTNKIT_WARM_START=0 turns it off).").tag(config=True)
    sandbox_per_student = Bool(False, help="Warm start: a new sandbox for every student (started ahead) instead "
                               "of one per grading process, emptied before every kernel.").tag(config=True)
    preload = List(Unicode(), list(PRELOAD), help="Modules the warm-start interpreter imports once for all of a "
                   "student's kernels: what the notebooks and their tests import.").tag(config=True)

    client_class = DottedObjectName("attnkit.sandbox.manager.CourseKernelClient")

    @default("client_factory")
    def _client_factory_default(self):
        return CourseKernelClient

    _run_dir = None
    _uid = None
    _warm_args = None   # (workfiles, env) when this kernel may be forked by the scope's zygote

    def mode(self) -> str:
        if self.sandbox != "auto":
            why = probe(self.sandbox)
            if why:
                raise SandboxUnavailable(f"sandbox {self.sandbox!r} does not work here: {why}")
            return self.sandbox
        return detect()

    @property
    def kernel_spec(self):  # type: ignore[override]
        mode = self.mode()
        env = {"ATTNKIT_KERNEL_MEMORY_MB": str(self.memory_limit_mb), "PYTHONWARNINGS": "default"}
        if mode != "none":  # never on a student's own machine: NPROC counts all their processes
            env.update(ATTNKIT_KERNEL_NPROC=str(self.max_processes), ATTNKIT_KERNEL_FSIZE_MB=str(self.max_file_mb),
                       ATTNKIT_KERNEL_CPU_S=str(self.cpu_seconds))
        if mode != "none" and self.meters_proc():  # nothing a process did would be counted once it ended
            env[seccomp.ENV_NO_PROCESSES] = "1"
        if self.threads:
            env.update({k: str(self.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
        if os.environ.get("NBGRADER_EXECUTION"):
            env["NBGRADER_EXECUTION"] = os.environ["NBGRADER_EXECUTION"]
        # the visible checks' hints follow the course's setting, as the grader's diagnoses do (a course helper's DIAGNOSES)
        env["ATTNKIT_DIAGNOSES"] = "1" if diagnoses_setting(self.config) else "0"
        # interrupts go over the control channel: a signal to bwrap would not reach the kernel
        return KernelSpec(argv=[python_exe(), "-m", "attnkit.kernel", "-f", "{connection_file}"],
                          display_name=self.display_name, language="python", env=env,
                          interrupt_mode="message" if mode == "bwrap" else "signal")

    def meters_proc(self) -> bool:
        """Do this kernel's cost meters read /proc (no cgroup of its own counts its processes)?"""
        return self.cost_meter == "proc" or not meter_cgroups()

    def launchers(self) -> frozenset:
        """Host pids of the processes that started a cold kernel and live as long as it (in its cgroup, or at the
        top of its process tree): bubblewrap's first process (the command the provisioner started) and its one
        child, bubblewrap's init. Neither runs a notebook's code, and no process of a notebook's can become the
        first one's child (an orphan goes to the init). Empty for a forked kernel, which has no such processes,
        and outside bubblewrap (setpriv's process is the kernel itself)."""
        proc = getattr(self.provisioner, "process", None)
        if self.mode() != "bwrap" or not isinstance(proc, subprocess.Popen):
            return frozenset()
        if comm(proc.pid) != "bwrap":
            return frozenset()
        try:
            return frozenset({proc.pid, *(c for c in children(proc.pid) if comm(c) == "bwrap")})
        except OSError:  # gone: the kernel with it
            return frozenset()

    def sealed_filters(self) -> int:
        """How many seccomp filters the kernel runs under once it refuses new processes: the grader's own
        (a container's profile), the sandbox's, that one."""
        return seccomp.filters_of("self") + (1 if seccomp.program_path() else 0) + 1

    async def _async_pre_start_kernel(self, **kw):
        mode = self.mode()
        if mode != "none" and self._run_dir is None:
            self._uid = uid_slot()
            # connection file (root's, 0644) and IPC sockets (the kernel's uid creates them) in a private folder
            warm = mode == "bwrap" and self.warm_start and _ws._warm is not None
            self._run_dir = tempfile.mkdtemp(prefix=f"attnkit-run-{os.getpid()}-", dir=_ws._warm["runs"] if warm else None)
            if not warm:  # a warm kernel's folder is inside its zygote's runs folder, a tmpfs already
                mount_small_tmpfs(self._run_dir)
            os.chmod(self._run_dir, 0o711 if mode == "setpriv" else 0o755)
            ipc = os.path.join(self._run_dir, "ipc")
            os.mkdir(ipc, 0o700)
            if os.geteuid() == 0:
                os.chown(ipc, self._uid, self._uid)
            self.transport = "ipc"
            self.connection_file = os.path.join(self._run_dir, "kernel.json")
            self.ip = os.path.join(ipc, "kernel")
        kernel_cmd, kw = await super()._async_pre_start_kernel(**kw)
        if mode != "none":
            os.chmod(self.connection_file, 0o644)
            kw["stdin"] = subprocess.DEVNULL  # nothing of the grader's terminal reaches the kernel
            log = open(os.path.join(self._run_dir, "kernel.log"), "ab")
            kw["stdout"] = kw["stderr"] = log
            kw["cwd"] = self._workdir(kw.get("cwd"))
            if mode == "bwrap":
                if self.warm_start and _ws.forks_kernels() and self._run_dir.startswith(_ws._warm["runs"] + "/"):
                    # the kernel's own arguments (nbclient's extra ones too, e.g. an in-memory history)
                    args = kernel_cmd[kernel_cmd.index("attnkit.kernel") + 1:]
                    self._warm_args = (workdir_files(kw["cwd"]), dict(self.kernel_spec.env), args)
                    if os.geteuid() == 0:
                        os.chown(log.name, self._uid, self._uid)  # the forked kernel opens it as its uid
                kernel_cmd = bwrap_argv(kernel_cmd, uid=self._uid, workfiles=workdir_files(kw["cwd"]),
                                        run_dir=self._run_dir, env=self.kernel_spec.env, scratch_mb=self.scratch_mb)
                kw["env"] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            else:  # the syscall filter is loaded by a launcher in front of setpriv
                kernel_cmd = killed_first(seccomp.launcher([SETPRIV, *_setpriv_args(self._uid), "--"] + kernel_cmd))
                kw["env"] = {**self.kernel_spec.env, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                             "HOME": kw["cwd"], "TMPDIR": kw["cwd"], "PYTHONPATH": self._fallback_kit(),
                             "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
            self._drop_cgroup()
            kind, parent = memory_cgroups()
            if kind is not None and self.cgroup_limit() > 0:
                self._cgroup = KernelCgroup(self.cgroup_limit(), kind, parent, pids=self.max_processes)
                kernel_cmd = self._cgroup.wrap(kernel_cmd)  # a forked (warm) kernel is moved in at launch
        return kernel_cmd, kw

    pre_start_kernel = _async_pre_start_kernel

    def start_ahead(self, workfiles: dict, env: dict | None = None, slot: int | None = None, root: str | None = None):
        """Start the warm-start interpreter of a first kernel that will see ``workfiles`` (name ->
        path), before nbgrader asks for that kernel, so that its imports overlap other work.
        ``env``: variables the kernel will also get (nbgrader's NBGRADER_EXECUTION). Without
        ``slot``: for this process; with it, for the grading process of that worker slot, which
        gets it through ``Zygote.handover``; ``root``: the course's, where slot 0's settings are remembered for the
        next run (``warm.launch_remembered``). Returns the Zygote, or None where there is no warm start."""
        if not (self.warm_start and warm_enabled() and self.mode() == "bwrap"):
            if slot == 0 and root is not None:
                forget_first(root)
                drop_early()  # one started from the last run's settings: no batch takes it now
            return None
        env = {**self.kernel_spec.env, **(env or {})}
        if slot is None:
            return start_ahead(uid_slot(), workfiles, env, self.scratch_mb, tuple(self.preload))
        # the slot's uid is locked here and the lock handed over with the sandbox (Zygote.handover)
        if os.geteuid() != 0:
            return launch_ahead(os.getuid(), workfiles, env, self.scratch_mb, tuple(self.preload))
        if slot == 0 and root is not None:  # the batch's first: perhaps started already, from the last run's settings
            remember_first(root, workfiles, env, self.scratch_mb, tuple(self.preload))
            early = take_early(workfiles, env, self.scratch_mb, tuple(self.preload))
            if early is not None:
                return early
        uid, lock = claim_slot(slot)
        try:
            zyg = launch_ahead(uid, workfiles, env, self.scratch_mb, tuple(self.preload))
        except BaseException:
            lock.close()
            raise
        zyg.slot_lock = lock
        return zyg

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        if self._warm_args is not None and _ws.forks_kernels():
            try:
                workfiles, env, args = self._warm_args
                zyg = _zygote_for(self._uid, workfiles, env, self.scratch_mb, tuple(self.preload),
                                  self.sandbox_per_student)
                last = _ws.spawn_is_last()
                pid = zyg.call(op="spawn", argv=args, log=os.path.join(self._run_dir, "kernel.log"), last=last)["pid"]
                if last:
                    _ws.forked_last()
                if self._cgroup is not None:  # before the client connects, so before any cell runs
                    host = _host_pid(zyg.proc.pid, pid)
                    if host is None:
                        zyg.call(op="kill", pid=pid)
                        raise ZygoteError("the forked kernel could not be found to put it in its memory cgroup")
                    self._cgroup.add(host)
            except ZygoteError as exc:  # e.g. a notebook killed it: this kernel starts cold
                self.log.warning("warm start failed, starting the kernel cold: %s", exc)
            else:
                prov = self.provisioner
                prov.process, prov.pid, prov.pgid = ForkedKernel(zyg, pid), pid, None
                self._reconcile_connection_info(prov.connection_info)
                return
        await super()._async_launch_kernel(kernel_cmd, **kw)

    _launch_kernel = _async_launch_kernel

    def _workdir(self, cwd):
        """setpriv: the kernel's uid must own its working folder (a copy, not the course's)."""
        if self.mode() == "setpriv" and cwd:
            os.chown(cwd, self._uid, self._uid)
            os.chmod(cwd, 0o700)
        return cwd

    def _fallback_kit(self) -> str:
        dest = os.path.join(self._run_dir, "kit", "attnkit")
        if not os.path.isdir(dest):
            os.makedirs(dest)
            for name in KERNEL_MODULES:
                if os.path.isfile(os.path.join(KIT_DIR, name)):
                    os.makedirs(os.path.dirname(os.path.join(dest, name)), mode=0o755, exist_ok=True)
                    shutil.copy(os.path.join(KIT_DIR, name), os.path.join(dest, name))
            for d in (dest, os.path.dirname(dest), *(os.path.join(dest, os.path.dirname(n)) for n in KERNEL_MODULES)):
                os.chmod(d, 0o755)
        return os.path.dirname(dest)

    def kernel_log(self) -> str:
        try:
            with open(os.path.join(self._run_dir, "kernel.log"), "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 2000))
                return f.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    _cgroup = None

    def cgroup_limit(self) -> int:
        return self.cgroup_memory_mb or (self.memory_limit_mb + 1024 if self.memory_limit_mb > 0 else 0)

    def _drop_cgroup(self) -> None:
        if self._cgroup is not None:
            self._cgroup.remove()
            self._cgroup = None

    def oom_killed(self) -> bool:
        """Did the kernel's memory cgroup kill one of its processes?"""
        return self._cgroup is not None and self._cgroup.oom_killed()

    def death_message(self, during: str) -> str:
        """Why the kernel died ``during`` (e.g. "running this cell"), as far as the host can tell: its cgroup's
        out-of-memory kill, else the likely causes (without a cgroup of its own nothing tells them apart)."""
        if self.oom_killed():
            return (f"the Python kernel was stopped while {during}: its processes held more than its memory limit "
                    f"({self.cgroup_limit()} MiB, all its processes together)")
        return f"the Python kernel died while {during} (os._exit, a crash, too much memory or CPU time)"

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if self._uid is not None and self.mode() == "setpriv":
            kill_uid(self._uid)
        if not restart:
            self._drop_cgroup()
        if not restart and self._run_dir:
            remove_dir(self._run_dir)
            self._run_dir = None

    cleanup_resources = _async_cleanup_resources


async def run_source(workdir: str, source: str, timeout: float = 300, **traits) -> tuple[str, object]:
    """Run ``source`` in a new course kernel with ``workdir``'s files (sandboxed; forked where a
    warm_start() scope is open): (its stdout, with any error as "ename: evalue"; the provisioner's
    process object, a ForkedKernel when it was forked). For benchmarks and the kit's tests."""
    km = CourseKernelManager(**traits)
    await km.start_kernel(cwd=workdir)
    try:
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        msg_id, out = kc.execute(source), []
        while True:
            msg = await kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append(f"{msg['content']['ename']}: {msg['content']['evalue']}\n")
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        kc.stop_channels()
        return "".join(out), km.provisioner.process
    finally:
        await km.shutdown_kernel(now=True)


def diagnoses_setting(config) -> bool:
    """c.CourseExecute.diagnoses as configured (the trait's default otherwise)."""
    set_to = config.CourseExecute.get("diagnoses") if "CourseExecute" in config else None
    return bool(DIAGNOSES_DEFAULT if set_to is None else set_to)
