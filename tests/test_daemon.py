"""The background trainer: a cycle over planted failed runs (pairs -> train -> gate ->
promote, recorded in the store), a cursor that survives restarts, training resumed after a
stop, the `agentkit trainer` commands on a real detached process, and `run_tasks` picking
up a promotion between tasks."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentkit.cli.trainer_cmd import _cursor
from agentkit.llm.scripted import ScriptedLLM
from agentkit.store import PairStore, TrajectoryStore
from agentkit.store.policies import PolicyRegistry
from agentkit.store.trainer import TrainerFiles, TrainerStore, running_pid
from agentkit.runtime import ActivePolicy, SolveAgent, run_tasks
from agentkit.tasks import get_suite

from conftest import build_tiny_model, build_tiny_tokenizer, char_scripted

SUITE = get_suite("arithmetic")
TRAIN = SUITE.tasks("train", 4, level=1, seed=7)
HELD_OUT = SUITE.tasks("test", 6, level=1, seed=0)
BY_QUESTION = {t.question: t for t in TRAIN + HELD_OUT}


def wrong(task):
    a, op, b, c = task.data["steps"][0]
    return f"Step 1: {a} {op} {b} = {c + 1}\nAnswer: {c + 1}\n"


def policy(right_for):
    """Gold solutions for the adapters in ``right_for``, a wrong step 1 otherwise; from the
    prefix "...Solution:\\nStep 1:" (a rectification) the gold rest of the solution."""

    def reply(prompt, request):
        if "Question: " not in prompt:
            return "ok"  # load_policy's one-token probe
        task = BY_QUESTION[prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]]
        so_far = prompt.rsplit("Solution:\n", 1)[1]
        if so_far == "Step 1:":
            return task.solution[len("Step 1:"):] + "\n"
        assert so_far == "", so_far
        return task.solution + "\n" if request.adapter in right_for else wrong(task)

    return reply


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny model and its tokenizer saved as a model directory: a --model path."""
    path = tmp_path_factory.mktemp("tiny-model")
    tok = build_tiny_tokenizer()
    build_tiny_model(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def config(tmp_path, tiny_dir, **overrides):
    from agentkit.learn.daemon import TrainerConfig

    values = dict(suite="arithmetic", model=str(tiny_dir), min_pairs=2, max_pairs=64, eval_tasks=len(HELD_OUT),
                  eval_level=1, rectifications=2, epochs=1, batch_size=2, concurrency=4, poll_s=0.01,
                  checkpoint_every=1, dtype="fp32", output_dir=str(tmp_path / "work"))
    return TrainerConfig(**{**values, **overrides})


def plant_failures(store, llm, tasks=TRAIN):
    """Greedy runs of the base policy on training tasks: every one fails at step 1."""
    report = run_tasks(llm, SUITE, tasks, store, agent=SolveAgent(), concurrency=2)
    assert [r.status for r in report.results] == ["failure"] * len(tasks)
    return [r.run_id for r in report.results]


def test_a_cycle_builds_pairs_trains_gates_promotes_and_records_it(tmp_path, tiny_dir):
    from agentkit.learn.daemon import TrainerDaemon

    llm = char_scripted(policy(right_for={"v1"}), build_tiny_tokenizer())
    with TrajectoryStore(tmp_path / "runs.db") as store:
        run_ids = plant_failures(store, llm)
    with TrainerDaemon(tmp_path / "runs.db", config(tmp_path, tiny_dir), llm=llm) as daemon:
        result = daemon.cycle()
        assert (result.runs, result.used, result.failed, result.pairs) == (4, 4, 4, 4)  # one deduplicated pair each
        assert (result.candidate, result.decision) == ("v1", "promote") and result.p_value < 0.05
        assert result.pending == 0 and result.train_s > 0 and result.gate_s > 0
        assert result.gate["candidate_successes"] == 6 and result.gate["incumbent_successes"] == 0

        registry = PolicyRegistry(tmp_path / "runs.db")
        v1 = registry.active()
        assert (v1.version, v1.parent, v1.method) == ("v1", "base", "dpo")
        assert v1.data["source"] == "agentkit trainer" and v1.data["pairs"] == 4
        assert Path(v1.adapter_path) == tmp_path / "work" / "candidate-0001" / "adapter"

        # the gate recorded its held-out runs in the store; the next cycle passes over them
        # and learns nothing from them (held-out tasks, or the retired policy's runs)
        again = daemon.cycle()
        assert again.runs == 2 * len(HELD_OUT) and again.used == 0 and again.pairs == 0
        assert again.skipped == {"held_out": len(HELD_OUT), "other_policy": len(HELD_OUT)}
        assert again.candidate is None

    with TrainerStore(tmp_path / "runs.db") as book:
        state = book.state("arithmetic")
        pairs = PairStore(tmp_path / "runs.db")
        assert state.run_cursor == max(run_ids) + 2 * len(HELD_OUT)
        assert state.pair_cursor == max(p.id for p in pairs.pairs())
        s = state.status
        assert (s["state"], s["cycles"], s["runs_seen"], s["failed_runs"], s["pairs_built"]) == ("idle", 2, 16, 4, 4)
        assert (s["candidates"], s["promoted"], s["rejected"], s["pending_pairs"]) == (1, 1, 0, 0)
        assert s["active_policy"] == "v1" and s["inflight"] is None
        assert s["last_gate"]["decision"] == "promote" and s["last_gate"]["p_value"] == result.p_value
        cycles = book.cycles("arithmetic")
        assert [(c.runs, c.pairs, c.candidate, c.decision) for c in cycles] == [
            (12, 0, None, None), (4, 4, "v1", "promote")]  # newest first
        assert {p.run_id for p in pairs.pairs()} == set(run_ids)
        pairs.close()


def test_a_regression_is_rejected_and_its_pairs_are_not_retrained(tmp_path, tiny_dir):
    from agentkit.learn.daemon import TrainerDaemon

    llm = char_scripted(policy(right_for={None}), build_tiny_tokenizer())  # the base is right on held-out tasks
    with TrajectoryStore(tmp_path / "runs.db") as store:
        plant_failures(store, char_scripted(policy(right_for=set()), build_tiny_tokenizer()))
    with TrainerDaemon(tmp_path / "runs.db", config(tmp_path, tiny_dir), llm=llm) as daemon:
        result = daemon.cycle()
        assert (result.candidate, result.decision) == ("v1", "reject")
        assert daemon.registry.active().version == "base" and daemon.registry.get("v1").status == "rejected"
        assert daemon.cycle().candidate is None  # the same pairs do not train a second candidate
        assert daemon.book.state("arithmetic").status["rejected"] == 1


def test_the_cursor_survives_restarts_and_no_pair_is_built_twice(tmp_path, tiny_dir):
    from agentkit.learn.daemon import TrainerDaemon

    tok = build_tiny_tokenizer()
    path = tmp_path / "runs.db"
    with TrajectoryStore(path) as store:
        first = plant_failures(store, char_scripted(policy(set()), tok), TRAIN[:2])
    never = config(tmp_path, tiny_dir, min_pairs=1000, max_pairs=1000)  # collect only
    with TrainerDaemon(path, never, llm=char_scripted(policy(set()), tok)) as daemon:
        assert daemon.cycle().pairs == 2
    with TrainerDaemon(path, never, llm=char_scripted(policy(set()), tok)) as daemon:  # a restart
        assert daemon.cycle().runs == 0
        # killed after the pairs were stored but before the cursor moved: the same runs come
        # round again and are recognised by their stored pairs
        daemon.book.save("arithmetic", run_cursor=0)
        redo = daemon.cycle()
        assert (redo.runs, redo.failed, redo.pairs) == (2, 2, 0)
        with TrajectoryStore(path) as store:
            later = plant_failures(store, char_scripted(policy(set()), tok), TRAIN[2:])
        new = daemon.cycle()
        assert (new.run_from, new.run_to, new.pairs) == (max(first), max(later), 2)
        pairs = PairStore(path)
        assert sorted(p.run_id for p in pairs.pairs()) == sorted(first + later)
        assert pairs.count() == 4
        pairs.close()
        assert daemon.book.state("arithmetic").status["pairs_built"] == 4


def test_a_running_run_holds_the_cursor_back(tmp_path, tiny_dir):
    from agentkit.learn.daemon import TrainerDaemon

    path = tmp_path / "runs.db"
    with TrajectoryStore(path) as store:
        open_run = store.start_run("solve", suite="arithmetic", task_id="x", policy_version="base")
        plant_failures(store, char_scripted(policy(set()), build_tiny_tokenizer()), TRAIN[:1])
        with TrainerDaemon(path, config(tmp_path, tiny_dir, min_pairs=1000, max_pairs=1000),
                           llm=char_scripted(policy(set()), build_tiny_tokenizer())) as daemon:
            assert daemon.cycle().runs == 0  # the run after the open one waits for it
            state = daemon.book.state("arithmetic")
            assert state.status["waiting_on"]["run"] == open_run and state.status["waiting_on"]["pid"] == os.getpid()
            assert _cursor(state, 2, alive=True).startswith(
                f"0 (newest run 2), waits on run {open_run} (running, pid {os.getpid()}, started ")
            assert _cursor(state, 2, alive=False) == "0 (newest run 2)"  # a stopped trainer waits on nothing
            store.finish_run(open_run, status="error", error="crashed")
            result = daemon.cycle()
            assert (result.runs, result.pairs, result.skipped.get("error")) == (2, 1, 1)
            assert daemon.book.state("arithmetic").status["waiting_on"] is None


def test_a_run_whose_process_died_does_not_hold_the_cursor_back(tmp_path, tiny_dir):
    from agentkit.learn.daemon import TrainerDaemon

    path = tmp_path / "runs.db"
    with TrajectoryStore(path) as store:
        child = mp.get_context("fork").Process(target=lambda: store.start_run(
            "solve", suite="arithmetic", task_id="x", policy_version="base"))  # and exits, leaving it running
        child.start()
        child.join(30)
        (dead,) = [r.id for r in store.list_runs(status="running")]
        plant_failures(store, char_scripted(policy(set()), build_tiny_tokenizer()), TRAIN[:1])
        with TrainerDaemon(path, config(tmp_path, tiny_dir, min_pairs=1000, max_pairs=1000),
                           llm=char_scripted(policy(set()), build_tiny_tokenizer())) as daemon:
            result = daemon.cycle()  # not an hour's wait (stale_s): the daemon marks it
            assert (result.interrupted, result.runs, result.skipped.get("interrupted")) == ([dead], 2, 1)
            assert store.get_run(dead, steps=False).status == "interrupted"
            assert daemon.book.state("arithmetic").status["interrupted_runs"] == 1


def test_training_stopped_midway_resumes_from_its_checkpoint(tmp_path, tiny_dir):
    from agentkit.learn.daemon import TrainerDaemon, _Stopped

    tok = build_tiny_tokenizer()
    path = tmp_path / "runs.db"
    with TrajectoryStore(path) as store:
        plant_failures(store, char_scripted(policy(set()), tok))
    cfg = config(tmp_path, tiny_dir, batch_size=1)  # 4 pairs -> 4 steps, a checkpoint after each
    with TrainerDaemon(path, cfg, llm=char_scripted(policy({"v1"}), tok)) as daemon:
        steps = []

        def stop_after_two(record=None):
            if record is not None:
                steps.append(record["step"])
                if len(steps) == 2:
                    daemon.stop()  # as SIGTERM does
            type(daemon)._safe_point(daemon, record)

        daemon._safe_point = stop_after_two
        with pytest.raises(_Stopped):
            daemon.cycle()
        status = daemon.book.state("arithmetic").status
        assert status["inflight"]["phase"] == "training" and steps == [1, 2]
        assert daemon.registry.list("candidate") == []
    work = tmp_path / "work" / "candidate-0001"
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["step-000001.pt"]  # 2's log came first

    with TrainerDaemon(path, cfg, llm=char_scripted(policy({"v1"}), tok)) as daemon:
        result = daemon.cycle()
        assert (result.runs, result.candidate, result.decision) == (0, "v1", "promote")
    logged = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]  # step 1 from the checkpoint, then 2-4: none trained twice


