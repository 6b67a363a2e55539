"""``agentkit trainer start|status|stop``: the background trainer (agentkit.learn.daemon) as
a detached process beside the store, and how to see and stop it.

Only typer is imported at module level; ``start``'s defaults are TrainerConfig's, read when
the command runs or shows its help (TrainerStartCommand), and so are their checks (its
ConfigError, shown with the flags). ``start --foreground`` is the process itself (the
detached start re-runs this command with ``--foreground`` in a new session, its output
appended to the log file beside the store).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from agentkit.cli._common import ConfigCommand, _flags, _Group, _require, _store_option, _store_path

__all__ = ["trainer_app", "TrainerStartCommand"]

_DETACHED = "AGENTKIT_TRAINER_DETACHED"  # set in the detached child: log to the file only

trainer_app = typer.Typer(
    cls=_Group, no_args_is_help=True,
    help="The background trainer: builds pairs from new runs, trains, gates and promotes, in its own process.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


class TrainerStartCommand(ConfigCommand):
    @staticmethod
    def defaults() -> dict[str, Any]:
        """TrainerConfig's defaults, so that changing one there changes the command."""
        from agentkit.learn.daemon import TrainerConfig

        config = TrainerConfig()
        same = ("suite", "model", "backend", "dtype", "min_pairs", "max_pairs", "eval_tasks", "rectifications",
                "chosen_by", "gate_metric")
        return {**{name: getattr(config, name) for name in same}, "poll": config.poll_s}


def _files(store: Optional[Path], *, must_exist: bool) -> tuple[Path, Any]:
    from agentkit.errors import StoreError
    from agentkit.store.trainer import TrainerFiles

    path = _store_path(store)
    if must_exist and not path.exists():
        raise StoreError(f"no store at {path}; pass --store PATH to the store the trainer watches")
    return path, TrainerFiles.beside(path)


