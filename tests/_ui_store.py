"""A store for the UI tests, filled the way agentkit fills one: scripted runs recorded by
run_tasks (half right, half wrong) in the tiny model's tokens (its directory is the runs'
model, so the UI can decode them), a run whose completion is a <script> tag, two graph runs
(a router that leaves a node unvisited, a critic that sends the solver back twice), one
improve round that searches, trains a tiny LoRA candidate and gates it, and a Step-DPO pair
from a failed run; then an experience library with two versions and a background
trainer's state and one cycle, written through their own APIs."""

from __future__ import annotations

import gc
from pathlib import Path

SCRIPT = "<script>alert(1)</script>"
INSIGHT = "Carry the tens <b>before</b> adding the units."


def fill_store(path: Path, work: Path) -> dict[str, int | str]:
    """Fill the store at ``path`` (``work``: a directory for adapters); returns the ids the
    tests open: a failed run, the script run, the improve run, the gated policy, the pair,
    a run that searched (its tree recorded), and the two graph runs."""
    from agentkit.learn.improve import ImproveConfig, improve
    from agentkit.runtime import run_tasks
    from agentkit.store import ImproveLog, Pair, PairStore, TrajectoryStore
    from agentkit.tasks import get_suite

    from agentkit.graph import load_graph
    from agentkit.runtime import GraphAgent

    from conftest import build_tiny_model, build_tiny_tokenizer, char_scripted
    from test_graph_run import REVISE, Prefers, scripted
    from test_improve import answers, search_lines

    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", 6, level=2, seed=11)
    by_question = {t.question: (i, t) for i, t in enumerate(tasks)}

    def half_right(prompt, request):
        i, task = by_question[prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]]
        if i % 2 == 0:
            return task.solution + "\n"
        first, second = task.solution.split("\n")[:2]
        wrong = int(second.rsplit("=", 1)[1]) + 1  # step 2 off by one, and so the answer
        return f"{first}\n{second.rsplit('=', 1)[0]}= {wrong}\nAnswer: {wrong}\n"

    tok = build_tiny_tokenizer()
    model_dir = work / "tiny-model"
    build_tiny_model(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    with TrajectoryStore(path) as store:
        report = run_tasks(char_scripted(half_right, tok), suite, tasks, store, concurrency=3, model_name=str(model_dir))
        failed = next(r.run_id for r in report.results if r.status == "failure")
        [script] = run_tasks(char_scripted([SCRIPT], tok), suite, suite.tasks("test", 1, level=1, seed=5), store,
                             model_name=str(model_dir)).results
        graph_tasks = suite.tasks("test", 1, level=2, seed=7)
        [routed] = run_tasks(scripted(graph_tasks, cls=Prefers, label="reasoning"), suite, graph_tasks, store,
                             agent=GraphAgent(load_graph("router_tool"))).results
        [revised] = run_tasks(scripted(graph_tasks, review=REVISE), suite, graph_tasks, store,
                              agent=GraphAgent(load_graph("solve_critic"))).results

        # one improve round: search on 4 training tasks, train a tiny candidate, gate it
        reply = search_lines(suite, answers(suite, right_for={"v1"}), suite.tasks("train", 4, level=1, seed=1000))
        config = ImproveConfig(method="expert", explore="search", search="beam:1x4", rounds=1, levels=[1],
                               train_tasks=4, curriculum="none", eval_tasks=8, final_tasks=8, epochs=1, batch_size=2,
                               concurrency=4, output_dir=str(work / "improve"))
        improve(char_scripted(reply, tok), store, config, model=build_tiny_model(len(tok)))
        improve_id = ImproveLog(store).list()[0].id
        searched = next(r.id for r in store.list_runs(None) if (r.meta or {}).get("agent", {}).get("search"))

        # a Step-DPO pair from the failed run: its wrong step 2 against the right one
        step = store.get_run(failed).steps[0]
        store.set_step_values(step.id, [1.0, 0.0])
        i, task = next(v for v in by_question.values() if v[1].id == store.get_run(failed).task_id)
        head = step.completion_text.split("Step 2:")[0] + "Step 2:"
        right = task.solution.split("\n")[1].split(":", 1)[1]
        wrong = step.completion_text.split("\n")[1].split(":", 1)[1]
        pair = Pair(kind="step", prompt_text=step.prompt_text + head, prompt_ids=[1, 2, 3], chosen_text=right,
                    chosen_ids=[4, 5], rejected_text=wrong, rejected_ids=[6, 7], suite="arithmetic",
                    task_id=task.id, run_id=failed, step_id=step.id, step_index=1, method="checker",
                    policy_version="base")
        [pair_id] = PairStore(store).add_pairs([pair])
        success = next(r.run_id for r in report.results if r.status == "success")
    fill_memory_and_trainer(path, success, failed)
    gc.collect()  # store objects improve dropped unclosed: their connection closes (and checkpoints) now
    TrajectoryStore(path).close()
    return {"failed": failed, "script": script.run_id, "improve": improve_id, "policy": "v1", "pair": pair_id,
            "searched": searched, "routed": routed.run_id, "revised": revised.run_id}


def fill_memory_and_trainer(path: Path, success: int, failed: int) -> None:
    """Two library items shown in two runs (base rate (1 + 1) / (2 + 2) = 0.5): the insight
    in both (1 success in 2, expected 1.0: utility +0.00), the exemplar in the successful
    one only (expected 0.5: utility +0.50); and the trainer idle after a cycle whose
    candidate v2 the gate rejected."""
    from agentkit.memory import ExperienceLibrary
    from agentkit.memory.library import NewItem, RunOutcome
    from agentkit.store.trainer import TrainerStore

    family = "arithmetic/2"
    with ExperienceLibrary(path) as library:
        library.add([NewItem.insight(family, "a sum of two-digit numbers", INSIGHT),
                     NewItem.exemplar(family, "Compute 7 * 6.", "Step 1: 7 * 6 = 42\nAnswer: 42")],
                    message="seed the library")
        library.apply_outcomes([RunOutcome(success, family, True, ["solve"], [(1, "solve"), (2, "solve")]),
                                RunOutcome(failed, family, False, ["solve"], [(1, "solve")])])
    with TrainerStore(path) as book:
        book.add_cycle("arithmetic", "2026-01-02T03:04:00+00:00", policy_version="v1", run_from=0, run_to=12,
                       runs=12, failed=5, pairs=7, pending=0, candidate="v2", decision="reject", p_value=0.31,
                       collect_s=1.5, train_s=42.0, gate_s=7.25)
        book.save("arithmetic", run_cursor=12, pair_cursor=7, status={
            "state": "idle", "pid": 4242, "cycles": 1, "active_policy": "v1", "pending_pairs": 0,
            "last_gate": {"candidate": "v2", "decision": "reject", "p_value": 0.31}})
