"""A loopback URL that nothing listens on (connection refused): a backend that is down, for the fault tests."""

from __future__ import annotations

from benchmarks.procs import free_port


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