@trainer_app.command("start", cls=TrainerStartCommand)
def start(
    ctx: typer.Context,
    suite: str = typer.Option(None, help="Built-in suite whose runs the trainer learns from."),
    model: str = typer.Option(None, help="Base model the adapters are trained on (the model the runs used)."),
    backend: str = typer.Option(None, help="Backend that samples rectifications and runs the gate: transformers or openai."),
    base_url: Optional[str] = typer.Option(None, show_default="http://127.0.0.1:8000/v1", help="The server's API root, for --backend openai."),
    dtype: str = typer.Option(None, help="auto, bf16 or fp32 (sampling and training)."),
    min_pairs: int = typer.Option(None, help="Train a candidate once this many new pairs exist."),
    max_pairs: int = typer.Option(None, help="Train on the suite's newest this many pairs (the new ones plus a replay of older ones)."),
    eval_tasks: int = typer.Option(None, help="Held-out test tasks the gate compares candidate and active policy on (runs on them are never learned from)."),
    eval_level: Optional[int] = typer.Option(None, show_default="the suite's default", help="Level of the held-out tasks."),
    rectifications: int = typer.Option(None, help="Continuations sampled from each first wrong step."),
    chosen_by: str = typer.Option(None, help="A rectified step is chosen when the answer then verifies (outcome) or when the step checker accepts it (step)."),
    gate_metric: str = typer.Option(None, help="What the gate needs a significant gain in: success or step-accuracy."),
    poll: float = typer.Option(None, help="Seconds between looks at the store when there is nothing new."),
    serve_url: Optional[str] = typer.Option(None, help="An `agentkit serve` (or vLLM) API root: each promoted adapter is loaded into it."),
    store: Optional[Path] = _store_option(),
    foreground: bool = typer.Option(False, "--foreground", help="Run in this process (Ctrl-C stops it) instead of detached."),
) -> None:
    """Start the background trainer on a store: it returns at once, printing the pid and the log file."""
    from agentkit.errors import AgentkitError
    from agentkit.learn.daemon import TrainerConfig, run_daemon
    from agentkit.store.trainer import TrainerStore, running_pid
    from agentkit.tasks import get_suite, list_suites

    _require(not suite.endswith(".jsonl"), f"--suite {suite}: the trainer learns from a built-in suite, "
                                           f"not a task file; choose one of: {', '.join(list_suites())}")
    task_suite = get_suite(suite)  # an unknown suite fails here, naming the choices
    with _flags({"poll_s": "--poll"}):  # TrainerConfig checks the options
        config = TrainerConfig(suite=suite, model=model, backend=backend, base_url=base_url, dtype=dtype,
                               min_pairs=min_pairs, max_pairs=max_pairs, eval_tasks=eval_tasks, eval_level=eval_level,
                               rectifications=rectifications, chosen_by=chosen_by, gate_metric=gate_metric, poll_s=poll,
                               serve_url=serve_url)
        config.check_suite(task_suite)
    # what this command allows of what the library can do
    _require(backend in ("transformers", "openai"), f"--backend {backend}: the trainer samples with transformers or openai")
    _require(base_url is None or backend == "openai", "--base-url is for --backend openai; drop it or add --backend openai")
    from agentkit.llm.openai import check_base_url

    if serve_url is not None:
        check_base_url(serve_url, flag="--serve-url")
    path, files = _files(store, must_exist=False)
    TrainerStore(path).close()  # creates or migrates the store; a bad path fails here, in one line
    pid = running_pid(files.pid)
    if pid is not None and not (foreground and os.environ.get(_DETACHED)):
        raise _already_running(path, pid)
    if backend == "openai" and not os.environ.get(_DETACHED):
        from agentkit.llm import load_backend

        # the trainer asks the server only when there is work: a dead one must fail now, not then
        load_backend("openai", model, base_url=base_url).close()

    if foreground:
        detached = bool(os.environ.get(_DETACHED))
        if not detached:
            typer.echo(f"trainer running in the foreground (pid {os.getpid()}); Ctrl-C stops it; log: {files.log}", err=True)
        run_daemon(path, config, echo=not detached)
        return

    argv = [sys.executable, "-m", "agentkit.cli", "trainer", "start", "--foreground"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in ("foreground", "store") or value is None:
            continue
        argv += [param.opts[0], str(value)]
    argv += ["--store", str(path)]
    files.log.parent.mkdir(parents=True, exist_ok=True)
    with open(files.log, "ab") as log:
        logged_before = log.tell()
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, env={**os.environ, _DETACHED: "1"}, close_fds=True)
    deadline = time.monotonic() + 60
    while running_pid(files.pid) != child.pid:  # wait until it holds the store's trainer lock
        if child.poll() is not None:
            holder = running_pid(files.pid)
            if holder is not None:  # another start took the lock between our look and our child's
                raise _already_running(path, holder)
            raise AgentkitError(f"the trainer exited at once (status {child.returncode}): "
                                f"{_last_line(files.log, logged_before)}; see {files.log}")
        if time.monotonic() > deadline:
            break  # still importing on a loaded machine: it is up, say so
        time.sleep(0.05)
    typer.echo(f"trainer started: pid {child.pid}, store {path}")
    typer.echo(f"log: {files.log}")
    typer.echo("see it with `agentkit trainer status`; stop it with `agentkit trainer stop`", err=True)


def _already_running(path: Path, pid: int) -> Any:
    from agentkit.errors import AgentkitError

    if pid < 0:
        return AgentkitError(f"a trainer is starting for {path}; see it with `agentkit trainer status --store {path}` "
                             "in a few seconds")
    return AgentkitError(f"a trainer is already running for {path} (pid {pid}); "
                         f"stop it with `agentkit trainer stop --store {path}`")


def _last_line(path: Path, offset: int = 0) -> str:
    """The child's last error line (else its last line) in the log from ``offset`` on, without "error: "."""
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            lines = [line for line in log.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("error:")]
    line = " ".join((errors or lines or ["no output"])[-1].split())
    return line.removeprefix("error: ")


@trainer_app.command("status")
def status(
    store: Optional[Path] = _store_option(),
) -> None:
    """Show whether the trainer runs and what it did: state, cursor, pending pairs, candidates, the last gate."""
    from agentkit.store import TrajectoryStore
    from agentkit.store.policies import PolicyRegistry
    from agentkit.store.trainer import TrainerStore, running_pid

    path, files = _files(store, must_exist=True)
    pid = running_pid(files.pid)
    with TrainerStore(path) as book:
        state = book.state()
    with PolicyRegistry(path) as registry:
        active = registry.active().version
    with TrajectoryStore(path) as traces:
        newest = (traces.list_runs(1) or [None])[0]

    from rich.console import Console

    Console().print(_status_table(path, files, pid, state, active, newest.id if newest else 0))


def _ago(iso: Optional[str]) -> str:
    if not iso:
        return "-"
    from datetime import datetime, timezone

    seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago" if seconds < 7200 else iso[:19]


