"""The thread governor: /proc/stat accounting, the rule, and a real busy process beside it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mobilevit.engine.threads import (
    ThreadGovernor,
    busy_seconds,
    own_seconds,
    process_seconds,
    thread_governor,
    threads_for,
)

HAS_PROC_STAT = Path("/proc/stat").is_file()


def test_threads_are_the_cores_left_at_least_one():
    assert threads_for(2, 0.0) == 2
    assert threads_for(2, 0.3) == 2
    assert threads_for(2, 0.9) == 1
    assert threads_for(2, 3.0) == 1
    assert threads_for(8, 2.2) == 6


def test_busy_seconds_reads_only_the_given_cores(tmp_path):
    stat = tmp_path / "stat"
    hz = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(
        f"cpu  {9 * hz} 0 0 0 0 0 0 0 0 0\n"
        f"cpu0 {2 * hz} 0 {hz} {50 * hz} {hz} 0 0 0 {hz} 0\n"
        f"cpu1 {4 * hz} 0 0 {50 * hz} 0 0 0 0 0 0\n"
        f"cpu2 {3 * hz} 0 0 0 0 0 0 0 0 0\n"
    )
    assert busy_seconds([0], stat) == pytest.approx(3.0)  # guest time is already in user; iowait is idle
    assert busy_seconds([0, 1], stat) == pytest.approx(7.0)
    assert busy_seconds([0], tmp_path / "missing") is None


def test_without_proc_stat_the_governor_keeps_the_thread_count(monkeypatch, tmp_path):
    monkeypatch.setattr("mobilevit.engine.threads.PROC_STAT", tmp_path / "missing")
    governor = ThreadGovernor(interval=0.0)
    assert not governor.enabled and governor.update() == torch.get_num_threads()


class FakeMachine:
    """The clocks the governor reads: wall time, this process's CPU time, and every process's busy time."""

    def __init__(self, monkeypatch) -> None:
        self.wall = self.own = self.busy = 0.0
        monkeypatch.setattr("mobilevit.engine.threads.time.monotonic", lambda: self.wall)
        monkeypatch.setattr("mobilevit.engine.threads.own_seconds", lambda: self.own)
        monkeypatch.setattr("mobilevit.engine.threads.busy_seconds", lambda cores: self.busy)

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.wall += seconds
        self.own += seconds * own_cores
        self.busy += seconds * (own_cores + other_cores)


def test_the_governor_follows_the_cores_others_use(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="mobilevit.engine.threads")
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    machine = FakeMachine(monkeypatch)
    try:
        governor = ThreadGovernor(interval=2.0, cores=[0, 1])
        machine.run(1.0, own_cores=1.0, other_cores=1.0)
        assert governor.update() == 2  # not yet: an interval has not passed
        machine.run(1.5, own_cores=1.0, other_cores=1.0)
        assert governor.update() == 1 and torch.get_num_threads() == 1
        assert "compute threads 2 -> 1: other processes keep 1.0 of 2 cores busy" in caplog.text
        machine.run(3.0, own_cores=1.0, other_cores=0.1)
        assert governor.update() == 2 and torch.get_num_threads() == 2
        machine.run(3.0, own_cores=2.0, other_cores=0.2)  # our own threads do not count
        assert governor.update() == 2
    finally:
        torch.set_num_threads(previous)


def test_the_governor_never_exceeds_torchs_own_thread_count(monkeypatch):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 or one physical core would set it
    machine = FakeMachine(monkeypatch)
    try:
        governor = ThreadGovernor(interval=1.0, cores=[0, 1, 2, 3])
        machine.run(2.0, own_cores=1.0, other_cores=0.0)
        assert governor.update() == 1
    finally:
        torch.set_num_threads(previous)


def spin(seconds: float) -> subprocess.Popen:
    """A child process that keeps a core busy for ``seconds``."""
    loop = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", loop])


@pytest.mark.skipif(not HAS_PROC_STAT, reason="no /proc/stat: the governor is off on this system")
def test_a_busy_process_is_measured_as_others():
    """A process that is not ours, spinning on a core, shows up in /proc/stat as the other processes'
    time: at least the CPU time /proc gives that process itself over the same window."""
    # Started by a shell that exits at once, so that it is not a child of this process.
    loop = f"{sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!"
    pid = int(subprocess.run(["sh", "-c", loop], capture_output=True, text=True, check=True).stdout)
    try:
        time.sleep(0.2)
        governor, start = ThreadGovernor(interval=0.5), process_seconds(pid)
        time.sleep(1.0)
        spun = process_seconds(pid) - start
        others = governor.others()
        wall = 1.0
    finally:
        os.kill(pid, signal.SIGKILL)
    assert spun > 0.1 and others is not None
    assert others >= 0.9 * spun / (wall + 0.2), (others, spun)


@pytest.mark.skipif(not HAS_PROC_STAT, reason="no /proc/stat: the governor is off on this system")
def test_children_such_as_dataloader_workers_count_as_ours():
    """A child process's CPU time is this process's own, while it runs and after it has ended."""
    before = own_seconds()
    child = spin(1.0)
    time.sleep(0.6)
    child_time = process_seconds(child.pid)
    tick = 1 / os.sysconf("SC_CLK_TCK")  # the resolution of both figures
    assert child_time > 0.05
    assert own_seconds() - before >= child_time - tick
    child.wait()  # reaped: its time moves to os.times()'s children fields
    assert own_seconds() - before >= child_time - tick


def test_threads_or_omp_num_threads_fix_the_count_and_gpus_need_no_governor(monkeypatch):
    previous = torch.get_num_threads()
    try:
        assert thread_governor(1, torch.device("cpu")) is None and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert thread_governor(None, torch.device("cuda")) is None
        assert isinstance(thread_governor(None, torch.device("cpu")), ThreadGovernor)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert thread_governor(None, torch.device("cpu")) is None
    finally:
        torch.set_num_threads(previous)
