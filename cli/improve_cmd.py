"""``agentkit improve``: rounds of collect, credit, train, gate and promote
(agentkit.learn.improve). Only typer is imported at module level (see app.py); the options'
defaults are ImproveConfig's, read when the command runs or shows its help (ImproveCommand),
and so are their checks (its ConfigError, shown with the flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from agentkit.cli._common import (
    ConfigCommand,
    Shown,
    _load_backend,
    _quiet_hub,
    _flags,
    _require,
    _stderr_console,
    _store_option,
    _store_path,
)

__all__ = ["improve", "ImproveCommand"]


class ImproveCommand(ConfigCommand):
    @staticmethod
    def defaults() -> dict[str, Any]:
        """ImproveConfig's defaults, so that changing one there changes the command."""
        from agentkit.learn.improve import FINAL_SEED, SEARCH_BY_DEFAULT, ImproveConfig

        config = ImproveConfig()
        same = ("suite", "method", "advance_at", "pool", "eval_tasks",
                "final_tasks", "rectifications", "chosen_by", "step_advantages", "gate_metric", "memory", "collect_with",
                "alpha_spending", "vocabulary")
        trees = ", ".join(SEARCH_BY_DEFAULT[:-1]) + " and " + SEARCH_BY_DEFAULT[-1]
        return {**{name: getattr(config, name) for name in same}, "levels": ",".join(map(str, config.levels)),
                "samples": config.samples_per_task, "out": Path(config.output_dir),
                "explore": Shown(f"search for {trees} on the solve prompt; else sample"), "search": Shown(config.search),
                "curriculum": Shown("mopps where rounds search; else none"),
                "rounds": Shown("7 where rounds search; else 3"),
                "incremental": Shown("on for rft on search trees, unless --from-base"),
                "from_base": Shown("--continue; --from-base for rft on search trees with --no-incremental"),
                "final_seed": Shown(f"the gate's seed + {FINAL_SEED}"), "train_tasks": Shown("320 where rounds search; else 96")}


