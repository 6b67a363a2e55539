"""Which process is running a run, and whether it still lives.

start_run records its process on the run row: the pid, the host name, and a start
identity (the machine id, the boot id, the pid namespace and the process's start time in
clock ticks since boot, from /etc/machine-id and /proc) that tells the process from a
later one given the same pid. A run left 'running' by a process that is gone (kill -9, a
crash, a power loss) is marked 'interrupted' when a process next opens the store, or by
``agentkit traces repair``. A run whose process cannot be checked from here (another host,
another machine with the same host name, another pid namespace) is left alone: a live run
is never marked, and never resumed by a second process."""

from __future__ import annotations

import functools
import os
import socket
import sqlite3

from ._closing import close_run

__all__ = ["RESUME_HINT", "Owner", "this_process", "owner_alive", "dead_runs", "mark_dead_runs"]

Owner = tuple[int, str, str | None]  # (pid, host, start identity or None without /proc)

RESUME_HINT = "finish it with `agentkit run --resume interrupted`"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:  # /proc files, never a store
            return f.read().strip()
    except OSError:
        return None


@functools.cache
def _context() -> tuple[str, str, str] | None:
    """(machine id, boot id, pid namespace) of this process, or None without /proc; a
    forked child shares them with its parent. The machine id is "" where
    /etc/machine-id is missing or empty (many container images)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    machine = (_read("/etc/machine-id") or "").replace("/", "")
    return (machine, boot, namespace) if boot else None


def _start_ticks(stat: str) -> str | None:
    """The start time in clock ticks since boot from a /proc/<pid>/stat line; None for a
    process that has exited (a zombie)."""
    fields = stat.rsplit(")", 1)[-1].split()  # the command name in parentheses may hold spaces
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]  # field 22 of proc(5), counted after pid and comm


def _signalable(pid: int) -> bool | None:
    """Whether a process ``pid`` exists, asked of the kernel with signal 0 (which sends
    nothing): True, False, or None when the answer is unclear."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    except OSError:
        return None
    return True


def _runs_since(pid: int, ticks: str) -> bool | None:
    """Whether process ``pid`` is the one that started at ``ticks``."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        # Gone, or hidden: with /proc mounted hidepid=1 or 2 another user's live process
        # cannot be read (or is not listed at all). The kernel still tells a live pid from
        # a free one; its start time, and so a reused pid, it cannot check.
        return _signalable(pid)
    return _start_ticks(stat) == ticks  # a different start time: the pid was given to a new process


_mine: dict[int, Owner] = {}


def this_process() -> Owner:
    """The identity start_run records for the calling process: (pid, host,
    "machine id/boot id/pid namespace/start ticks")."""
    pid = os.getpid()  # a forked child is another process
    if pid not in _mine:
        context, stat = _context(), _read(f"/proc/{pid}/stat")
        ticks = _start_ticks(stat) if stat else None
        start = "/".join((*context, ticks)) if context and ticks else None
        _mine[pid] = (pid, socket.gethostname(), start)
    return _mine[pid]


def _parse_start(start: str) -> tuple[str, str, str, str] | None:
    """(machine id, boot id, pid namespace, ticks); rows recorded before the machine id
    was hold the last three only, and read with an unknown ("") machine."""
    parts = start.split("/")
    if len(parts) == 3:
        return ("", *parts)
    return (parts[0], parts[1], parts[2], parts[3]) if len(parts) == 4 else None


def owner_alive(pid: int | None, host: str | None, start: str | None) -> bool | None:
    """Whether the recorded process still runs: True, False, or None when it cannot be told
    from here (no owner recorded, another host or machine, another pid namespace)."""
    if pid is None or host != socket.gethostname():
        return None
    context = _context()
    recorded = _parse_start(start) if start else None
    if recorded and context:
        machine, boot, namespace, ticks = recorded
        if machine and context[0] and machine != context[0]:
            return None  # another machine with this host name: its processes are not ours to see
        if boot != context[1]:
            return False  # the machine restarted since
        if namespace != context[2]:
            return None  # another container's pids are not ours to look up
        return _runs_since(pid, ticks)
    return _signalable(pid)


def dead_runs(conn: sqlite3.Connection, *, unowned: bool = False) -> list[tuple[int, str]]:
    """The 'running' runs whose process is gone, with the error to record on each: a read,
    so the caller takes the write lock only when there is one. ``unowned``: also runs
    that recorded no process (written before runs recorded one), which nothing can tell
    from live ones."""
    found = []
    alive = functools.cache(owner_alive)  # a process runs many runs: look it up once
    # idx_runs_running holds just these rows: the scan costs the live runs, not the store
    rows = conn.execute("SELECT id, owner_pid, owner_host, owner_start FROM runs WHERE status = 'running'").fetchall()
    for run_id, pid, host, start in rows:
        if pid is None:
            if unowned:
                found.append((run_id, "interrupted: it recorded no process and was marked by "
                                      f"`agentkit traces repair --unowned`; {RESUME_HINT}"))
        elif alive(pid, host, start) is False:
            found.append((run_id, f"interrupted: its process (pid {pid} on {host}) ended before the run did; "
                                  f"{RESUME_HINT}"))
    return found


def mark_dead_runs(conn: sqlite3.Connection, *, unowned: bool = False) -> list[int]:
    """Mark 'interrupted' every 'running' run whose process is gone (see dead_runs), inside
    the caller's write transaction; returns their ids."""
    return [run_id for run_id, error in dead_runs(conn, unowned=unowned)
            if close_run(conn, run_id, status="interrupted", error=error, running_only=True, died=True)]
