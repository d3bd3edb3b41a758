"""What a process under benchmark uses: RSS of it and its children (`process_rss_mb`), and CPU seconds so far
(`process_cpu_s`), through psutil."""

from __future__ import annotations


def process_rss_mb(pid: int) -> dict:
    """RSS of a process and of its whole tree (the gateway and, in-process, its engine children), MiB."""
    import psutil

    try:
        p = psutil.Process(pid)
        own = p.memory_info().rss
        tree = own + sum(c.memory_info().rss for c in p.children(recursive=True))
    except psutil.NoSuchProcess:
        return {"rss_mb": None, "rss_tree_mb": None}
    return {"rss_mb": round(own / 2**20, 1), "rss_tree_mb": round(tree / 2**20, 1)}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0.0
    for q in procs:
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total