# --- the runner picks up a promotion ----------------------------------------------------------


def adapter_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    return path


def test_run_tasks_picks_up_a_promotion_between_tasks(tmp_path):
    tasks = SUITE.tasks("train", 4, level=1, seed=3)
    gold = {t.question: t for t in tasks}

    def reply(prompt, request):
        if "Question: " not in prompt:
            return "ok"
        task = gold[prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]]
        return task.solution if request.adapter == "v1" else wrong(task)

    llm = ScriptedLLM(reply)
    with TrajectoryStore(tmp_path / "runs.db") as store, PolicyRegistry(store.path) as registry:
        registry.register(adapter_dir(tmp_path / "v1"))
        changes = []
        follow = ActivePolicy(llm, registry, on_change=lambda *c: changes.append(c))

        class PromotesAfterItsFirstTask:
            """A trainer promoting v1 while the first task's run finishes."""

            name = "solve"

            def __call__(self, task, suite, recorder):
                text = SolveAgent()(task, suite, recorder)
                if registry.active().version == "base":
                    registry.promote("v1", reason="a trainer's gate")
                return text

        report = run_tasks(llm, SUITE, tasks, store, agent=PromotesAfterItsFirstTask(), concurrency=1, policy=follow)
        runs = [store.get_run(r.run_id) for r in report.results]
    assert [r.policy_version for r in runs] == ["base", "v1", "v1", "v1"]
    assert [r.steps[0].adapter for r in runs] == [None, "v1", "v1", "v1"]  # the adapter that answered
    assert [r.status for r in runs] == ["failure", "success", "success", "success"]
    assert changes == [("base", "v1", None)]
    assert all(r.meta["task"]["id"] == r.task_id for r in runs)  # what the trainer rebuilds pairs from


