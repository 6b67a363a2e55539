"""The background trainer: the training half of the continual loop, as its own process
(`agentkit trainer start`), so that runs and training overlap.

    watch the store: finished runs above the cursor, of the suite, sampled by the active
    policy, not on the gate's held-out tasks
      └─ failed ones -> first wrong step -> Step-DPO pairs (build_step_pairs(run_ids=...))
           └─ >= min_pairs new pairs -> a LoRA candidate continuing the active adapter
                └─ register -> gate on held-out tasks (greedy, both versions) -> promote
                   only on a significant gain -> (optional) load it into a server

Every phase is recorded in the store (store/trainer.py) before and after it runs, so a
restart after SIGTERM or kill -9 continues where it stopped: the run cursor moves only after
a batch's pairs are stored, and runs that already have pairs are not rebuilt (no pair is
built twice); training interrupted in flight resumes from its last checkpoint with the same
pairs; a candidate registered but not yet gated is gated. SIGTERM stops at the next safe
point: between phases, or between two optimizer steps.

    daemon = TrainerDaemon("runs.db", TrainerConfig(suite="arithmetic", min_pairs=32))
    daemon.cycle()          # one pass; run() loops until stop()
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from agentkit.errors import AgentkitError, ConfigError
from agentkit.learn.credit import CREDIT_METHODS
from agentkit.learn.cycle import CandidateConfig, gate_candidate, register_trained, train_candidate
from agentkit.learn.gate import GateConfig
from agentkit.learn.pairs import CHOSEN_BY, StepDPOConfig, build_step_pairs
from agentkit.llm.base import LLM
from agentkit.runtime import SolveAgent
from agentkit.runtime.policy import adapter_name, load_policy
from agentkit.store import PairStore, PolicyRegistry, TrajectoryStore
from agentkit.store.trainer import TrainerFiles, TrainerLock, TrainerStore
from agentkit.tasks import Suite, Task, get_suite
from agentkit.train.configs import DPOConfig, field_of
from agentkit.train.examples import PreferenceExample

__all__ = ["TrainerConfig", "CycleResult", "TrainerDaemon", "run_daemon"]

log = logging.getLogger("agentkit.trainer")


@dataclass
class TrainerConfig(GateConfig, CandidateConfig):
    """What the background trainer watches, how it builds pairs, trains (CandidateConfig) and
    gates (GateConfig, whose defaults are the trainer's). Saved with every policy version it
    produces."""

    suite: str = field(default="arithmetic", metadata={"help": "Built-in suite whose runs are learned from."})
    model: str = field(default="gemma-3-270m", metadata={"help": "Base model the adapters are trained on."})
    backend: str = field(default="transformers", metadata={"help": "Backend that samples pairs and runs the gate."})
    base_url: str | None = field(default=None, metadata={"help": "Server API root for backend openai."})
    dtype: str = field(default="auto", metadata={"help": "auto, bf16 or fp32 (sampling and training)."})
    min_pairs: int = field(default=32, metadata={"help": "Train a candidate once this many new pairs exist."})
    max_pairs: int = field(default=512, metadata={"help": "Train on the suite's newest this many pairs (new + replay)."})
    # how pairs are built: StepDPOConfig's knobs (pair_config); how a candidate trains: CandidateConfig's
    # knobs and these of DPOConfig (train_config)
    max_tokens: int = field_of(StepDPOConfig, "max_tokens", help="Longest gate answer or rectification, in tokens.")
    rectifications: int = field_of(StepDPOConfig, "rectifications")
    credit: str = field_of(StepDPOConfig, "credit")
    chosen_by: str = field_of(StepDPOConfig, "chosen_by")
    poll_s: float = field(default=10.0, metadata={"help": "Seconds between looks at the store when idle."})
    batch_runs: int = field(default=64, metadata={"help": "Most runs examined per cycle."})
    stale_s: float = field(default=3600.0, metadata={"help": "A run still 'running' this long is passed over."})
    checkpoint_every: int = field_of(DPOConfig, "checkpoint_every", default=10)
    max_errors: int = field(default=5, metadata={"help": "Give up after this many failed cycles in a row."})
    seed: int = field(default=0, metadata={"help": "Seed of rectification sampling and training."})
    serve_url: str | None = field(default=None, metadata={"help": "Also load each promoted adapter into this server."})
    output_dir: str | None = field(default=None, metadata={"help": "Candidates go here (None: runs.trainer/ beside the store)."})

    def __post_init__(self) -> None:
        # the CLI's checks too: ConfigError names the knobs in backquotes, which `agentkit
        # trainer start` shows as its flags
        super().__post_init__()  # GateConfig's checks
        for name in ("min_pairs", "rectifications", "batch_runs", "max_errors"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}={getattr(self, name)}`: must be at least 1")
        if self.max_pairs < self.min_pairs:
            raise ConfigError(f"`max_pairs={self.max_pairs}`: must be at least `min_pairs` ({self.min_pairs})")
        if self.poll_s <= 0:
            raise ConfigError(f"`poll_s={self.poll_s}`: must be > 0 seconds")
        if self.credit not in CREDIT_METHODS:
            raise ConfigError(f"`credit={self.credit}`: choose one of {', '.join(CREDIT_METHODS)}")
        if self.chosen_by not in CHOSEN_BY:
            raise ConfigError(f"`chosen_by={self.chosen_by}`: choose {' or '.join(CHOSEN_BY)}")

    def check_suite(self, suite: Suite) -> None:
        """What depends on the suite, checked by the daemon that loads it (building a config
        loads nothing)."""
        if self.eval_level is not None and self.eval_level not in suite.levels:
            raise ConfigError(f"`eval_level={self.eval_level}`: {self.suite} has levels {', '.join(map(str, suite.levels))}")
        if self.chosen_by == "step" and not suite.has_step_checker:
            raise ConfigError(f"`chosen_by=step` needs a step checker and suite '{self.suite}' has none; "
                              "use `chosen_by=outcome`")

    def pair_config(self) -> StepDPOConfig:
        """How a cycle samples rectifications and builds Step-DPO pairs."""
        return StepDPOConfig(rectifications=self.rectifications, max_tokens=self.max_tokens, credit=self.credit,
                             chosen_by=self.chosen_by, seed=self.seed)

    def train_config(self, output_dir: str) -> DPOConfig:
        """How a cycle trains its candidate (DPO + NLL on the pairs) into ``output_dir``."""
        return DPOConfig(output_dir=output_dir, lr=self.lr, epochs=self.epochs, batch_size=self.batch_size,
                         beta=self.beta, nll_weight=self.nll_weight, lora_r=self.lora_r, seed=self.seed,
                         checkpoint_every=self.checkpoint_every, dtype=self.dtype)


@dataclass
class CycleResult:
    """What one cycle did."""

    policy: str
    """The active version when the cycle started (the one whose runs it learned from)."""
    run_from: int = 0
    run_to: int = 0
    runs: int = 0
    """Runs examined (the cursor moved over them)."""
    used: int = 0
    """Of those, finished runs of the suite by the active policy, off the held-out set."""
    failed: int = 0
    pairs: int = 0
    """New pairs stored this cycle."""
    pending: int = 0
    """Pairs not yet trained on, after this cycle."""
    skipped: dict[str, int] = field(default_factory=dict)
    candidate: str | None = None
    decision: str | None = None
    p_value: float | None = None
    gate: dict[str, Any] | None = None
    collect_s: float = 0.0
    train_s: float = 0.0
    gate_s: float = 0.0
    more: bool = False
    """More runs were waiting than one cycle examines: run the next cycle at once."""
    waiting_on: dict[str, Any] | None = None
    """The unfinished run the cursor stopped at (id, pid, host, started_at), if any."""
    interrupted: list[int] = field(default_factory=list)
    """Runs found 'running' whose process was gone, marked 'interrupted' this cycle."""

    @property
    def did_work(self) -> bool:
        return self.runs > 0 or self.candidate is not None


class _Stopped(Exception):
    """Raised at a safe point once stop() was called."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class TrainerDaemon:
    """The background trainer of one store. ``llm`` samples rectifications and runs the
    gate (default: loaded from the config on first need, so an idle trainer holds no
    model); ``model`` is what the Trainer loads (default: config.model)."""

    def __init__(self, store: str | os.PathLike[str], config: TrainerConfig | None = None, *,
                 llm: LLM | None = None, model: Any = None):
        self.config = config or TrainerConfig()
        self.suite = get_suite(self.config.suite)  # an unknown suite fails here, naming the choices
        self.config.check_suite(self.suite)
        self.files = TrainerFiles.beside(store)
        self.traces = TrajectoryStore(store)
        self.book = TrainerStore(self.traces.path)
        self.registry = PolicyRegistry(self.traces.path)
        self.pairs = PairStore(self.traces)
        level = self.config.eval_level or self.suite.default_level
        self.held_out = self.suite.tasks("test", self.config.eval_tasks, level=level, seed=self.config.eval_seed)
        self._held_out_ids = {t.id for t in self.held_out}
        self.work = Path(self.config.output_dir) if self.config.output_dir else self.files.work
        self.model = model if model is not None else self.config.model
        self._llm, self._own_llm = llm, llm is None
        self._stop = threading.Event()
        self._loaded: str | None = None

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            from agentkit.llm import load_backend

            log.info("loading %s (%s) for pair sampling and gating", self.config.model, self.config.backend)
            self._llm = load_backend(self.config.backend, self.config.model, base_url=self.config.base_url,
                                     dtype=self.config.dtype)
        return self._llm

    def stop(self) -> None:
        """Ask the loop to stop at the next safe point (a signal handler may call this)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        if self._own_llm and self._llm is not None:
            self._llm.close()
        self.pairs.close()
        self.registry.close()
        self.book.close()
        self.traces.close()

    def __enter__(self) -> TrainerDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the recorded status; returns the whole status."""
        return self.book.save(self.suite.name, status=fields).status

    def _bump(self, **deltas: int) -> dict[str, int]:
        status = self._state().status
        return {k: int(status.get(k) or 0) + v for k, v in deltas.items()}

    def _state(self) -> Any:
        return self.book.state(self.suite.name) or self.book.save(self.suite.name, status={})

    # --- the loop ---------------------------------------------------------------------------

    def run(self, *, max_cycles: int | None = None, on_cycle: Callable[[CycleResult], None] | None = None) -> None:
        """Cycle until stop() (or ``max_cycles``); idle cycles wait ``poll_s`` between looks.
        A failing cycle is logged and recorded and the loop goes on, until ``max_errors``
        fail in a row."""
        self.status(state="idle", pid=os.getpid(), started_at=_now(), stopped_at=None, config=asdict(self.config))
        log.info("trainer started on %s (suite %s, pid %d)", self.traces.path, self.suite.name, os.getpid())
        cycles = errors = 0
        try:
            while not self.stopping:
                try:
                    result = self.cycle()
                    errors = 0
                except _Stopped:
                    break
                except Exception as exc:  # noqa: BLE001 - recorded, logged, and the loop goes on
                    errors += 1
                    message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                    log.exception("cycle failed (%d in a row): %s", errors, message)
                    self.status(state="idle", last_error=message, last_error_at=_now())
                    if errors >= self.config.max_errors:
                        self.status(state="failed")
                        raise
                    self._stop.wait(self.config.poll_s)
                    continue
                cycles += 1
                if on_cycle:
                    on_cycle(result)
                if max_cycles is not None and cycles >= max_cycles:
                    break
                if not result.more:
                    self._stop.wait(self.config.poll_s)
        finally:
            state = self._state().status.get("state")
            self.status(state="failed" if state == "failed" else "stopped", pid=None, stopped_at=_now())
            log.info("trainer stopped after %d cycles", cycles)

    def cycle(self) -> CycleResult:
        """One pass: finish work left in flight, else examine new runs, build their pairs,
        and train, gate and promote once ``min_pairs`` new pairs exist."""
        started = _now()
        state = self._state()
        active = self.registry.active().version
        result = CycleResult(policy=active, run_from=state.run_cursor, run_to=state.run_cursor)
        inflight = state.status.get("inflight")
        try:
            if inflight:
                log.info("continuing the %s of %s left in flight", inflight["phase"], inflight.get("candidate") or inflight["dir"])
                self._finish(inflight, result)
            else:
                self._collect(state, active, result)
                pending = self.book.pair_ids(self.suite.name, after=self._state().pair_cursor)
                result.pending = len(pending)
                if len(pending) >= self.config.min_pairs and not self.stopping:
                    self._start_training(active, result)
            result.pending = len(self.book.pair_ids(self.suite.name, after=self._state().pair_cursor))
        finally:
            if result.did_work:
                self.book.add_cycle(
                    self.suite.name, started, policy_version=result.policy, run_from=result.run_from,
                    run_to=result.run_to, runs=result.runs, failed=result.failed, pairs=result.pairs,
                    pending=result.pending, candidate=result.candidate, decision=result.decision,
                    p_value=result.p_value, collect_s=result.collect_s, train_s=result.train_s,
                    gate_s=result.gate_s, details={"used": result.used, "skipped": result.skipped,
                                                   "gate": result.gate},
                )
            self.status(state="idle", pending_pairs=result.pending, active_policy=self.registry.active().version,
                        heartbeat_at=_now(), config=asdict(self.config), waiting_on=result.waiting_on,
                        **self._bump(cycles=1, interrupted_runs=len(result.interrupted)))
        if result.did_work:
            log.info("cycle: runs %d..%d examined %d, used %d, failed %d, new pairs %d, pending %d%s",
                     result.run_from + 1, result.run_to, result.runs, result.used, result.failed, result.pairs,
                     result.pending, f", {result.candidate}: {result.decision}" if result.candidate else "")
        return result

    # --- collect: new runs -> pairs ---------------------------------------------------------

    def _collect(self, state: Any, active: str, result: CycleResult) -> None:
        rows = self.book.runs_after(state.run_cursor, self.config.batch_runs)
        if any(row["status"] == "running" for row in rows):
            # a run whose process died would hold the cursor until stale_s: mark it interrupted
            result.interrupted = self.traces.repair()
            if result.interrupted:
                log.info("runs %s: their process is gone; marked interrupted", ", ".join(map(str, result.interrupted)))
                rows = self.book.runs_after(state.run_cursor, self.config.batch_runs)
        result.more = len(rows) == self.config.batch_runs
        ready = []
        for row in rows:
            if row["status"] == "running" and _age_s(row["started_at"]) < self.config.stale_s:
                result.more = False  # runs after an unfinished one wait for it: the cursor never skips a run
                result.waiting_on = {"run": row["id"], "pid": row["owner_pid"], "host": row["owner_host"],
                                     "since": row["started_at"]}
                break
            ready.append(row)
        if not ready:
            return
        t0 = time.perf_counter()
        self.status(state="collecting")
        skipped: dict[str, int] = {}

        def skip(reason: str) -> None:
            skipped[reason] = skipped.get(reason, 0) + 1

        used = []
        for row in ready:
            if row["suite"] != self.suite.name:
                skip("other_suite")
            elif row["policy_version"] != active:
                skip("other_policy")
            elif row["status"] not in ("success", "failure"):
                skip(row["status"])  # error, budget, interrupted, or running past stale_s
            elif row["task_id"] in self._held_out_ids:
                skip("held_out")
            else:
                used.append(row)
        failed = [row for row in used if row["status"] == "failure"]
        tasks: dict[str, Task] = {}
        todo = []
        recorded = self.book.run_tasks([row["id"] for row in failed])
        for row in failed:
            data = recorded.get(row["id"])
            task = Task.model_validate(data) if data else None
            if task is None or task.id != row["task_id"]:
                skip("no_task")  # recorded before runs carried their task
                continue
            tasks[task.id] = task
            todo.append(row["id"])
        built = self.book.runs_with_pairs(todo)  # a restart after pairs were stored, before the cursor moved
        todo = [i for i in todo if i not in built]
        if todo:
            adapter = self._load(active)
            stats = build_step_pairs(self.llm, self.suite, list(tasks.values()), self.traces, self.config.pair_config(),
                                     active, run_ids=todo, adapter=adapter, pair_store=self.pairs)
            result.pairs = stats.pairs
            result.skipped.update({"no_error_found": stats.no_error_found})
        upto = ready[-1]["id"]
        result.run_to, result.runs, result.used, result.failed = upto, len(ready), len(used), len(failed)
        result.skipped.update(skipped)
        result.collect_s = time.perf_counter() - t0
        self.book.save(self.suite.name, run_cursor=upto, status={
            "last_run_seen": upto, **self._bump(runs_seen=len(ready), runs_used=len(used), failed_runs=len(failed),
                                                pairs_built=result.pairs)})

    # --- train -> register -> gate -> promote ---------------------------------------------

    def _start_training(self, active: str, result: CycleResult) -> None:
        pair_ids = self.book.pair_ids(self.suite.name, limit=self.config.max_pairs)
        self.work.mkdir(parents=True, exist_ok=True)
        taken = [int(p.name.split("-")[1]) for p in self.work.glob("candidate-*") if p.name.split("-")[1].isdigit()]
        out = self.work / f"candidate-{max(taken, default=0) + 1:04d}"
        inflight = {"phase": "training", "dir": str(out), "pair_ids": pair_ids, "parent": active,
                    "pair_cursor": max(pair_ids)}
        self.status(inflight=inflight)  # recorded before training starts: a restart resumes it
        self._finish(inflight, result)

    def _finish(self, inflight: dict[str, Any], result: CycleResult) -> None:
        if inflight["phase"] == "training":
            inflight = self._train(inflight, result)
            if inflight is None:
                return
        self._gate(inflight, result)

    def _train(self, inflight: dict[str, Any], result: CycleResult) -> dict[str, Any] | None:
        c = self.config
        parent = inflight["parent"]
        wanted = set(inflight["pair_ids"])
        examples = [PreferenceExample.from_record(p) for p in self.pairs.pairs(kind="step", suite=self.suite.name)
                    if p.id in wanted]
        self.status(state="training")
        log.info("training a candidate on %d pairs, continuing '%s' -> %s", len(examples), parent, inflight["dir"])
        t0 = time.perf_counter()
        trained = train_candidate(self.registry, c.train_config(inflight["dir"]), self.model, parent, examples, resume=True,
                                  on_log=self._safe_point)
        result.train_s = time.perf_counter() - t0
        if trained.adapter_path is None:
            log.warning("training wrote no adapter (%s); pairs up to %d set aside", trained.stats, inflight["pair_cursor"])
            self.book.save(self.suite.name, pair_cursor=inflight["pair_cursor"], status={"inflight": None})
            return None
        path = str(Path(trained.adapter_path).resolve())
        known = [p for p in self.registry.list() if p.adapter_path == path]  # registered before a kill
        policy = known[0] if known else register_trained(
            self.registry, trained, parent=parent,
            data={"pairs": len(examples), "pair_ids": [min(wanted), max(wanted)], "suite": self.suite.name,
                  "source": "agentkit trainer", "trainer": asdict(c)},
        )
        result.candidate = policy.version
        inflight = {"phase": "gating", "candidate": policy.version, "parent": parent,
                    "pair_cursor": inflight["pair_cursor"], "train_s": result.train_s}
        self.status(inflight=inflight, **self._bump(candidates=0 if known else 1))
        self._safe_point()
        return inflight

    def _gate(self, inflight: dict[str, Any], result: CycleResult) -> None:
        candidate = inflight["candidate"]
        result.candidate = candidate
        policy = self.registry.get(candidate)
        t0 = time.perf_counter()
        if policy.status == "candidate":
            incumbent = self.registry.active().version
            self.status(state="gating")
            log.info("gating %s against %s on %d held-out tasks", candidate, incumbent, len(self.held_out))
            agent = SolveAgent(shots=self.config.shots, max_tokens=self.config.max_tokens)
            # the incumbent runs again (no incumbent_measured, unlike improve): gates are a
            # training phase apart, and outcomes kept in memory would not survive a restart
            outcome = gate_candidate(self.registry, self.llm, self.suite, self.held_out, candidate,
                                     incumbent=incumbent, agent=agent, store=self.traces, alpha=self.config.alpha,
                                     concurrency=self.config.concurrency, metric=self.config.gate_metric)
            log.info("%s", outcome.summary())
            promoted = outcome.promote
            result.p_value = outcome.p_value
            result.gate = {k: v for k, v in outcome.as_dict().items() if not k.endswith("_ids")}
        else:  # decided before a restart
            promoted = policy.status in ("active", "retired")
            result.gate = (policy.metrics or {}).get("gate")
            result.p_value = (result.gate or {}).get("p_value")
        result.gate_s = time.perf_counter() - t0
        result.decision = "promote" if promoted else "reject"
        last_gate = {"candidate": candidate, "decision": result.decision, "p_value": result.p_value,
                     "at": _now(), **{k: (result.gate or {}).get(k) for k in
                                      ("metric", "incumbent", "n", "incumbent_success", "candidate_success",
                                       "incumbent_step_accuracy", "candidate_step_accuracy")}}
        self.book.save(self.suite.name, pair_cursor=inflight["pair_cursor"], status={
            "inflight": None, "last_gate": last_gate,
            **self._bump(promoted=int(promoted), rejected=int(not promoted))})
        if promoted and self.config.serve_url:
            self._publish(candidate)

    def _publish(self, version: str) -> None:
        """Load the promoted adapter into the server at serve_url, and check it answers."""
        from agentkit.llm.openai import OpenAIClientLLM
        try:
            load_policy(OpenAIClientLLM(self.config.serve_url), self.registry, version)
            log.info("loaded %s into %s", version, self.config.serve_url)
            self.status(served={"version": version, "url": self.config.serve_url, "at": _now(), "error": None})
        except AgentkitError as exc:  # the promotion stands; the server is told next time
            log.warning("could not load %s into %s: %s", version, self.config.serve_url, exc)
            self.status(served={"version": None, "url": self.config.serve_url, "at": _now(), "error": str(exc)})

    # --- helpers ----------------------------------------------------------------------------

    def _load(self, version: str) -> str | None:
        """Load ``version`` into the sampling backend (verified: its adapter must answer),
        unless it is the one loaded last and still resident."""
        name = adapter_name(version)
        if self._loaded != version or (name is not None and name not in self.llm.list_adapters()):
            load_policy(self.llm, self.registry, version)
            self._loaded = version
        return name

    def _safe_point(self, record: Any = None) -> None:
        if self.stopping:
            raise _Stopped()


def _age_s(iso: str) -> float:
    return (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()


def run_daemon(store: str | os.PathLike[str], config: TrainerConfig, *, echo: bool = True,
               max_cycles: int | None = None, llm: LLM | None = None, model: Any = None) -> None:
    """The trainer process: take the store's trainer lock (one trainer per store), log to
    runs.trainer.log (and stderr with ``echo``), stop cleanly on SIGTERM or SIGINT."""
    files = TrainerFiles.beside(store)
    with TrainerLock(files.pid):
        handlers: list[logging.Handler] = [logging.FileHandler(files.log, encoding="utf-8")]
        if echo:
            handlers.append(logging.StreamHandler(sys.stderr))
        root = logging.getLogger("agentkit")
        previous_level = root.level
        root.setLevel(logging.INFO)
        for handler in handlers:
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
            root.addHandler(handler)
        daemon = TrainerDaemon(store, config, llm=llm, model=model)
        stop = lambda *_: daemon.stop()  # noqa: E731
        restore = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)} \
            if threading.current_thread() is threading.main_thread() else {}
        try:
            daemon.run(max_cycles=max_cycles)
        finally:
            daemon.close()
            for sig, handler in restore.items():
                signal.signal(sig, handler)
            for handler in handlers:
                root.removeHandler(handler)
                handler.close()
            root.setLevel(previous_level)
