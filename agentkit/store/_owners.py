"""Which process is running a run, and whether it still lives.

start_run records its process on the run row: the pid, the host name, and a start
identity (the boot id, the pid namespace and the process's start time in clock ticks
since boot, all from /proc) that tells the process from a later one given the same pid.
A run left 'running' by a process that is gone (kill -9, a crash, a power loss) is marked
'interrupted' when a process next opens the store, or by ``agentkit traces repair``.
A run whose process cannot be checked from here (another host, another pid namespace) is
left alone: a live run is never marked.
"""

from __future__ import annotations

import functools
import os
import socket
import sqlite3

from .migrations import utcnow

__all__ = ["RESUME_HINT", "Owner", "this_process", "owner_alive", "mark_dead_runs"]

Owner = tuple[int, str, str | None]  # (pid, host, start identity or None without /proc)

RESUME_HINT = "finish it with `agentkit run --resume interrupted`"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:  # /proc files, never a store
            return f.read().strip()
    except OSError:
        return None


@functools.cache
def _context() -> tuple[str, str] | None:
    """(boot id, pid namespace) of this process, or None without /proc; a forked child
    shares both with its parent."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return (boot, namespace) if boot else None


def _ticks(pid: int) -> str | None:
    """The start time of live process ``pid`` in clock ticks since boot; None if it is gone."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name in parentheses may hold spaces
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie has exited
        return None
    return fields[19]  # field 22 of proc(5), counted after pid and comm


_mine: dict[int, Owner] = {}


def this_process() -> Owner:
    """The identity start_run records for the calling process."""
    pid = os.getpid()  # a forked child is another process
    if pid not in _mine:
        context, ticks = _context(), _ticks(pid)
        start = f"{context[0]}/{context[1]}/{ticks}" if context and ticks else None
        _mine[pid] = (pid, socket.gethostname(), start)
    return _mine[pid]


def owner_alive(pid: int | None, host: str | None, start: str | None) -> bool | None:
    """Whether the recorded process still runs: True, False, or None when it cannot be told
    from here (no owner recorded, another host, another pid namespace)."""
    if pid is None or host != socket.gethostname():
        return None
    context = _context()
    if start and context:
        boot, namespace, ticks = start.split("/", 2)
        if boot != context[0]:
            return False  # the machine restarted since
        if namespace != context[1]:
            return None  # another container's pids are not ours to look up
        return _ticks(pid) == ticks  # a different start time: the pid was given to a new process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def mark_dead_runs(conn: sqlite3.Connection, *, unowned: bool = False) -> list[int]:
    """Mark 'interrupted' every 'running' run whose process is gone, inside the caller's
    write transaction; returns their ids. ``unowned``: also runs that recorded no process
    (written before runs recorded one), which nothing can tell from live ones."""
    marked = []
    now = utcnow()
    alive = functools.cache(owner_alive)  # a process runs many runs: look it up once
    rows = conn.execute("SELECT id, owner_pid, owner_host, owner_start FROM runs WHERE status = 'running'").fetchall()
    for run_id, pid, host, start in rows:
        if pid is None:
            if not unowned:
                continue
            error = ("interrupted: it recorded no process and was marked by `agentkit traces repair --unowned`; "
                     + RESUME_HINT)
        elif alive(pid, host, start) is False:
            error = f"interrupted: its process (pid {pid} on {host}) ended before the run did; {RESUME_HINT}"
        else:
            continue
        tokens, calls = conn.execute(
            "SELECT COALESCE(SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)), 0), COUNT(*) "
            "FROM steps WHERE run_id = ?", (run_id,),
        ).fetchone()
        conn.execute(
            "UPDATE runs SET status = 'interrupted', tokens = ?, calls = ?, cost = ?, error = ?, finished_at = ? "
            "WHERE id = ? AND status = 'running'",
            (tokens, calls, float(tokens), error, now, run_id),
        )
        marked.append(run_id)
    return marked