def test_an_adapter_the_backend_does_not_serve_is_never_silently_replaced_by_the_base(tmp_path):
    class IgnoresAdapters(ScriptedLLM):
        def generate(self, requests):
            out = super().generate(requests)
            for completions in out:
                for c in completions:
                    c.adapter = None  # a server that answers with the base model whatever is asked
            return out

    tasks = SUITE.tasks("train", 3, level=1, seed=3)
    llm = IgnoresAdapters(["Step 1: 1 + 1 = 2\nAnswer: 2"])
    with TrajectoryStore(tmp_path / "runs.db") as store, PolicyRegistry(store.path) as registry:
        registry.register(adapter_dir(tmp_path / "v1"))
        changes = []
        follow = ActivePolicy(llm, registry, on_change=lambda *c: changes.append(c))
        assert follow.current()[0] == "base"
        registry.promote("v1")
        report = run_tasks(llm, SUITE, tasks, store, concurrency=1, policy=follow)
        versions = {store.get_run(r.run_id, steps=False).policy_version for r in report.results}
    assert versions == {"base"}  # runs say what really answered
    assert len(changes) == 1 and changes[0][:2] == ("base", "v1") and "answered" in str(changes[0][2])


# --- the command line ---------------------------------------------------------------------


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "agentkit.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def test_trainer_start_status_stop_on_a_real_process(tmp_path):
    store = str(tmp_path / "runs.db")
    started = cli("trainer", "start", "--store", store, "--poll", "0.2")
    assert started.returncode == 0, started.stderr
    pid = int(re.search(r"pid (\d+)", started.stdout).group(1))
    files = TrainerFiles.beside(store)
    assert str(files.log) in started.stdout
    try:
        assert running_pid(files.pid) == pid
        status = cli("trainer", "status", "--store", store)
        assert status.returncode == 0, status.stderr
        assert f"yes (pid {pid})" in status.stdout and "active policy" in status.stdout

        twice = cli("trainer", "start", "--store", store)
        assert twice.returncode == 1 and twice.stderr.count("\n") == 1
        assert twice.stderr.startswith(f"error: a trainer is already running for {store} (pid {pid})")
    finally:
        stopped = cli("trainer", "stop", "--store", store)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"trainer stopped (pid {pid})"
    assert running_pid(files.pid) is None
    status = cli("trainer", "status", "--store", store)
    assert re.search(r"alive\s+│ no", status.stdout) and re.search(r"state\s+│ stopped", status.stdout)
    assert "trainer started on" in files.log.read_text() and "trainer stopped after" in files.log.read_text()
    with TrainerStore(store) as book:
        assert book.state("arithmetic").status["state"] == "stopped"


