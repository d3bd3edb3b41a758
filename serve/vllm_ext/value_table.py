"""The value read-out's side channel: a table in shared memory that vLLM's worker writes and the gateway reads.

Through vLLM's logprobs (`logprob_token_ids`, see `serve.vllm_ext.value_slots`) a value travels worker → engine core →
API process as per-request logprob lists: sliced, msgpack'd, re-assembled and turned into Python objects for
every request at every step — 5–15 µs per request per step on these cores, ~10% of a tiny model's decode step
(benchmarks/results/readout.json). vLLM has no other public way out of the worker for an extra per-token
scalar, so this one is ours: the gateway gives each request a row of a float32 table [rows, positions, 2]
(value, entropy) in a file under /dev/shm and names the file and the row in `SamplingParams.extra_args`; the
worker (`serve.vllm_ext.vllm_patches.apply_value_channel`) writes each step's value and entropy at the generated token's
position, all rows of the step in one numpy scatter, before its output leaves for the engine core; the gateway
reads the new positions when that output reaches it, so a value is always written before it is read.

A row is held from the request's start until its generator closes; a request that finds no free row, or a
client that asked for logprobs or n > 1, goes through the logprobs path instead (same values, see
tests/test_value_contract.py). Unwritten cells are NaN, so a worker that never wrote (vLLM's internals moved
and the patch stood down) is caught at warm-up, and the engine falls back to the logprobs path.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections import deque
from pathlib import Path

import numpy as np

TABLE_KEY = "aligngate_value_table"  # extra_args: the table's file
ROW_KEY = "aligngate_value_row"  # extra_args: the request's row
CHANNEL_ENV = "ALIGNGATE_VALUE_CHANNEL"
"""`shm` (default where the engine runs without async scheduling, i.e. on CPU) or `logprobs`."""


def _shm_dir() -> Path:
    d = Path("/dev/shm")
    return d if d.is_dir() and os.access(d, os.W_OK) else Path(tempfile.gettempdir())


def open_table(path: str | Path, rows: int | None = None, positions: int | None = None) -> np.ndarray:
    """The table as a [rows, positions, 2] float32 array over a shared mapping of the file: created (NaN-filled)
    when `rows` is given, else attached with its shape from the file size (the worker knows only the positions:
    `max_model_len`). A plain ndarray on an `mmap`, not `np.memmap`, whose every slice is a memmap object (8 µs
    per one-position read here, against ~1 µs)."""
    if rows is not None:
        with open(path, "wb") as f:
            f.truncate(rows * positions * 2 * 4)
    with open(path, "r+b") as f:
        buf = mmap.mmap(f.fileno(), 0)
    table = np.frombuffer(buf, dtype=np.float32).reshape(-1, positions, 2)
    if rows is not None:
        table[:] = np.nan
    return table


PREFIX = "aligngate-values-"


def remove_orphans(directory: Path | None = None) -> list[str]:
    """Unlink the tables of gateways that are gone: a process killed with SIGKILL never unlinks its file (~1 MB
    of /dev/shm each). The owner's pid is in the name; a pid that no longer exists frees the file. (A recycled pid
    keeps a file alive until the next start after that process ends too: never a live table removed.)"""
    removed = []
    for f in (directory or _shm_dir()).glob(PREFIX + "*"):
        pid = f.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                f.unlink()
                removed.append(f.name)
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class ValueTable:
    """The gateway's side: the file, the free rows, and reads of a row's new positions."""

    def __init__(self, name: str, rows: int, positions: int):
        remove_orphans()
        self.path = str(_shm_dir() / f"{PREFIX}{os.getpid()}-{name}-{os.urandom(4).hex()}")
        self.rows, self.positions = rows, positions
        self.table = open_table(self.path, rows, positions)
        self._free = deque(range(rows))  # FIFO: a row just released is the last to be handed out again

    def acquire(self) -> int | None:
        """A free row (NaN-filled), or None when every row is in use (the caller takes the logprobs path)."""
        if not self._free:
            return None
        row = self._free.popleft()
        self.table[row] = np.nan
        return row

    def release(self, row: int) -> None:
        self._free.append(row)

    def extra_args(self, row: int) -> dict:
        return {TABLE_KEY: self.path, ROW_KEY: row}

    def read(self, row: int, start: int, stop: int) -> tuple[list[float], list[float]]:
        """Values and entropies at positions [start, stop) of `row` (NaN where the worker wrote nothing)."""
        values, entropies = self.table[row, start:stop].T.tolist()
        return values, entropies

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class TableWriter:
    """The worker's side: tables attached by path on first use (a worker serves one engine, so one table)."""

    def __init__(self, positions: int):
        self.positions = positions
        self._tables: dict[str, np.ndarray] = {}
        self.rows_of: dict[str, tuple[str, int] | None] = {}  # vLLM request id -> (table, row), None: not ours

    def write(self, path: str, rows: np.ndarray, positions: np.ndarray, cells: np.ndarray) -> None:
        table = self._tables.get(path)
        if table is None:
            table = self._tables[path] = open_table(path, positions=self.positions)
        keep = positions < table.shape[1]
        table[rows[keep], positions[keep]] = cells[keep]