def improve(
    graph: Optional[str] = typer.Argument(None, help="Graph to improve: a prebuilt graph or a .py file defining `graph` (default: the single solve prompt). Every model call of the graph shares the trained policy."),
    suite: str = typer.Option(None, help="Built-in suite to train and gate on."),
    rounds: int = typer.Option(None, help="Rounds of collect -> pairs -> train -> gate."),
    method: str = typer.Option(None, help="step-dpo, dpo (whole-output), rft, grpo, rloo, gold-sft (SFT on gold solutions, the reference) or expert (with --explore search: SFT on the solutions search found, then DPO on its sibling steps)."),
    explore: Optional[str] = typer.Option(None, help="How a round collects its data: sample (whole outputs, then the method's credit) or search (step-level search trees, with --method rft, step-dpo, expert, grpo or rloo)."),
    search: Optional[str] = typer.Option(None, metavar="SPEC", help="With --explore search: the strategy, beam:WxK (beam width W, K lines per node) or mcts:N / mcts:NxK (N simulations); end it in :mc to value lines by Monte-Carlo rollouts instead of the step checker, then in any ,name=value sampling options (mcts:8x8,temperature=1.0,top_p=0.99)."),
    collect_with: str = typer.Option(None, help="Which policy collects a round's data: the active one, or the best scorer on the gate set so far, promoted or not (best: collected data is verified either way; the active policy still changes only through the gate)."),
    levels: str = typer.Option(None, help="Curriculum: training level per round, comma-separated (the last repeats); the gate and final test sets are of the last level."),
    advance_at: float = typer.Option(None, help="With --explore search and several --levels: stay on a level until search solves this share of a round's fresh training tasks (0: one level per round)."),
    train_tasks: int = typer.Option(None, help="New training tasks per round."),
    curriculum: str = typer.Option(None, help="With --explore search: which fresh tasks a round searches, all (none) or those whose family a Bayesian bandit over search's past successes expects to be solved neither always nor never (mopps, the default where rounds search)."),
    pool: int = typer.Option(None, help="With --curriculum mopps: candidate tasks a round draws, as a multiple of --train-tasks; the curriculum picks --train-tasks of them."),
    eval_tasks: int = typer.Option(None, help="Gate tasks: held-out test tasks the gate compares policies on."),
    final_tasks: int = typer.Option(None, help="Final test tasks, apart from the gate tasks, that no decision reads: the active policy's success on them, with a 95% interval, after every round (0: off)."),
    final_seed: int = typer.Option(None, help="Seed of the final test set: a fresh one measures again, on tasks no choice has seen, a configuration chosen on an earlier final test set."),
    samples: int = typer.Option(None, help="Samples per training task."),
    rectifications: int = typer.Option(None, help="step-dpo: continuations sampled from each first wrong step."),
    chosen_by: str = typer.Option(None, help="step-dpo: a rectified step counts when the answer verifies (outcome) or when the step checker accepts it (step)."),
    step_advantages: str = typer.Option(None, help="grpo/rloo: outcome advantages only (none), or each step's tokens also get its progress under the suite's step checker (checker)."),
    gate_metric: str = typer.Option(None, help="What the gate needs a significant gain in: success or step-accuracy."),
    alpha_spending: str = typer.Option(None, help="How the rounds' gates share alpha: equal (alpha / rounds each) or rising (round r's share proportional to r: later candidates, trained on more data, face a looser level). A promotion passes its level on to the next gate; the run's chance of any false promotion stays within alpha."),
    vocabulary: str = typer.Option(None, help="The tokens the policy writes with: the model's whole vocabulary (full), or only those of the suite's worked solutions (suite): every request of the run decodes only them and training's softmax runs over them alone, which skips most of the output layer's cost. auto: suite for the solve prompt where the suite's vocabulary writes every gold solution of the gate set, else full."),
    memory: int = typer.Option(None, help="Experience-library items shown per prompt; every sampled run updates the library (0: off)."),
    from_base: Optional[bool] = typer.Option(None, "--from-base/--continue", help="Train each candidate as a fresh LoRA adapter on the base model over every round's data (ReST-EM), or continue the active policy's adapter."),
    incremental: Optional[bool] = typer.Option(None, "--incremental/--no-incremental", help="With --explore search and --method rft: continue the active policy's adapter on the solutions it has not learnt yet (this round's, and those of refused rounds), so a round's training costs its new data, not every round's. --no-incremental trains from the base model over every round's solutions unless --continue is given."),
    model: str = typer.Option("gemma-3-270m", help="Base model: gemma-3-270m, a local directory, or a cached Hugging Face id."),
    dtype: str = typer.Option("auto", help="auto, bf16 or fp32 (sampling and training)."),
    out: Path = typer.Option(None, help="Directory for adapters, checkpoints and the learning curve."),
    store: Optional[Path] = _store_option(),
) -> None:
    """Make the policy better at a suite: rounds of collect, credit, train a LoRA candidate, gate, promote."""
    from rich.console import Console

    from agentkit.cli.render import improve_table
    from agentkit.graph import load_graph
    from agentkit.learn.improve import ImproveConfig, improve as run_improve, plot_curve
    from agentkit.store import TrajectoryStore
    from agentkit.tasks import get_suite

    try:
        level_list = [int(x) for x in levels.split(",") if x.strip()]
    except ValueError:
        level_list = []
    _require(bool(level_list), f"--levels {levels!r}: give difficulty levels as integers, e.g. --levels 1,2")
    single = graph in (None, "single_solver", "solve")
    with _flags({"samples_per_task": "--samples", "output_dir": "--out"}):  # ImproveConfig checks every option
        config = ImproveConfig(suite=suite, method=method, graph=None if single else graph, rounds=rounds,
                               levels=level_list, train_tasks=train_tasks, eval_tasks=eval_tasks,
                               samples_per_task=samples, rectifications=rectifications, chosen_by=chosen_by,
                               gate_metric=gate_metric, memory=memory, step_advantages=step_advantages, explore=explore,
                               final_tasks=final_tasks, advance_at=advance_at, from_base=from_base,
                               incremental=incremental, final_seed=final_seed,
                               curriculum=curriculum, pool=pool, collect_with=collect_with,
                               alpha_spending=alpha_spending, vocabulary=vocabulary, **({"search": search} if search else {}), output_dir=str(out / "rounds"))
    # what a config cannot see: a --search the command was given, and what loads
    _require(search is None or config.explore == "search", f"--search {search} is the strategy of --explore search; "
                                                           "add --explore search or drop --search")
    if not single:
        load_graph(graph)  # an unknown graph or a broken file fails here, before the model loads
    task_suite = get_suite(suite)
    bad = [lvl for lvl in level_list if lvl not in task_suite.levels]
    _require(not bad, f"--levels {levels}: {suite} has levels {', '.join(map(str, task_suite.levels))}")

    err, console = _stderr_console(), Console()
    _quiet_hub()
    with TrajectoryStore(_store_path(store)) as traces:
        llm = _load_backend("transformers", model, spinner=False, dtype=dtype)
        try:
            results = run_improve(llm, traces, config, model=model,
                                  on_status=lambda message: err.print(message, highlight=False, markup=False),
                                  on_round=lambda r: console.print(improve_table([r])))
        finally:
            llm.close()
    console.print(improve_table(results))
    png = plot_curve(results, out / "learning_curve.png", title=f"agentkit improve ({method}) on {suite}")
    typer.echo(f"learning curve: {png}")