@pytest.mark.parametrize("args, message", [
    (["trainer", "stop"], "no trainer is running for {store}; start one with `agentkit trainer start"),
    (["trainer", "start", "--suite", "nope"], "unknown suite 'nope'; choose one of"),
    (["trainer", "start", "--min-pairs", "0"], "--min-pairs 0: must be at least 1"),
    (["trainer", "start", "--min-pairs", "64", "--max-pairs", "8"], "--max-pairs 8: must be at least --min-pairs (64)"),
    (["trainer", "start", "--eval-level", "9"], "--eval-level 9: arithmetic has levels 1, 2, 3, 4, 5"),
    (["trainer", "status", "--store", "{tmp}/missing.db"], "no store at {tmp}/missing.db; pass --store PATH"),
    (["trainer", "start", "--store", "{tmp}"], "store path {tmp} is a directory"),
    (["trainer", "start", "--suite", "{tmp}/tasks.jsonl"], "--suite {tmp}/tasks.jsonl: the trainer learns from a built-in suite"),
    (["trainer", "start", "--backend", "openai", "--base-url", "notaurl"], "--base-url notaurl: not a server URL"),
    (["trainer", "start", "--base-url", "http://127.0.0.1:8000/v1"], "--base-url is for --backend openai"),
    (["trainer", "start", "--serve-url", "notaurl"], "--serve-url notaurl: not a server URL"),
    (["trainer", "start", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"],
     "no OpenAI-compatible server answers at http://127.0.0.1:9/v1"),
])
def test_trainer_commands_refuse_bad_input_with_one_line(args, message, tmp_path):
    store = str(tmp_path / "runs.db")
    TrajectoryStore(store).close()
    args = [a.format(tmp=tmp_path) for a in args]
    if "--store" not in args:
        args += ["--store", store]
    result = cli(*args, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: " + message.format(store=store, tmp=tmp_path)), result.stderr
    assert running_pid(TrainerFiles.beside(store).pid) is None


def test_trainer_start_defaults_are_trainer_configs(tmp_path, monkeypatch):
    """The command states no default of its own: changing one in TrainerConfig changes it."""
    from dataclasses import asdict

    from typer.testing import CliRunner

    import agentkit.learn.daemon as daemon
    from agentkit.cli.app import app

    configs = []
    monkeypatch.setattr(daemon, "run_daemon", lambda path, config, echo: configs.append(config))
    result = CliRunner().invoke(app, ["trainer", "start", "--foreground", "--store", str(tmp_path / "runs.db")])
    assert result.exit_code == 0, result.stderr
    assert asdict(configs[0]) == asdict(daemon.TrainerConfig())


def test_a_start_that_loses_the_race_for_the_lock_says_a_trainer_is_running(tmp_path, monkeypatch):
    """Two starts at once: both see no trainer, both spawn one, and the second child finds
    the lock taken. Its parent says so in the same one line as a start that saw it at once."""
    from typer.testing import CliRunner

    import agentkit.store.trainer as trainer
    from agentkit.cli.app import app
    from agentkit.store.trainer import TrainerLock

    store = str(tmp_path / "runs.db")
    files = TrainerFiles.beside(store)
    real, calls = trainer.running_pid, []

    def first_look_sees_nothing(path):
        calls.append(path)
        return None if len(calls) == 1 else real(path)

    monkeypatch.setattr(trainer, "running_pid", first_look_sees_nothing)
    with TrainerLock(files.pid):  # the first trainer, here in the test process
        result = CliRunner().invoke(app, ["trainer", "start", "--store", store, "--poll", "0.2"])
    assert result.exit_code == 1
    assert result.stderr == (f"error: a trainer is already running for {store} (pid {os.getpid()}); "
                             f"stop it with `agentkit trainer stop --store {store}`\n")


def test_a_promotion_reaches_a_served_deployment(tmp_path):
    from conftest import serve_in_thread

    from agentkit.llm.base import GenerationRequest
    from agentkit.llm.openai import OpenAIClientLLM
    from agentkit.learn.daemon import TrainerConfig, TrainerDaemon

    served = ScriptedLLM(lambda prompt, request: "ok")
    server, thread = serve_in_thread(served)
    path = tmp_path / "runs.db"
    try:
        with PolicyRegistry(path) as registry:
            registry.register(adapter_dir(tmp_path / "v1"))
            registry.promote("v1")
        # the trainer loads what it promotes into the server (--serve-url) ...
        config = TrainerConfig(serve_url=server.url, output_dir=str(tmp_path / "work"))
        with TrainerDaemon(path, config, llm=ScriptedLLM(["unused"])) as daemon:
            daemon._publish("v1")
            assert served.list_adapters() == ["v1"]
            assert daemon.book.state("arithmetic").status["served"]["version"] == "v1"
        # ... and a client run following the active policy loads it there itself
        served.unload_adapter("v1")
        with PolicyRegistry(path) as registry:
            version, view = ActivePolicy(OpenAIClientLLM(server.url), registry).current()
            ((completion,),) = view.generate([GenerationRequest("hi", max_tokens=2)])
        assert version == "v1" and completion.adapter == "v1" and served.list_adapters() == ["v1"]
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_a_trainer_killed_with_sigkill_leaves_no_stale_lock(tmp_path):
    import signal
    import time

    store = str(tmp_path / "runs.db")
    files = TrainerFiles.beside(store)
    first = cli("trainer", "start", "--store", store, "--poll", "0.2")
    assert first.returncode == 0, first.stderr
    pid = int(re.search(r"pid (\d+)", first.stdout).group(1))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while running_pid(files.pid) is not None and time.monotonic() < deadline:  # the kernel drops the flock
        time.sleep(0.05)
    assert running_pid(files.pid) is None and files.pid.read_text().strip() == str(pid)  # a stale pid file
    status = cli("trainer", "status", "--store", store)
    assert re.search(r"alive\s+│ no", status.stdout) and re.search(r"state\s+│ stopped", status.stdout)
    again = cli("trainer", "start", "--store", store, "--poll", "0.2")
    try:
        assert again.returncode == 0, again.stderr
        assert int(re.search(r"pid (\d+)", again.stdout).group(1)) != pid
    finally:
        assert cli("trainer", "stop", "--store", store).returncode == 0


def test_a_version_trained_over_a_suite_vocabulary_decodes_over_it(tmp_path):
    tasks = SUITE.tasks("train", 2, level=1, seed=3)
    llm = ScriptedLLM(lambda prompt, request: "ok" if "Question: " not in prompt else "Step 1: 1 + 1 = 2\nAnswer: 2")
    vocabulary = SUITE.vocabulary(lambda text: llm.tokenize(text)[1:])
    with TrajectoryStore(tmp_path / "runs.db") as store, PolicyRegistry(store.path) as registry:
        registry.register(adapter_dir(tmp_path / "v1"), config={"allowed_token_ids": vocabulary})
        registry.register(adapter_dir(tmp_path / "v2"), config={"allowed_token_ids": []})
        for version, allowed in (("base", None), ("v1", tuple(vocabulary)), ("v2", None)):
            llm.requests.clear()
            run_tasks(llm, SUITE, tasks, store, concurrency=1, policy=ActivePolicy(llm, registry, version=version))
            solving = [r for r in llm.requests if r.max_tokens > 1]  # not the load probe
            assert len(solving) == 2 and {r.allowed_token_ids for r in solving} == {allowed}
