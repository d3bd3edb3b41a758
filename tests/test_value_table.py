"""serve.vllm_ext.value_table: the shared-memory side channel of the value read-out (the engine path is in
tests/test_value_contract.py, where values read through it equal an HF forward pass)."""

from __future__ import annotations

import math
import os

import numpy as np

from serve.vllm_ext.value_table import ROW_KEY, TABLE_KEY, TableWriter, ValueTable


def test_rows_are_handed_out_fifo_nan_filled_and_run_out():
    t = ValueTable("unit", rows=3, positions=8)
    try:
        rows = [t.acquire() for _ in range(3)]
        assert sorted(rows) == [0, 1, 2] and t.acquire() is None  # exhausted: the caller takes the logprobs path
        t.table[rows[0], :2] = 1.5
        t.release(rows[0])
        again = t.acquire()
        assert again == rows[0]  # the only free row
        values, entropies = t.read(again, 0, 2)
        assert all(math.isnan(v) for v in values + entropies)  # a reused row starts unwritten
        assert t.extra_args(again) == {TABLE_KEY: t.path, ROW_KEY: again}
    finally:
        t.close()
    assert not os.path.exists(t.path)


def test_a_second_mapping_writes_what_the_gateway_reads():
    """The worker attaches by path (its own mapping, as in vLLM's worker process) and writes a step's rows in one
    scatter; positions past the table are dropped, never raised."""
    t = ValueTable("unit", rows=4, positions=5)
    try:
        a, b = t.acquire(), t.acquire()
        w = TableWriter(positions=5)
        w.write(t.path, np.array([a, b]), np.array([0, 0]), np.array([[0.25, 1.0], [-0.5, 2.0]], dtype=np.float32))
        w.write(t.path, np.array([a, b]), np.array([1, 9]), np.array([[0.75, 3.0], [9.0, 9.0]], dtype=np.float32))
        assert t.read(a, 0, 2) == ([0.25, 0.75], [1.0, 3.0])
        values, _ = t.read(b, 0, 2)
        assert values[0] == -0.5 and math.isnan(values[1])
        assert t.read(a, 1, 1) == ([], [])
    finally:
        t.close()


def test_a_killed_gateways_table_is_removed_by_the_next_one():
    """SIGKILL leaves a gateway's file in /dev/shm; the next table made on this machine unlinks it (its pid is
    gone) and leaves a live process's table alone."""
    import signal
    import subprocess
    import sys

    from serve.vllm_ext.value_table import _shm_dir

    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from serve.vllm_ext.value_table import ValueTable; t = ValueTable('killed', rows=2, positions=4); "
        "print(t.path, flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    path = child.stdout.readline().strip()
    assert os.path.exists(path)
    mine = ValueTable("alive", rows=2, positions=4)
    try:
        assert os.path.exists(path)  # its owner still runs: kept
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert os.path.exists(path)  # nobody unlinked it
        other = ValueTable("next", rows=2, positions=4)
        assert not os.path.exists(path)
        assert os.path.exists(mine.path) and str(_shm_dir()) in path
        other.close()
    finally:
        mine.close()
        child.kill()