def _cursor(state: Any, newest_run: int, alive: bool) -> str:
    """The cursor and the newest run; while the trainer lives, also why the cursor waits:
    "20 (newest run 47), waits on run 21 (running, pid 1234, started 3 min ago)"."""
    text = f"{state.run_cursor if state else 0} (newest run {newest_run})"
    waiting = (state.status.get("waiting_on") if state else None) if alive else None
    if waiting:
        owner = f", pid {waiting['pid']}" if waiting.get("pid") else ", no process recorded"
        if waiting.get("pid") and waiting.get("host") and waiting["host"] != _hostname():
            owner += f" on {waiting['host']}"
        text += f", waits on run {waiting['run']} (running{owner}, started {_ago(waiting.get('since'))})"
    return text


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _status_table(path: Path, files: Any, pid: Optional[int], state: Any, active: str, newest_run: int) -> Any:
    from rich.table import Table

    s = state.status if state is not None else {}
    alive = pid is not None
    recorded = s.get("state") or "never started"
    shown = recorded if alive else ("stopped" if recorded in ("idle", "collecting", "training", "gating") else recorded)
    inflight = s.get("inflight")
    if inflight and not alive:
        shown += f" ({inflight['phase']} left in flight: `agentkit trainer start` resumes it)"
    gate = s.get("last_gate") or {}
    if gate:
        rates = ""
        if gate.get("candidate_success") is not None:
            rates = f", success {100 * gate['incumbent_success']:.0f}% -> {100 * gate['candidate_success']:.0f}%"
        if gate.get("metric") == "step-accuracy" and gate.get("candidate_step_accuracy") is not None:
            rates += (f", step accuracy {100 * (gate['incumbent_step_accuracy'] or 0):.0f}% -> "
                      f"{100 * gate['candidate_step_accuracy']:.0f}%")
        if gate.get("n"):
            rates += f" on {gate['n']} held-out tasks"
        p = "-" if gate.get("p_value") is None else f"{gate['p_value']:.3g}"
        last_gate = f"{gate['candidate']}: {gate['decision']} (p={p}{rates})"
    else:
        last_gate = "-"
    config = s.get("config") or {}
    rows = [
        ("alive", f"yes (pid {pid})" if alive and pid and pid > 0 else "starting" if alive else "no"),
        ("state", shown),
        ("suite", state.suite if state else "-"),
        ("run cursor", _cursor(state, newest_run, alive)),
        ("pairs pending", f"{s.get('pending_pairs', 0)} (trains at {config.get('min_pairs', '-')})"),
        ("runs seen / used / failed", f"{s.get('runs_seen', 0)} / {s.get('runs_used', 0)} / {s.get('failed_runs', 0)}"),
        ("pairs built", str(s.get("pairs_built", 0))),
        ("candidates trained / promoted / rejected",
         f"{s.get('candidates', 0)} / {s.get('promoted', 0)} / {s.get('rejected', 0)}"),
        ("active policy", active),
        ("last gate", last_gate),
        ("last error", s.get("last_error") or "-"),
        ("updated", _ago(state.updated_at if state else None)),
        ("log", str(files.log)),
    ]
    if s.get("served"):
        served = s["served"]
        rows.insert(9, ("served", f"{served.get('version') or 'failed'} at {served.get('url')}"
                                  + (f": {served['error']}" if served.get("error") else "")))
    table = Table(title=f"trainer of {path}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    return table


@trainer_app.command("stop")
def stop(
    store: Optional[Path] = _store_option(),
    timeout: float = typer.Option(120.0, help="Seconds to wait for it to stop at a safe point (between phases or optimizer steps)."),
) -> None:
    """Stop the background trainer (SIGTERM) and wait until it has stopped at a safe point."""
    from agentkit.errors import AgentkitError
    from agentkit.store.trainer import running_pid

    _require(timeout > 0, f"--timeout {timeout}: must be > 0 seconds")
    path, files = _files(store, must_exist=True)
    pid = running_pid(files.pid)
    if pid is None:
        raise AgentkitError(f"no trainer is running for {path}; start one with `agentkit trainer start --store {path}`")
    if pid < 0:
        raise AgentkitError(f"the trainer of {path} is still starting; run `agentkit trainer stop` again in a few seconds")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it exited between the look and the signal
    deadline = time.monotonic() + timeout
    while running_pid(files.pid) is not None:
        if time.monotonic() > deadline:
            raise AgentkitError(
                f"the trainer (pid {pid}) is still running after {timeout:g} s: it stops at the next safe point; "
                f"wait, or `kill -9 {pid}` (a restart resumes where it stopped)"
            )
        time.sleep(0.1)
    typer.echo(f"trainer stopped (pid {pid})")
