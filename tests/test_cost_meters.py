"""The kernel's cost meters (attnkit/grader/meter.py: a cgroup v2 folder stood in for by files, and a real cgroup
where this host gives one) and the sizes the time statistic measures (attnkit/grader/growth.py, on scripted costs)."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import types

import pytest

from attnkit import sandbox
from attnkit.grader import growth
from attnkit.grader.meter import CgroupMeter


def _v2_folder(tmp_path, usage_usec=1500, current=3 << 20, peak=7 << 20):
    """A folder with a v2 cgroup's files as the kernel shows them (cpu.stat, memory.current, memory.peak)."""
    folder = tmp_path / "k1"
    folder.mkdir()
    (folder / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec 1000\nsystem_usec 500\n")
    (folder / "memory.current").write_text(f"{current}\n")
    (folder / "memory.peak").write_text(f"{peak}\n")
    return folder


def test_the_v2_meter_reads_cpu_stat_and_resets_the_peak_through_the_file_it_holds(tmp_path):
    """On cgroup v2, does the meter take the CPU time from cpu.stat's usage_usec, reset the peak by writing "reset"
    to memory.peak through the one file it holds open (Linux resets the peak that file then reads), return
    memory.current as the base, and read the peak through that same file?"""
    folder = _v2_folder(tmp_path)
    cg = sandbox.KernelCgroup.adopt(str(folder))
    assert cg.kind == "v2" and cg.cpu_path is None
    meter = CgroupMeter.of(cg)
    assert meter is not None and meter.kind == "v2" and meter.counts_children and meter.forks() is None
    assert (folder / "memory.peak").read_text().startswith("reset")  # opening it is the first reset
    assert meter.cpu_ns() == 1500 * 1000
    (folder / "cpu.stat").write_text("usage_usec 2750\nuser_usec 2000\nsystem_usec 750\n")
    assert meter.cpu_ns() == 2750 * 1000

    (folder / "memory.peak").write_text("")  # (what the kernel shows that file is its business: see what is written)
    (folder / "memory.current").write_text(f"{5 << 20}\n")
    assert meter.reset_peak() == 5 << 20
    assert "reset" in (folder / "memory.peak").read_text(errors="replace")
    with open(folder / "memory.peak", "r+") as f:  # the kernel: this file's peak since the reset
        f.write(f"{9 << 20}\n".ljust(16, " "))
    assert meter.peak_bytes() == 9 << 20


@pytest.mark.parametrize("missing", ["cpu.stat", "memory.peak"])
def test_the_v2_meter_is_refused_where_the_cpu_time_or_a_resettable_peak_is_missing(tmp_path, missing):
    """Where cpu.stat or memory.peak is missing (memory.peak came with Linux 5.19, its reset with 6.12), is there no
    cgroup meter (the kernel is then measured through /proc and refused new processes), rather than one that reads
    zeros?"""
    folder = _v2_folder(tmp_path)
    (folder / missing).unlink()
    if missing == "memory.peak":
        (folder / missing).mkdir()  # (present but not writable: opening it for writing fails, as on a kernel < 6.12)
    assert CgroupMeter.of(sandbox.KernelCgroup.adopt(str(folder))) is None


HOLD = r"""
import sys
block = bytearray(200 << 20)  # 200 MB, touched, then given back
for i in range(0, len(block), 4096):
    block[i] = 1
del block
print("freed", flush=True)
sys.stdin.readline()
small = bytearray(40 << 20)
for i in range(0, len(small), 4096):
    small[i] = 1
print("held", flush=True)
sys.stdin.readline()
"""


@pytest.mark.skipif(not sandbox.meter_cgroups(), reason="no per-kernel cgroup here")
def test_a_reset_peak_forgets_what_the_kernel_held_before():
    """After 200 MB were used and given back, does resetting the kernel's cgroup peak (v1 max_usage_in_bytes, v2
    memory.peak) make the next reading show only the 40 MB that came after, not the 200 MB before?"""
    kind, parent = sandbox.memory_cgroups()
    cg = sandbox.KernelCgroup(1024, kind, parent)
    proc = subprocess.Popen(cg.wrap([sys.executable, "-c", HOLD]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "freed\n"
        meter = CgroupMeter.of(cg)
        if meter is None:
            pytest.skip(f"this host's {kind} cgroup cannot reset a peak (cgroup v2 before Linux 6.12)")
        assert meter.peak_bytes() >= 200 << 20  # (the peak before the reset: the 200 MB)
        assert list(meter.procs()) == [proc.pid]  # the processes in the kernel's cgroup, as the host sees them
        base = meter.reset_peak()
        assert meter.peak_bytes() - base < 8 << 20
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "held\n"
        rise = meter.peak_bytes() - base
        assert 38 << 20 <= rise < 120 << 20, rise / 2 ** 20
    finally:
        proc.kill()
        proc.wait()
        cg.remove()


class _Procs:
    """A meter whose processes are scripted: each call to procs() takes the next entry (the last one stays)."""

    def __init__(self, *readings):
        self.readings, self.resets, self.calls = list(readings), [], 0

    def procs(self):
        self.calls += 1
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]

    def reset_peak(self):
        self.resets.append(len(self.readings))
        return 0


def _measured(meter):
    m = object.__new__(growth.Measured)  # (no kernel: only the settling before a memory reading is exercised)
    m.meter, m.resident = meter, None
    return m


KERNEL, CHILD, HELPER = {1: 100}, {5: 900}, {3: 500}


def test_a_memory_reading_waits_until_the_process_a_call_left_has_exited():
    """A forked child of a measured call is charged its memory until it has exited: does each memory reading wait
    for every process but the kernel (its oldest) to be gone before the peak is reset, at the first reading as at
    the next?"""
    meter = _Procs({**KERNEL, **CHILD}, {**KERNEL, **CHILD}, KERNEL)
    m = _measured(meter)
    m._settle()
    assert m.resident == set(KERNEL) and meter.readings == [KERNEL]
    meter.readings = [{**KERNEL, **CHILD}, {**KERNEL, **CHILD}, {**KERNEL, **CHILD}, KERNEL]
    m._settle()
    assert meter.readings == [KERNEL]


def test_a_process_a_call_left_running_makes_the_memory_reading_inconclusive(monkeypatch):
    """A process a measured call started that is still running when the next reading is due (it would carry its
    memory into that call's base): is the measurement inconclusive, saying so, rather than read?"""
    monkeypatch.setattr(growth, "SETTLE_S", 0.05)
    m = _measured(_Procs(KERNEL))
    m._settle()
    m.meter = _Procs({**KERNEL, **CHILD})
    with pytest.raises(growth.Inconclusive, match="still running 0.05 s after the call returned"):
        m._settle()


def test_a_process_started_before_the_test_is_allowed_in_every_reading(monkeypatch):
    """A process the notebook started before the test (its memory in every base alike) that is still there after
    the wait at the first reading: is it allowed, so the memory test can still give a verdict?"""
    monkeypatch.setattr(growth, "SETTLE_S", 0.05)
    m = _measured(_Procs({**KERNEL, **HELPER}))
    m._settle()
    assert m.resident == set(KERNEL) | set(HELPER)
    m._settle()  # no exception: only allowed processes


def test_the_processes_that_started_a_kernel_are_allowed_at_the_first_reading_without_a_wait(monkeypatch):
    """A cold kernel's cgroup also holds bubblewrap's two processes, older than the kernel, which never exit while it
    runs: are the meter's launchers allowed at once at the first reading (not after SETTLE_S, on every memory
    test), while a process of the notebook's, younger than its kernel, is still waited for?"""
    monkeypatch.setattr(growth, "SETTLE_S", 0.5)
    cold = {10: 100, 11: 101, 12: 102}
    meter = _Procs(cold)
    meter.launchers = frozenset({10, 11})
    m = _measured(meter)
    m._settle()
    assert m.resident == set(cold) and meter.calls == 1  # read once: nothing waited for
    meter = _Procs({**cold, 20: 400}, {**cold, 20: 400}, cold)
    meter.launchers = frozenset({10, 11})
    m = _measured(meter)
    m._settle()
    assert m.resident == set(cold) and meter.calls == 3  # until the notebook's process had gone


class _Km:
    """What kernel_meter reads of a kernel manager with no cgroup for its kernel (the /proc meters)."""

    def __init__(self, uid):
        self._uid, self.provisioner = uid, types.SimpleNamespace(process=types.SimpleNamespace(pid=4242))

    def meters_proc(self):
        return True

    def sealed_filters(self):
        return 3

    def launchers(self):
        return frozenset({4242, 4243})


def test_a_kernel_that_keeps_the_graders_uid_is_metered_by_its_process_tree_not_by_every_process_of_that_uid():
    """An unprivileged grader's kernel keeps the grader's uid (bubblewrap's user namespace), which the grader, the
    batch, the other workers and the user's every other process share: is that kernel metered as its process tree
    (with bubblewrap's two processes as its launchers), while a kernel with a uid of its own (root's sandbox slots)
    is metered by that uid?"""
    from attnkit.grader import channel
    from attnkit.grader.meter import KernelMeter

    mine = channel.kernel_meter(types.SimpleNamespace(km=_Km(os.getuid())))
    assert isinstance(mine, KernelMeter) and mine.uid is None and mine.root_pid == 4242
    assert mine.launchers == {4242, 4243} and mine.sealed_filters == 3
    slot = channel.kernel_meter(types.SimpleNamespace(km=_Km(os.getuid() + 2_000_000)))
    assert isinstance(slot, KernelMeter) and slot.uid == os.getuid() + 2_000_000 and slot.root_pid is None


BWRAP = sandbox.detect() == "bwrap" and sandbox.meter_cgroups() and os.geteuid() == 0


@pytest.mark.skipif(not BWRAP or os.environ.get("ATTNKIT_COST_METER") == "proc",
                    reason="a cold kernel with a cgroup of its own needs bwrap as root and cgroups")
def test_a_cold_kernels_first_memory_reading_waits_for_the_notebooks_processes_not_for_bubblewraps(tmp_path,
                                                                                                    monkeypatch):
    """In a real cold kernel's cgroup: are bubblewrap's two processes, and only they, the kernel's launchers (not the
    kernel, not a process of the notebook's even if it names itself bwrap), so that the first memory reading takes
    no wait where the notebook left nothing running, and still waits for what it left?"""
    import asyncio
    import time

    from attnkit.grader import channel

    monkeypatch.setattr(growth, "SETTLE_S", 5.0)
    os.chmod(tmp_path, 0o755)

    async def run():
        km = sandbox.CourseKernelManager()
        await km.start_kernel(cwd=str(tmp_path))
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            ex = types.SimpleNamespace(km=km, kc=kc)
            meter = channel.kernel_meter(ex)
            assert isinstance(meter, CgroupMeter)
            now = meter.procs()
            assert len(now) == 3 and len(meter.launchers) == 2 and meter.launchers < set(now), (now, meter.launchers)
            kernel = min(set(now) - meter.launchers)
            assert open(f"/proc/{kernel}/comm").read().strip() != "bwrap"
            m = _measured(meter)
            t0 = time.monotonic()
            m._settle()
            assert time.monotonic() - t0 < 1.0 and m.resident == set(now)
            # a process of the notebook's, named as bubblewrap is, still there at the first reading: waited for
            forked = ("import ctypes, os, time\nif os.fork() == 0:\n    ctypes.CDLL(None).prctl(15, b'bwrap', 0, 0, 0)\n"
                      "    time.sleep(2)\n    os._exit(0)\n")
            assert await channel.execute(ex, forked, time.monotonic() + 60) == "idle"
            child = set(meter.procs()) - set(now)
            assert len(child) == 1 and open(f"/proc/{min(child)}/comm").read().strip() == "bwrap"
            meter = channel.kernel_meter(ex)  # the launchers as a hidden region after that cell would find them
            assert meter.launchers == km.launchers() and not child & meter.launchers
            m = _measured(meter)
            t0 = time.monotonic()
            m._settle()  # (had it not waited for the child's exit, the child would be resident, or the wait 5 s)
            assert time.monotonic() - t0 < 4.5 and m.resident == set(now)
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    asyncio.run(run())


class Scripted:
    """What growth._measure reads of growth.Measured, with the cost of a call at size n given by ``cost(n)``."""

    def __init__(self, cost):
        self.cost, self.overhead, self.rng, self.sizes = cost, 0.0, random.Random(0), []

    def time(self, n):
        self.sizes.append(n)
        return self.cost(n)


SCHEDULE = dict(start=256, floor_s=1e-3, max_call_s=0.1, hard_call_s=1.0, max_n=8192, doublings=4, rounds=7,
                threshold=1.5, grey=0.15, share=0.5, max_sizes=5)


def test_a_statistic_not_far_from_the_threshold_is_measured_one_size_further():
    """An N x N matrix built in a forked child costs, as measured, about 17 ms + 12.7 us N + 7.4 ns N^2: from a top
    size of 4096 the statistic reads 1.70; is the next size measured (where a call still costs under a second), so
    the verdict comes from 8192, at 1.83, and is no size past the cap measured?"""
    cost = lambda n: 0.017 + 1.27e-5 * n + 7.4e-9 * n * n
    m = Scripted(cost)
    sizes, _times, fit, k = growth._measure(m, **SCHEDULE)
    assert sizes[-1] == 8192 and 8192 in m.sizes and k > 1.8, (sizes, k)
    capped = Scripted(cost)
    assert growth._measure(capped, **{**SCHEDULE, "max_n": 4096})[0][-1] == 4096 and max(capped.sizes) == 4096


def test_a_statistic_far_from_the_threshold_measures_no_size_more():
    """Does a plain linear cost (1 ms + 4 us N) get its verdict from the sizes the schedule reached, with no size
    measured past them?"""
    m = Scripted(lambda n: 0.001 + 4e-6 * n)
    sizes, _times, _fit, k = growth._measure(m, **{**SCHEDULE, "max_n": 2 ** 16})
    assert k < 1.01 and max(m.sizes) == sizes[-1], (sizes, k)


def test_a_linear_looking_measurement_stopped_early_by_an_expensive_call_measures_on():
    """An N x N matrix built in a forked child once looked linear up to 2048 beside two busy loops (its fork's
    cost hid the N^2 below it), and the doubling stopped there because a call passed ``max_call_s``. Is the next
    size measured, where the N^2 shows, so the verdict is quadratic?"""
    seen = []

    def cost(n):  # the first two calls at 2048 pass max_call_s; the rounds' later calls there do not
        seen.append(n)
        slow = n == 2048 and seen.count(2048) <= 2
        return 0.02 + 3.5e-5 * n + (3e-8 if n > 2048 else 1e-9) * n * n + (0.02 if slow else 0.0)
    m = Scripted(cost)
    sizes, _times, _fit, k = growth._measure(m, **SCHEDULE)
    assert sizes[-1] >= 4096 and k > 1.5, (sizes, k)


def test_an_expensive_linear_answer_measures_on_only_while_a_call_stays_affordable():
    """A right linear answer with a 150 ms constant: is its verdict linear, and is no size measured where the fit
    says a call would pass ``hard_call_s``?"""
    m = Scripted(lambda n: 0.15 + 1e-4 * n)
    sizes, _times, _fit, k = growth._measure(m, **{**SCHEDULE, "max_n": 2 ** 16})
    assert k < 1.1 and max(m.sizes) == sizes[-1] and 0.15 + 1e-4 * sizes[-1] < 1.0, (sizes, k)


class _Votes:
    """measure_time_growth with each measurement's statistic given in turn (no kernel)."""

    def __init__(self, monkeypatch, statistics):
        self.left, self.taken = list(statistics), 0
        monkeypatch.setattr(growth, "Measured", lambda *a, **k: type("M", (), {"cuda": False})())

        def measure(_m, **_kw):
            self.taken += 1
            k = self.left.pop(0)
            return [1024, 2048, 4096], [0.01, 0.02, 0.04], (0.0, 1e-5, 0.0), k
        monkeypatch.setattr(growth, "_measure", measure)


@pytest.mark.parametrize("statistics, verdict, taken", [
    ([1.02], "linear", 1),
    ([1.9, 1.95], "quadratic", 2),
    ([1.9, 1.1, 1.92], "quadratic", 3),   # one spoiled measurement of a quadratic does not pass it
    ([1.6, 1.05, 1.03], "linear", 3),     # nor does one of a linear answer fail it
])
def test_a_quadratic_verdict_needs_two_of_at_most_three_measurements(monkeypatch, statistics, verdict, taken):
    """Is the verdict the one two measurements agree on, taking a third only where the first two disagree?"""
    votes = _Votes(monkeypatch, statistics)
    r = growth.measure_time_growth(None, None, None, None, seed=0)
    assert (r["verdict"], votes.taken, r["tries"]) == (verdict, taken, taken)


def test_a_constant_the_rounds_leave_ahead_at_the_top_size_measures_on_toward_the_cap():
    """A right linear answer with a 30 ms constant: the doubling stopped at 4096 where its N-dependent part was
    just over half, and the rounds' least times then left it just under half. Is the next size measured, so
    the verdict is linear, not inconclusive?"""
    seen = []

    def cost(n):  # the first two calls at 4096 a little slower than the rounds' later ones
        seen.append(n)
        return 0.0302 + 6.7e-6 * n + (0.004 if n == 4096 and seen.count(4096) <= 2 else 0.0)
    m = Scripted(cost)
    sizes, _times, _fit, k = growth._measure(m, **SCHEDULE)
    assert sizes[-1] == 8192 and k < 1.1, (sizes, k)


def test_where_proc_lists_no_children_the_tree_meter_still_reads_the_whole_tree(monkeypatch):
    """Where /proc lists no children (a kernel built without CONFIG_PROC_CHILDREN: no /proc/<pid>/task/<tid>/children),
    does the tree meter still find every process under the kernel's first one (their parents read instead), not
    that process alone (whose memory would read near zero, and an N x N answer keep the memory points)?"""
    import builtins
    import subprocess
    import sys

    from attnkit import procs
    from attnkit.grader.meter import KernelMeter

    code = ("import subprocess, time; p = subprocess.Popen(['sleep', '60']); print('up', flush=True); time.sleep(60)")
    top = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert top.stdout.readline().strip() == "up"
        listed = sorted(KernelMeter(root_pid=top.pid).pids())
        assert len(listed) == 2, listed  # the interpreter and its sleep
        real_open, real_exists = builtins.open, os.path.exists

        def no_children_open(path, *args, **kwargs):
            if str(path).endswith("/children"):
                raise FileNotFoundError(2, "No such file or directory", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", no_children_open)
        monkeypatch.setattr(os.path, "exists", lambda p: not str(p).endswith("/children") and real_exists(p))
        monkeypatch.setattr(procs, "_listed", None)  # probed again, on this "kernel"
        assert not procs.lists_children()
        assert sorted(KernelMeter(root_pid=top.pid).pids()) == listed
        assert set(procs.children(top.pid)) == set(listed) - {top.pid}
    finally:
        top.kill()
        top.wait()
