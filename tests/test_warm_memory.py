"""Warm start only where the memory has room for a zygote beside each kernel (attnkit.sandbox.warm.cold_for_memory;
the batch's choice in attnkit.batch.driver). The kernels themselves: tests/test_warm_start.py."""
from __future__ import annotations

import os
import shutil

import pytest

from attnkit import sandbox
from attnkit.authoring.release import generate
from attnkit.batch import driver, workers
from attnkit.course import Course
from attnkit.sandbox import limits, warm
from harness import ASSIGNMENT, ROOT

EACH = warm.WARM_MB_PER_WORKER


def test_warm_start_needs_room_for_a_zygote_beside_each_kernel(monkeypatch):
    """Is warm start off where the memory limit this process lives under (a container's) or the machine's memory
    leaves a grading process less than WARM_MB_PER_WORKER, does the reason name the figure and where it came from,
    and does a course's explicit ATTNKIT_WARM_START hold on any host?"""

    monkeypatch.setattr(limits, "memory_limit_mb", lambda: 768)
    assert limits.memory_mb() == (768, "the memory limit of the cgroup this runs in")
    why = warm.too_little_memory(1)
    assert why.startswith("768 MB (the memory limit of the cgroup this runs in)") and f"{EACH} MB" in why, why
    monkeypatch.setattr(limits, "memory_limit_mb", lambda: 2 * EACH)
    assert warm.too_little_memory(2) == ""
    why = warm.too_little_memory(3)
    assert why.startswith(f"{2 * EACH // 3} MB for each of 3 grading processes"), why
    monkeypatch.setattr(limits, "memory_limit_mb", lambda: None)  # no limit: the machine's memory decides
    have, where = limits.memory_mb()
    assert where == "this machine's memory" and have == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    assert (warm.too_little_memory(1) == "") == (have >= EACH)

    monkeypatch.setattr(limits, "memory_limit_mb", lambda: 768)
    # a batch process that grades its one student itself has no forked grading process's copy of its pages
    assert warm.too_little_memory(1, in_process=True) == "" and warm.too_little_memory(2, in_process=True)
    monkeypatch.setattr(limits, "memory_limit_mb", lambda: warm.WARM_MB_IN_PROCESS - 1)
    assert f"under the {warm.WARM_MB_IN_PROCESS} MB" in warm.too_little_memory(1, in_process=True)
    monkeypatch.setattr(limits, "memory_limit_mb", lambda: 768)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv(warm.ENV_WARM, raising=False)
    assert not warm.warm_enabled()
    monkeypatch.setenv(warm.ENV_WARM, "1")
    assert warm.warm_enabled()
    monkeypatch.setenv(warm.ENV_WARM, "0")
    assert not warm.warm_enabled()
    monkeypatch.setenv(warm.ENV_WARM, " ")  # set empty (an env file's KEY=): not asked, the memory decides
    assert not warm.warm_enabled()
    monkeypatch.setattr(limits, "memory_limit_mb", lambda: 4 * EACH)
    monkeypatch.delenv(warm.ENV_WARM)
    assert warm.warm_enabled() == (have >= EACH) and warm.warm_enabled(4) == (have >= 4 * EACH)




@pytest.mark.parametrize("asked", [None, "", "1", "0"])
@pytest.mark.parametrize("configured", [True, False], ids=["warm-configured", "warm-configured-off"])
def test_a_batch_short_of_memory_starts_its_kernels_cold_and_says_why(monkeypatch, capsys, asked, configured):
    """Where the batch's grading processes would have too little memory for warm start, does ./kit autograde's
    batch say so once (unless the course turned warm start off, or ATTNKIT_WARM_START asks for either), tell its
    grading processes (ATTNKIT_WARM_START=0 in their environment) and start no sandbox ahead for them?"""
    course = Course(ROOT).scratch_copy(notebooks=["q12_scaled_dot_product"])
    try:
        if not configured:
            with open(course.path("course_config.py"), "a") as f:
                f.write("\nc.CourseKernelManager.warm_start = False\n")
        generate(course, ASSIGNMENT)
        course.path("submitted", "someone", ASSIGNMENT).mkdir(parents=True)
        if asked is None:
            monkeypatch.delenv(warm.ENV_WARM, raising=False)
        else:
            monkeypatch.setenv(warm.ENV_WARM, asked)
        monkeypatch.setattr(sandbox.detection, "detect", lambda: "bwrap")
        monkeypatch.setattr(limits, "sweep", lambda: None)
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        monkeypatch.setattr(limits, "memory_limit_mb", lambda: 768)
        dropped = []
        monkeypatch.setattr(warm, "drop_early", lambda: dropped.append(True))
        batches = []
        monkeypatch.setattr(workers, "run_batch", lambda *a, **k: batches.append((a, k)) or [])
        driver.autograde(course, ASSIGNMENT, ["someone"], workers=1, progress=False)
        (args, kw), = batches
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warm start:")]
        if asked in (None, "") and configured:
            assert said == [f"warm start: off: {warm.too_little_memory(1)}; kernels start cold "
                            f"({warm.ENV_WARM}=1 turns it on)"]
            assert args[4].get(warm.ENV_WARM) == "0" and kw["ahead"] is None and dropped
        else:
            assert said == [] and warm.ENV_WARM not in args[4] and kw["ahead"] is not None and not dropped
    finally:
        shutil.rmtree(course.root, ignore_errors=True)


@pytest.mark.parametrize("memory_mb", [768, warm.WARM_MB_IN_PROCESS - 1])
def test_a_batch_that_grades_its_one_student_itself_keeps_warm_kernels_in_less_memory(monkeypatch, capsys, memory_mb):
    """Where ./kit autograde grades its one student in its own process (ATTNKIT_GRADE_IN_PROCESS, as Gradescope's
    runner asks), do Gradescope's 768 MB keep warm kernels (said to the process's own checks: ATTNKIT_WARM_START=1,
    a sandbox started ahead), and does less than WARM_MB_IN_PROCESS still start them cold and say why?"""
    course = Course(ROOT).scratch_copy(notebooks=["q12_scaled_dot_product"])
    try:
        generate(course, ASSIGNMENT)
        course.path("submitted", "someone", ASSIGNMENT).mkdir(parents=True)
        monkeypatch.delenv(warm.ENV_WARM, raising=False)
        monkeypatch.setenv(workers.IN_PROCESS_ENV, "1")
        monkeypatch.setattr(workers, "can_fork", lambda: True)  # (the test runner's threads)
        monkeypatch.setattr(sandbox.detection, "detect", lambda: "bwrap")
        monkeypatch.setattr(limits, "sweep", lambda: None)
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        monkeypatch.setattr(limits, "memory_limit_mb", lambda: memory_mb)
        monkeypatch.setattr(warm, "drop_early", lambda: None)
        batches = []
        monkeypatch.setattr(workers, "run_batch", lambda *a, **k: batches.append((a, k)) or [])
        driver.autograde(course, ASSIGNMENT, ["someone"], workers=1, progress=False, fork=True)
        (args, kw), = batches
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warm start:")]
        if memory_mb >= warm.WARM_MB_IN_PROCESS:
            assert said == [] and args[4].get(warm.ENV_WARM) == "1" and kw["ahead"] is not None
        else:
            assert said == [f"warm start: off: {warm.too_little_memory(1, in_process=True)}; kernels start cold "
                            f"({warm.ENV_WARM}=1 turns it on)"]
            assert args[4].get(warm.ENV_WARM) == "0" and kw["ahead"] is None
        assert workers.grades_in_process(1, 1, fork=True) and not workers.grades_in_process(2, 1, fork=True)
        assert not workers.grades_in_process(1, 2, fork=True) and not workers.grades_in_process(1, 1, fork=False)
    finally:
        shutil.rmtree(course.root, ignore_errors=True)


def test_a_sandbox_the_batch_keeps_for_itself_leaves_its_slot_lock_with_the_process(monkeypatch, tmp_path):
    """Where the batch grades its one student itself (warm.keep_here), does the slot's lock pass to the process, so
    that stopping that zygote (a kill it could not clean, a restart) never frees the uid while this process's
    kernels may still run as it (another grading process on the host could claim it: a shared process limit, and a
    /proc meter that counts that uid's every process)?"""
    from attnkit.sandbox import slots

    monkeypatch.setattr(slots, "_held_slot", None)
    monkeypatch.setattr(warm, "_next", None)
    lock = open(tmp_path / "slot", "w")
    zyg = warm.Zygote.__new__(warm.Zygote)
    zyg.key, zyg.slot_lock, zyg.sock, zyg.proc, zyg.home = (2_000_007, "", (), 0, ()), lock, None, None, str(tmp_path)
    warm.keep_here(zyg)
    assert warm._next is zyg and slots.uid_slot() == 2_000_007 or os.geteuid() != 0
    assert slots._held_slot == (2_000_007, lock) and zyg.slot_lock is None
    zyg.stop()
    assert not lock.closed, "stopping the zygote let go of the slot this process still grades as"
    lock.close()
