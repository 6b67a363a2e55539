"""`agentkit improve`: the continual loop.

Each round: collect (sample several solutions per training task with the active policy)
-> credit and pairs (or successes, or reward groups, by method) -> train a LoRA candidate
continuing the active adapter -> gate it against the active policy on the same held-out
tasks -> promote only on a significant gain. A round that is not promoted leaves the
policy as it was, so no promoted round is worse than the one before it.

Methods (RESEARCH.md): ``step-dpo`` (pairs at the first wrong step, Step-DPO), ``dpo``
(whole-output pairs, outcome DPO), ``rft`` (SFT on verified successes, STaR), ``grpo`` and
``rloo`` (policy gradient on groups of samples with verified rewards); and ``gold-sft``, SFT
on the suite's gold solutions, the supervised reference self-improvement is measured against
(it samples nothing and needs solutions no verifier-only setting has).
"""

from __future__ import annotations

import logging
import random
import resource
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from agentkit.errors import AgentkitError, ConfigError
from agentkit.graph import load_graph
from agentkit.learn.credit import output_step
from agentkit.learn.curriculum import FamilyBandit
from agentkit.learn.cycle import CandidateConfig, gate_candidate, register_trained, train_candidate
from agentkit.learn.gate import GateConfig, GateResult, Measured, spend_alpha, wilson_interval
from agentkit.learn.trees import search_tokens, solution_example, tree_groups, tree_pairs
from agentkit.learn.pairs import CHOSEN_BY, StepDPOConfig, build_outcome_pairs, build_step_pairs, sample_solutions
from agentkit.learn.values import step_token_spans
from agentkit.llm._malloc import release_memory
from agentkit.llm.base import LLM
from agentkit.llm.views import PolicyLLM, VocabularyLLM
from agentkit.memory.learning import update_from_runs
from agentkit.memory.library import ExperienceLibrary
from agentkit.runtime import Budget, GraphAgent, SolveAgent, run_tasks
from agentkit.runtime.policy import adapter_name, load_policy
from agentkit.graph.search import as_strategy
from agentkit.store import ImproveLog, PairStore, PolicyRegistry
from agentkit.store.policies import BASE
from agentkit.store.protocols import RunStore
from agentkit.tasks import Suite, Task, get_suite, split_steps
from agentkit.train.configs import DPOConfig, PGConfig, SFTConfig, TrainConfig, field_of
from agentkit.train.examples import PreferenceExample, RLGroup, SFTExample

__all__ = ["ImproveConfig", "RoundResult", "improve", "METHODS", "GRAPH_METHODS", "STEP_ADVANTAGES", "EXPLORE",
           "CURRICULA", "COLLECT_WITH", "SEARCH_METHODS", "SEARCH_BY_DEFAULT", "default_explore", "checker_values",
           "final_tasks", "plot_curve"]

log = logging.getLogger("agentkit.improve")

METHODS = ("step-dpo", "dpo", "rft", "grpo", "rloo", "gold-sft", "expert")
GRAPH_METHODS = ("step-dpo", "rft")
"""What trains a multi-node graph: both take their data from the model call that wrote the
run's answer, whatever prompt the graph gave it. The others compare outputs of one prompt
(dpo, grpo, rloo) or need the solver's prompt without a run (gold-sft)."""
STEP_ADVANTAGES = ("none", "checker")
EXPLORE = ("sample", "search")
COLLECT_WITH = ("active", "best")
VOCABULARIES = ("auto", "full", "suite")
_SINGLE = (None, "single_solver", "solve")  # graph names that mean the single solve prompt
CURRICULA = ("none", "mopps")
"""Which of a round's fresh tasks it trains on: all of them, or those a bandit over task
families expects search to solve about half the time (agentkit.learn.curriculum)."""
SEARCH_METHODS = ("rft", "step-dpo", "expert", "grpo", "rloo")
"""What trains on search trees: ``rft`` imitates the verified solutions search found
(expert iteration, ReST-EM), ``step-dpo`` takes the sibling pairs of every expanded node
(DPO + NLL), ``expert`` does both in one candidate (SFT on the solutions, then DPO + NLL
on the pairs, continuing it)."""
SEARCH_BY_DEFAULT = ("rft", "step-dpo", "expert")
"""The methods that collect by search unless the config says otherwise (``default_explore``);
grpo and rloo sample their groups unless told to search."""
POLICY_GRADIENT = ("grpo", "rloo")
"""Methods that train on-policy: they continue the policy that sampled their groups."""
SAMPLING_TEMPERATURE = 0.8
FINAL_SEED = 7919
"""The final test set is drawn from this seed offset and never shares a task with the gate set."""


def default_explore(method: str, graph: str | None = None) -> str:
    """How a round collects when the config does not say: by search for the methods in
    SEARCH_BY_DEFAULT on the single solve prompt (the measured best, see bench/results), else
    by sampling."""
    return "search" if method in SEARCH_BY_DEFAULT and graph in _SINGLE else "sample"


@dataclass
class ImproveConfig(GateConfig, CandidateConfig):
    """One `agentkit improve` run, and the one place its defaults are set (the CLI and
    bench/improve.py read them from here). Saved with every policy version it produces and
    in the improve journal.

    How a round samples are StepDPOConfig's knobs, with their defaults and help (``field_of``),
    except where rounds that run back to back on a CPU want less: 4 samples per task (not 8),
    8 rectifications per first wrong step (not 16) and answers of at most 96 tokens (not 160).
    How a candidate trains are CandidateConfig's knobs (lr, epochs, batch_size, beta,
    nll_weight, lora_r); policy-gradient candidates (grpo, rloo) train at a fifth of ``lr``.
    How the gate decides are GateConfig's knobs (eval_tasks, eval_level, eval_seed, shots,
    alpha, gate_metric, concurrency), with improve's defaults where they differ (said there)."""

    suite: str = "arithmetic"
    method: str = "rft"
    graph: str | None = None
    """A prebuilt graph name or a .py file defining ``graph`` (see agentkit.graph.load_graph):
    collection, the held-out measurement and the gate all run it, and every model call of
    its runs shares the one policy being trained. None: the single solve prompt."""
    rounds: int | None = None
    """Rounds of collect -> train -> gate. None: 7 where rounds search (what fits in 30
    CPU-minutes at one operation, bench/results/improve-incremental-7r.md), else 3."""
    levels: list[int] = field(default_factory=lambda: [1])
    """Curriculum: round r trains on levels[min(r, len - 1)] (easier tasks first), or, with
    ``advance_at``, moves through them as the policy earns it."""
    advance_at: float = 0.0
    """explore=search: stay on a level until search solves at least this share of a round's
    fresh training tasks (tasks the policy has never trained on: a held-out measure), then
    move to the next of ``levels`` (0: follow the fixed schedule)."""
    train_tasks: int | None = None
    """New training tasks per round. None: 320 where rounds search (a beam:1x8 tree is
    cheap), else 96."""
    curriculum: str | None = None
    """explore=search: "none" (train on every fresh task) or "mopps" (draw ``pool`` times as
    many and search the ones whose family (``Suite.family``) a Bayesian bandit, fed with what
    search solved in the rounds before, expects to be neither always nor never solved). None:
    mopps where the round searches (the measured best, bench/results/improve-search-rft-mopps.md),
    else none."""
    pool: int = 4
    """curriculum=mopps: the candidate tasks a round draws, as a multiple of ``train_tasks``."""
    eval_tasks: int = field_of(GateConfig, "eval_tasks", default=200)
    final_tasks: int = 200
    """Final test tasks: test-split tasks from another seed, disjoint from the gate set, that
    no decision ever reads; the active policy is measured on them after every round (0: off)."""
    final_seed: int | None = None
    """The final test set's seed. None: ``eval_seed`` + FINAL_SEED. A fresh one measures a
    configuration chosen on an earlier final test set again, on tasks no choice has seen."""
    explore: str | None = None
    """How a round collects: "sample" (whole outputs, then the method's credit) or "search"
    (step-level search trees; see SEARCH_METHODS). None: ``default_explore``, the measured best."""
    search: str = "beam:1x8"
    """explore=search: the strategy (agentkit.graph.search.parse_search). The defaults of
    search, train_tasks, rounds, alpha_spending, vocabulary and incremental are the best
    configuration measured within the 30 CPU-minute budget: 32.7% mean on a final test set no
    choice read, at one operation, 24.6-26.6 CPU-minutes (bench/results/improve-incremental-7r.md)."""
    collect_with: str = "active"
    """Which policy collects a round's data. "active": the policy the gate promoted. "best":
    of every policy measured on the gate set, the one that scored highest there (the latest
    on a tie), promoted or not. What a round collects is verified whichever policy found it,
    so choosing the collector needs no significance test; the active policy still changes
    only through the gate (AlphaZero collected with its latest network, AlphaGo Zero gated it)."""
    alpha_spending: str = "rising"
    """How the gates of the rounds share alpha (``spend_alpha``), fixed before the first:
    "equal" (alpha / rounds each) or "rising" (round r's share proportional to r, so the
    later candidates, trained on more data, face a looser level). Either way a promotion
    passes its level on to the next gate and the run's chance of any false promotion
    stays within alpha."""
    vocabulary: str = "auto"
    """The tokens the policy writes with. "full": the model's whole vocabulary. "suite":
    only the tokens of the suite's worked solutions (``Suite.vocabulary``): every request of
    the run, round 0 and the gate and the final test included, decodes only them
    (``allowed_token_ids``), and training's softmax runs over them alone, so the candidate is
    trained as exactly the policy that decodes. On Gemma's 262k-token vocabulary that skips
    the output layer's cost, the larger half of a training step. "auto": "suite" for the
    single solve prompt when the suite's vocabulary writes every gold solution of the gate
    set, else "full"."""
    step_advantages: str = "none"
    """grpo/rloo: "none" (outcome advantages only) or "checker" (each step's tokens also get
    its progress under the suite's step checker, see ``checker_values``)."""
    memory: int = 0
    """Experience library items shown per prompt (0: off). On: every sampled run updates the
    library in the store (verified exemplars, utilities), and sampling, the held-out
    measurement and the gate all read it, so a policy is judged with the memory it trained with."""
    replay: bool = True
    """Train each candidate on every pair collected so far (a replay buffer), not only this
    round's; with ``incremental``, on every solution the active policy has not learnt."""
    from_base: bool | None = None
    """Train each candidate as a fresh adapter on the base model (ReST-EM), not by continuing
    the active policy's adapter; with ``replay`` it learns every round's data at once. None:
    on for rft on search trees without ``incremental``, else off (grpo and rloo must continue
    the policy that sampled their groups)."""
    incremental: bool | None = None
    """explore=search, rft: continue the active policy's adapter on the verified solutions it
    has not learnt yet (this round's, and those of rounds whose candidates the gate refused),
    not a fresh adapter on the whole replay buffer. A round's training then costs its new
    data, not every round's. None: on for rft on search trees unless ``from_base`` is asked
    for (the measured best, bench/results/improve-incremental.md)."""
    # how a round samples (StepDPOConfig's knobs; GateConfig's shots and this max_tokens set every prompt of the run)
    samples_per_task: int = field_of(StepDPOConfig, "samples_per_task", default=4)
    rectifications: int = field_of(StepDPOConfig, "rectifications", default=8)
    chosen_by: str = field_of(StepDPOConfig, "chosen_by")
    max_tokens: int = field_of(StepDPOConfig, "max_tokens", default=96)
    concurrency: int = field_of(GateConfig, "concurrency", default=32, help="Tasks in flight at once, in every run of a round.")
    seed: int = 0
    """Seeds the training tasks of every round, sampling, search and the LoRA initialisation.
    The gate set and the final test set do not depend on it (``eval_seed``), so runs with
    different seeds are measured on the same tasks."""
    output_dir: str = "agentkit-improve"

    def __post_init__(self) -> None:
        # every check of a run's settings, the CLI's too: ConfigError names the knobs in
        # backquotes, which `agentkit improve` shows as its flags
        super().__post_init__()  # GateConfig's checks
        single = self.graph in _SINGLE
        if self.method not in METHODS:
            raise ConfigError(f"`method={self.method}`: choose one of {', '.join(METHODS)}")
        if self.explore is None:
            self.explore = default_explore(self.method, self.graph)
        if self.explore not in EXPLORE:
            raise ConfigError(f"`explore={self.explore}`: choose one of {', '.join(EXPLORE)}")
        if self.incremental is None:
            self.incremental = self.method == "rft" and self.explore == "search" and not self.from_base
        if self.incremental and (self.method != "rft" or self.explore != "search"):
            raise ConfigError(f"`incremental` trains rft candidates on search trees' solutions; with "
                              f"`method={self.method}` and `explore={self.explore}` drop it")
        if self.incremental and self.from_base:
            raise ConfigError("`incremental` continues the active policy's adapter; drop `from_base`")
        if self.incremental and not self.replay:
            raise ConfigError("`incremental` keeps the solutions of refused rounds for the next candidate; "
                              "drop `replay=False`")
        if self.from_base is None:
            self.from_base = self.method == "rft" and self.explore == "search" and not self.incremental
        if self.final_seed is None:
            self.final_seed = self.eval_seed + FINAL_SEED
        if self.explore == "search":
            if not single:
                raise ConfigError(f"`explore=search` searches the single solve prompt; graph '{self.graph}' declares "
                                  "search on its solver node (add_node(..., search=...)), so improve it with "
                                  "`explore=sample`")
            if self.method not in SEARCH_METHODS:
                raise ConfigError(f"`method={self.method}` does not train on search trees; with `explore=search` "
                                  f"choose one of {', '.join(SEARCH_METHODS)}")
            try:
                as_strategy(self.search)  # a bad spec fails here, before anything loads
            except AgentkitError as exc:
                raise ConfigError(f"`search={self.search}`: {exc}") from None
        elif self.method == "expert":
            raise ConfigError("`method=expert` trains on search trees; add `explore=search`")
        if self.curriculum is None:
            self.curriculum = "mopps" if self.explore == "search" else "none"
        if self.rounds is None:
            self.rounds = 7 if self.explore == "search" else 3
        if self.train_tasks is None:
            self.train_tasks = 320 if self.explore == "search" else 96
        if self.curriculum not in CURRICULA:
            raise ConfigError(f"`curriculum={self.curriculum}`: choose one of {', '.join(CURRICULA)}")
        if self.curriculum != "none" and self.explore != "search":
            raise ConfigError(f"`curriculum={self.curriculum}` learns from search's solved tasks; add "
                              "`explore=search` or drop `curriculum`")
        for name in ("rounds", "train_tasks", "pool"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}={getattr(self, name)}`: must be at least 1")
        if self.final_tasks < 0:
            raise ConfigError(f"`final_tasks={self.final_tasks}`: give 0 (off) or more tasks")
        if not self.levels:
            raise ConfigError("`levels` is empty; give at least one difficulty level")
        if not 0.0 <= self.advance_at <= 1.0:
            raise ConfigError(f"`advance_at={self.advance_at}`: give a share of tasks in [0, 1] (0: fixed schedule)")
        if self.advance_at and self.explore != "search":
            raise ConfigError(f"`advance_at={self.advance_at}` reads search's success on fresh tasks; add "
                              "`explore=search` or drop `advance_at`")
        if not single and self.method not in GRAPH_METHODS:
            raise ConfigError(f"`method={self.method}` trains the single solver only; improve graph '{self.graph}' "
                              f"with `method` {' or '.join(GRAPH_METHODS)}")
        if not single and self.memory:
            raise ConfigError(f"`memory={self.memory}` sets the solve prompt; graph '{self.graph}' declares memory on "
                              "its nodes, drop `memory`")
        if self.memory < 0:
            raise ConfigError(f"`memory={self.memory}`: give a number of library items, 0 or more")
        if self.chosen_by not in CHOSEN_BY:
            raise ConfigError(f"`chosen_by={self.chosen_by}`: choose {' or '.join(CHOSEN_BY)}")
        if self.step_advantages not in STEP_ADVANTAGES:
            raise ConfigError(f"`step_advantages={self.step_advantages}`: choose {' or '.join(STEP_ADVANTAGES)}")
        if self.step_advantages != "none" and self.method not in POLICY_GRADIENT:
            raise ConfigError(f"`step_advantages={self.step_advantages}` is for `method` grpo or rloo, not "
                              f"{self.method}; drop it")
        spend_alpha(self.rounds, self.alpha_spending)  # an unknown schedule fails here
        if self.vocabulary not in VOCABULARIES:
            raise ConfigError(f"`vocabulary={self.vocabulary}`: choose one of {', '.join(VOCABULARIES)}")
        if self.vocabulary == "suite" and not single:
            raise ConfigError(f"`vocabulary=suite` is the vocabulary of solutions; graph '{self.graph}' also writes "
                              "plans and critiques, drop `vocabulary`")
        if self.collect_with not in COLLECT_WITH:
            raise ConfigError(f"`collect_with={self.collect_with}`: choose {' or '.join(COLLECT_WITH)}")
        if self.collect_with != "active" and self.method in POLICY_GRADIENT:
            raise ConfigError(f"`method={self.method}` trains the policy that sampled its groups, the active one; "
                              "drop `collect_with`")
        if self.from_base and self.method in POLICY_GRADIENT:
            raise ConfigError(f"`method={self.method}` continues the policy that sampled its groups; drop `from_base`, "
                              "which trains a fresh adapter on every round's data")

    def pair_config(self, round_: int) -> StepDPOConfig:
        """How round ``round_`` samples and rectifies."""
        return StepDPOConfig(samples_per_task=self.samples_per_task, rectifications=self.rectifications,
                             shots=self.shots, max_tokens=self.max_tokens, seed=self.seed + round_,
                             chosen_by=self.chosen_by)

    def train_config(self, output_dir: Path, method: str | None = None,
                     allowed_token_ids: Sequence[int] | None = None) -> TrainConfig:
        """How a candidate of ``method`` (default: the config's) trains into ``output_dir``,
        over ``allowed_token_ids`` (vocabulary=suite) or the whole vocabulary."""
        method = method or self.method
        common = dict(output_dir=str(output_dir), lr=self.lr, epochs=self.epochs, batch_size=self.batch_size,
                      lora_r=self.lora_r, seed=self.seed, allowed_token_ids=list(allowed_token_ids or []))
        if method in ("step-dpo", "dpo"):
            return DPOConfig(beta=self.beta, nll_weight=self.nll_weight, **common)
        if method in ("rft", "gold-sft"):
            return SFTConfig(**common)
        return PGConfig(method=method, step_weight=1.0 if self.step_advantages == "checker" else 0.0,
                        **{**common, "lr": self.lr / 5})


@dataclass
class RoundResult:
    round: int
    level: int
    incumbent: str
    candidate: str | None
    promoted: bool
    examples: int
    """Pairs / sequences / groups the candidate trained on."""
    new_data: dict[str, Any]
    heldout_success: float
    """Of the policy active after this round."""
    heldout_step_accuracy: float | None
    candidate_success: float | None
    candidate_step_accuracy: float | None
    p_value: float | None
    sampled_tokens: int
    train_s: float
    wall_s: float
    p_adjusted: float | None = None
    """The gate's p-value corrected for the rounds' gates (GateResult.p_adjusted: alpha spent
    over the rounds, a promotion's share carried to the next gate)."""
    final_success: float | None = None
    """Of the policy active after this round, on the final test set no decision reads."""
    final_ci95: tuple[float, float] | None = None
    final_step_accuracy: float | None = None
    final_n: int = 0
    cpu_s: float = 0.0
    """User + system CPU seconds of this process since the run began (training included)."""


def improve(
    llm: LLM,
    store: RunStore,
    config: ImproveConfig,
    *,
    model: str = "gemma-3-270m",
    on_round: Callable[[RoundResult], None] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> list[RoundResult]:
    """Run ``config.rounds`` rounds; returns one RoundResult per round plus a round 0 that
    measures the starting policy. ``llm`` samples and evaluates (it must load adapters);
    training loads its own copy of ``model``. The run and each round, as it ends, are
    recorded in the store (store.improve.ImproveLog), where `agentkit ui` reads them."""
    journal = ImproveLog(store)
    improve_id = journal.start(suite=config.suite, graph=config.graph, method=config.method, config=asdict(config))

    def record(row: RoundResult) -> None:
        journal.add_round(improve_id, row.round, asdict(row))
        if on_round:
            on_round(row)

    try:
        rounds = _improve(llm, store, config, model=model, on_round=record, on_status=on_status)
    except BaseException:
        journal.finish(improve_id, "failed")
        raise
    journal.finish(improve_id)
    return rounds


def _improve(llm: LLM, store: RunStore, config: ImproveConfig, *, model: Any,
             on_round: Callable[[RoundResult], None], on_status: Callable[[str], None] | None) -> list[RoundResult]:
    status = on_status or (lambda message: log.info(message))
    suite = get_suite(config.suite)
    registry = PolicyRegistry(store.path)
    eval_level = config.eval_level or config.levels[-1]
    held_out = suite.tasks("test", config.eval_tasks, level=eval_level, seed=config.eval_seed)
    allowed = _run_vocabulary(llm, suite, held_out, config, status)
    if allowed is not None:
        llm = VocabularyLLM(llm, allowed)
        status(f"decoding and training over the {len(allowed)} tokens of the {suite.name} suite's vocabulary")
    library = None
    if config.memory > 0:
        library = ExperienceLibrary(store)
    graph = _graph(config)
    if graph is not None:
        agent: Any = GraphAgent(graph, shots=config.shots, max_tokens=config.max_tokens)
    else:
        agent = SolveAgent(shots=config.shots, max_tokens=config.max_tokens, library=library, memory=config.memory)
    out_dir = Path(config.output_dir)

    incumbent = registry.active().version
    final = final_tasks(suite, config.final_tasks, eval_level, config.final_seed, exclude=held_out)
    cpu0 = _cpu_seconds()
    status(f"round 0: measuring the active policy '{incumbent}' on {len(held_out)} gate tasks"
           + (f" and {len(final)} final test tasks" if final else ""))
    start = time.perf_counter()
    name = load_policy(llm, registry, incumbent)
    report = run_tasks(PolicyLLM(llm, name), suite, held_out, store, agent=agent, concurrency=config.concurrency,
                       policy_version=incumbent)
    # the active policy's gate-set outcomes: round 0 ran it as the gate does (same agent,
    # decoding, budget and concurrency), so every gate reuses them and runs only its candidate
    active: Measured | None = Measured.of(incumbent, report)
    measured = _final(llm, suite, final, store, agent, config, incumbent)
    rounds = [RoundResult(0, eval_level, incumbent, None, False, 0, {}, report.success_rate, report.step_accuracy,
                          None, None, None, report.completion_tokens, 0.0, time.perf_counter() - start,
                          **measured, cpu_s=_cpu_seconds() - cpu0)]
    if on_round:
        on_round(rounds[0])
    # explore=search: the verified solutions rft candidates train on: every round's, or with
    # incremental those the active policy has not learnt (emptied on a promotion)
    solutions: list[Any] = []
    # the policy that collects, and its gate-set score (collect_with=best: the best measured so far)
    collector, collector_score = incumbent, _gate_score(config.gate_metric, report.success_rate, report.step_accuracy)
    step = 0  # the curriculum's place in config.levels
    shares = spend_alpha(config.rounds, config.alpha_spending)  # each round's gate's own fraction of alpha
    carried = 0.0  # the fraction of alpha the next gate inherits (GateResult.carried)
    bandit = FamilyBandit() if config.curriculum == "mopps" else None

    for r in range(1, config.rounds + 1):
        start = time.perf_counter()
        step = step if config.advance_at else r - 1
        level = config.levels[min(step, len(config.levels) - 1)]
        drawn = config.train_tasks * (config.pool if bandit else 1)
        pool = suite.tasks("train", drawn, level=level, seed=config.seed + 1000 * r)
        tasks = pool
        if bandit:
            tasks = bandit.select(pool, config.train_tasks, random.Random(config.seed * 1000 + r), suite.family)
        adapter = adapter_name(collector)
        how = f"searching ({config.search})" if config.explore == "search" else "collecting"
        picked = f" (the curriculum's pick of {drawn})" if bandit else ""
        status(f"round {r}: {how} on {len(tasks)} level-{level} training tasks{picked} with '{collector}'")
        if config.explore == "search":
            examples, new_data, sampled, solved = _collect_search(llm, suite, tasks, store, config, collector, adapter,
                                                                  solutions, r)
            share = new_data["solved"] / len(tasks)  # fresh tasks: a held-out measure of the level
            if bandit:
                outcomes = [(suite.family(t), solved.get(t.id, False)) for t in tasks]
                bandit.update(outcomes)
                share = bandit.level_share([suite.family(t) for t in pool], outcomes)  # the pick is not the level
                new_data["picked"] = dict(sorted(Counter(f for f, _ in outcomes).items()))
                new_data["curriculum"] = bandit.means()
                new_data["level_share"] = round(share, 3)
            if config.advance_at and share >= config.advance_at:
                step += 1
                status(f"round {r}: search solves {share:.0%} of fresh level-{level} tasks "
                       f"(>= {config.advance_at:.0%}); the next round moves up a level")
        elif graph is not None:
            examples, new_data, sampled = _collect_graph(llm, suite, tasks, store, config, collector, adapter, r, graph)
        else:
            examples, new_data, sampled = _collect(llm, suite, tasks, store, config, collector, adapter, r, agent)
        if config.collect_with != "active":
            new_data["collector"] = collector
        candidate, promoted, train_s, gate_result = None, False, 0.0, None
        if not examples:
            status(f"round {r}: no training data ({new_data}); the policy stays '{incumbent}'")
        else:
            status(f"round {r}: training a {config.method} candidate on {_describe(examples)}")
            t0 = time.perf_counter()
            result = _train(registry, config, out_dir / f"round-{r}", model, incumbent, examples,
                            on_log=_training_progress(status, r), allowed_token_ids=allowed)
            train_s = time.perf_counter() - t0
            if result.adapter_path is None:
                status(f"round {r}: training produced no adapter ({result.stats}); the policy stays '{incumbent}'")
            else:
                policy = register_trained(registry, result, parent=incumbent,
                                          data={**new_data, "round": r, "level": level, "improve": asdict(config)})
                candidate = policy.version
                status(f"round {r}: gating '{candidate}' against '{incumbent}' on {len(held_out)} gate tasks")
                gate_result = gate_candidate(registry, llm, suite, held_out, candidate, incumbent=incumbent,
                                             agent=agent, store=store, alpha=config.alpha,
                                             concurrency=config.concurrency, metric=config.gate_metric,
                                             share=shares[r - 1], carried=carried,
                                             # with memory, collection has changed the library the gate's
                                             # prompts read since the incumbent was measured: measure again
                                             incumbent_measured=None if config.memory > 0 else active)
                active = gate_result.kept
                promoted = gate_result.promote
                status(f"round {r}: {gate_result.summary()}")
                if promoted:
                    incumbent = candidate
                    if config.incremental:
                        solutions.clear()  # the new active policy has learnt them
                if r < config.rounds:  # a next round to collect
                    collector, collector_score = _next_collector(llm, registry, config, gate_result, incumbent,
                                                                 collector, collector_score, status, r)
        # a promotion passes its gate's whole level on (Wiens' fallback procedure), a refusal nothing
        carried = shares[r - 1] + carried if promoted else 0.0
        if gate_result is not None:
            success = gate_result.candidate_success if promoted else gate_result.incumbent_success
            step_acc = gate_result.candidate_step_accuracy if promoted else gate_result.incumbent_step_accuracy
        else:
            success, step_acc = rounds[-1].heldout_success, rounds[-1].heldout_step_accuracy
        if promoted:
            status(f"round {r}: measuring '{incumbent}' on the {len(final)} final test tasks")
            measured = _final(llm, suite, final, store, agent, config, incumbent)
        row = RoundResult(
            r, level, incumbent, candidate, promoted, len(examples), new_data, success, step_acc,
            gate_result.candidate_success if gate_result else None,
            gate_result.candidate_step_accuracy if gate_result else None,
            gate_result.p_value if gate_result else None,
            sampled, train_s, time.perf_counter() - start,
            p_adjusted=gate_result.p_adjusted if gate_result else None, **measured, cpu_s=_cpu_seconds() - cpu0,
        )
        release_memory()  # the trainer's model copy goes back to the OS before the next round
        rounds.append(row)
        if on_round:
            on_round(row)
    return rounds


def _gate_score(metric: str, success: float, step_accuracy: float | None) -> float:
    return (step_accuracy or 0.0) if metric == "step-accuracy" else success


def _next_collector(llm: LLM, registry: PolicyRegistry, config: ImproveConfig, gate_result: GateResult, incumbent: str,
                    collector: str, score: float, status: Callable[[str], None], round_: int) -> tuple[str, float]:
    """The policy that collects the next round, and its gate-set score: the active one, or
    with ``collect_with="best"`` the best scorer on the gate set so far (a candidate the gate
    refused is loaded again for it). Only the active policy and the collector stay loaded."""
    if config.collect_with == "active":
        return incumbent, score
    candidate = gate_result.candidate
    candidate_score = _gate_score(gate_result.metric, gate_result.candidate_success,
                                  gate_result.candidate_step_accuracy)
    if candidate_score >= score:
        collector, score = candidate, candidate_score
        if collector != incumbent:
            status(f"round {round_}: '{collector}' scored highest on the gate set ({score:.1%}); it collects next")
    for name in set(llm.list_adapters()) - {adapter_name(incumbent), adapter_name(collector)}:
        llm.unload_adapter(name)
    if adapter_name(collector) is not None and adapter_name(collector) not in llm.list_adapters():
        load_policy(llm, registry, collector)
    return collector, score


def final_tasks(suite: Suite, n: int, level: int, seed: int, *, exclude: list[Task]) -> list[Task]:
    """``n`` test tasks drawn from ``seed``, none of them in ``exclude`` (the gate set): the
    final test set, which no decision reads."""
    if n == 0:
        return []
    taken = {t.question for t in exclude}
    pool = suite.tasks("test", n + len(taken), level=level, seed=seed)
    return [t for t in pool if t.question not in taken][:n]


def _final(llm: LLM, suite: Suite, tasks: list[Task], store: RunStore, agent: Any, config: ImproveConfig,
           version: str) -> dict[str, Any]:
    """The active policy's greedy success on the final test set, with its 95% interval."""
    if not tasks:
        return {}
    report = run_tasks(PolicyLLM(llm, adapter_name(version)), suite, tasks, store, agent=agent,
                       concurrency=config.concurrency, policy_version=version)
    wins = sum(r.reward >= 1.0 for r in report.results)
    return {"final_success": wins / len(tasks), "final_ci95": wilson_interval(wins, len(tasks)),
            "final_step_accuracy": report.step_accuracy, "final_n": len(tasks)}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _describe(examples: Any) -> str:
    if isinstance(examples, _Staged):
        return f"{len(examples.solutions)} solutions and {len(examples.pairs)} pairs"
    return f"{len(examples)} examples"


@dataclass
class _Staged:
    """method=expert: SFT on the solutions, then DPO + NLL on the pairs, continuing it."""

    solutions: list[SFTExample]
    pairs: list[PreferenceExample]

    def __len__(self) -> int:
        return len(self.solutions) + len(self.pairs)


def _train(registry: PolicyRegistry, config: ImproveConfig, out: Path, model: str, incumbent: str, examples: Any,
           on_log: Callable[[dict[str, Any]], None] | None = None, allowed_token_ids: Sequence[int] | None = None) -> Any:
    """Train the round's candidate: one trainer run, or two stages for method=expert. It
    starts from the active policy's adapter, or from the base model with ``from_base``."""
    start = BASE if config.from_base else incumbent
    if not isinstance(examples, _Staged):
        return train_candidate(registry, config.train_config(out, allowed_token_ids=allowed_token_ids), model, start,
                               examples, on_log=on_log)
    result = None
    if examples.solutions:
        result = train_candidate(registry, config.train_config(out / "sft", "rft", allowed_token_ids), model, start,
                                 examples.solutions, on_log=on_log)
    if examples.pairs:
        parent = result.adapter_path if result is not None else None
        result = train_candidate(registry, config.train_config(out / "dpo", "step-dpo", allowed_token_ids), model, start,
                                 examples.pairs, parent_adapter=parent, on_log=on_log)
    return result


def _training_progress(status: Callable[[str], None], round_: int, lines: int = 4) -> Callable[[dict[str, Any]], None]:
    """A trainer's ``on_log`` that reports about ``lines`` times a training run (each stage of
    one, for ``expert``): step, loss, speed, where a logged step enters the next of
    ``lines + 1`` equal parts of the run, whatever the trainer's ``log_every``."""
    last = {"step": 0, "part": 0}

    def report(record: dict[str, Any]) -> None:
        step, total = record["step"], record["total_steps"]
        if step <= last["step"]:  # the next stage's trainer counts from 1 again
            last["part"] = 0
        last["step"], part = step, step * (lines + 1) // total
        if step < total and part > last["part"]:
            last["part"] = part
            status(f"round {round_}: training step {step}/{total}, loss {record['loss']:.3f}, "
                   f"{record['tokens_per_s']:.0f} tokens/s")

    return report


def _collect_search(llm: LLM, suite: Suite, tasks: list[Task], store: RunStore, config: ImproveConfig, version: str,
                    adapter: str | None, buffer: list[SFTExample],
                    round_: int = 1) -> tuple[Any, dict[str, Any], int, dict[str, bool]]:
    """This round's data from search trees: one search per training task with the active
    policy, recorded in the store; verified solutions (rft), sibling pairs (step-dpo), both
    (expert), or sibling groups with per-step advantages (grpo, rloo). Last, whether search
    solved each task, by task id (the curriculum's evidence). This round's solutions join
    ``buffer``, what rft candidates train on with ``replay``: every round's, or with
    ``incremental`` those the active policy has not learnt."""
    searcher = SolveAgent(shots=config.shots, max_tokens=config.max_tokens, search=config.search,
                          seed=config.seed * 1000 + round_)
    report = run_tasks(PolicyLLM(llm, adapter), suite, tasks, store, agent=searcher, concurrency=config.concurrency,
                       policy_version=version, budget=Budget(max_calls=None, max_tokens=None))
    runs = [store.get_run(r.run_id, steps=True) for r in report.results]
    found = {run.task_id: solution_example(run) for run in runs}
    solutions = [x for x in found.values() if x is not None]
    solved = {task_id: x is not None for task_id, x in found.items()}
    buffer += solutions
    pair_store = PairStore(store)
    new_pairs = tree_pairs(runs, suite=suite.name, policy_version=version, decode=llm.decode)
    new_ids = pair_store.add_pairs(new_pairs)
    sampled = sum(search_tokens(run) for run in runs)
    counts = {"searched": len(runs), "solved": len(solutions), "pairs": len(new_pairs),
              "search_tokens": sum(run.tokens or 0 for run in runs)}
    keep = set(new_ids)
    pairs = [PreferenceExample.from_record(p) for p in pair_store.pairs(kind="step", suite=suite.name)
             if config.replay or p.id in keep]
    trained = list(buffer) if config.replay else solutions
    if config.method == "rft":
        return trained, counts, sampled, solved
    if config.method == "step-dpo":
        return pairs, counts, sampled, solved
    if config.method in POLICY_GRADIENT:  # on-policy: this round's trees only
        groups = tree_groups(runs)
        return groups, {**counts, "groups": len(groups)}, sampled, solved
    return _Staged(trained, pairs), counts, sampled, solved


def _collect(llm: LLM, suite: Suite, tasks: list[Task], store: RunStore, config: ImproveConfig, version: str,
             adapter: str | None, round_: int, agent: Any = None) -> tuple[list[Any], dict[str, Any], int]:
    """This round's training data for the method, plus counts and the sampled token total.
    ``agent`` builds the sampling prompts; with a library, the sampled runs then update it."""
    pair_config = config.pair_config(round_)
    pairs = PairStore(store)
    library = getattr(agent, "library", None)

    def learn(run_ids: list[int]) -> dict[str, Any]:
        if library is None:
            return {}
        update = update_from_runs(library, store, run_ids, suite, tasks=tasks)
        return {"memory_version": update.version, "memory_added": len(update.added),
                "memory_retired": len(update.retired) + len(update.evicted)}

    if config.method == "gold-sft":
        end = "\n" + suite.stop[0] if suite.stop else ""
        data = [SFTExample(llm.tokenize(agent.prompt(task, suite)[0] if agent else suite.prompt(task, shots=config.shots)),
                           _continuation_ids(llm, task.solution + end), task.id) for task in tasks]
        return data, {"solutions": len(data)}, 0
    if config.method == "step-dpo":
        stats = build_step_pairs(llm, suite, tasks, store, pair_config, version, adapter=adapter, pair_store=pairs,
                                 agent=agent)
        kept = pairs.pairs(kind="step", suite=suite.name) if config.replay else pairs.pairs(kind="step", policy_version=version)
        if not config.replay:
            kept = [p for p in kept if p.id in set(stats.pair_ids)]
        counts = {**stats.as_dict(), **learn(stats.run_ids)}
        sampled = _tokens(store, stats.run_ids) + stats.rectification_tokens
        return [PreferenceExample.from_record(p) for p in kept], counts, sampled

    run_ids = sample_solutions(llm, suite, tasks, store, pair_config, version, adapter=adapter, agent=agent)
    runs = [store.get_run(i) for i in run_ids]
    sampled = _tokens(store, run_ids)
    successes = sum(run.status == "success" for run in runs)
    base = {"samples": len(runs), "successes": successes, **learn(run_ids)}
    if config.method == "dpo":
        new_ids = build_outcome_pairs(llm, store, run_ids, policy_version=version, pair_store=pairs)
        kept = pairs.pairs(kind="outcome", suite=suite.name) if config.replay else [
            p for p in pairs.pairs(kind="outcome") if p.id in set(new_ids)]
        return [PreferenceExample.from_record(p) for p in kept], {**base, "pairs": len(new_ids)}, sampled
    if config.method == "rft":
        data = [SFTExample(run.steps[0].prompt_ids, run.steps[0].completion_ids, run.id)
                for run in runs if run.status == "success"]
        return data, base, sampled
    groups: dict[str, list[Any]] = {}
    for run in runs:
        groups.setdefault(run.task_id, []).append(run)
    by_id = {t.id: t for t in tasks}
    data = [_rl_group(llm, suite, by_id[task_id], group, config.step_advantages)
            for task_id, group in groups.items() if len(group) >= 2]
    return data, {**base, "groups": len(data)}, sampled


def _graph(config: ImproveConfig) -> Any:
    """The graph to improve, or None for the single solve prompt."""
    if config.graph in _SINGLE:
        return None
    return load_graph(config.graph)


def _collect_graph(llm: LLM, suite: Suite, tasks: list[Task], store: RunStore, config: ImproveConfig, version: str,
                   adapter: str | None, round_: int, graph: Any) -> tuple[list[Any], dict[str, Any], int]:
    """This round's data for a multi-node graph: ``samples_per_task`` sampled runs of the
    whole graph per task (every node at the sampling temperature, a seed per pass), then
    Step-DPO pairs at the first wrong step of the call that wrote each failed run's answer
    (found by the step checker, else by Monte-Carlo rollouts through the rest of the graph),
    or, for rft, that call's output in each successful run."""
    policy = PolicyLLM(llm, adapter)
    run_ids: list[int] = []
    for k in range(config.samples_per_task):
        sampler = GraphAgent(graph, shots=config.shots, max_tokens=config.max_tokens,
                             temperature=SAMPLING_TEMPERATURE, seed=config.seed + 1000 * round_ + k)
        report = run_tasks(policy, suite, tasks, store, agent=sampler, concurrency=config.concurrency,
                           policy_version=version)
        run_ids += [result.run_id for result in report.results]
    sampled = _tokens(store, run_ids)
    runs = [store.get_run(i) for i in run_ids]
    base = {"samples": len(runs), "successes": sum(run.status == "success" for run in runs)}
    if config.method == "rft":
        steps = [output_step(run.steps) for run in runs if run.status == "success"]
        data = [SFTExample(step.prompt_ids, step.completion_ids, step.run_id) for step in steps if step is not None]
        return data, base, sampled
    pairs = PairStore(store)
    stats = build_step_pairs(llm, suite, tasks, store, config.pair_config(round_), version, run_ids=run_ids, adapter=adapter,
                             pair_store=pairs)
    kept = pairs.pairs(kind="step", suite=suite.name)
    if not config.replay:
        kept = [p for p in kept if p.id in set(stats.pair_ids)]
    return ([PreferenceExample.from_record(p) for p in kept], {**base, **stats.as_dict()},
            sampled + stats.rectification_tokens)


def _rl_group(llm: LLM, suite: Suite, task: Task, runs: list[Any], step_advantages: str) -> Any:
    """The sampled runs of one task as an RLGroup, with checker step values on request."""
    steps = [run.steps[0] for run in runs]
    group = RLGroup(steps[0].prompt_ids, [s.completion_ids for s in steps], [float(r.reward or 0.0) for r in runs],
                    [s.logprobs for s in steps], task.id)
    if step_advantages == "checker":
        group.step_values = [checker_values(suite, task, s.completion_text or "") for s in steps]
        group.step_spans = [step_token_spans(llm, s.completion_ids) for s in steps]
    return group


def checker_values(suite: Suite, task: Task, text: str) -> list[float]:
    """Step values V[0..S] of an output from the suite's step checker:

        V[0] = 0,  V[j] = j / G while steps 1..j all check,  V[j] = 0 from the first wrong step on

    with G the gold solution's step count. So every right step earns 1/G of progress, the
    first wrong one loses all the progress made, and steps after it earn nothing (the output
    is already off the gold path; no reward for well-formed lines built on a wrong value)."""
    checks = suite.check_steps(task, text) or []
    gold = max(1, len(split_steps(task.solution)))
    values, right = [0.0], True
    for ok in checks:
        right = right and ok
        values.append(values[-1] + 1 / gold if right else 0.0)
    return values


def suite_vocabulary(llm: LLM, suite: Suite, tasks: Sequence[Task]) -> tuple[list[int], list[int]]:
    """``Suite.vocabulary`` in ``llm``'s token ids, and the ids of ``tasks``' gold solutions
    (the gate set's) that it lacks. A suite whose solutions copy words from their questions
    has no closed vocabulary: its policy must not be measured without those words."""
    allowed = suite.vocabulary(lambda text: _continuation_ids(llm, text))
    written = {t for task in tasks for t in _continuation_ids(llm, f"{task.solution}\n\nQuestion:")}
    missing = sorted(written - set(allowed))
    return allowed, missing


def _run_vocabulary(llm: LLM, suite: Suite, held_out: Sequence[Task], config: ImproveConfig,
                    status: Callable[[str], None]) -> list[int] | None:
    """The allowed token ids of the run (None: the whole vocabulary), as ``config.vocabulary``
    asks: "suite" or, for "auto", where the suite's vocabulary writes the gate set."""
    if config.vocabulary == "full" or (config.vocabulary == "auto" and config.graph not in _SINGLE):
        return None
    allowed, missing = suite_vocabulary(llm, suite, held_out)
    if not missing:
        return allowed
    why = (f"the gate set's gold solutions use {len(missing)} tokens the {suite.name} suite's vocabulary lacks "
           f"(first {llm.decode(missing[:1])!r}): its solutions copy words from their questions")
    if config.vocabulary == "suite":
        raise ConfigError(f"`vocabulary=suite`: {why}; use `vocabulary=full`")
    status(f"decoding over the whole vocabulary: {why}")
    return None


def _continuation_ids(llm: LLM, text: str) -> list[int]:
    """``text``'s token ids without the BOS the tokenizer puts in front of a prompt."""
    head = llm.tokenize("")
    ids = llm.tokenize(text)
    return ids[len(head):] if ids[: len(head)] == head else ids


def _tokens(store: RunStore, run_ids: list[int]) -> int:
    return sum(sum(s.completion_tokens or 0 for s in store.steps(i)) for i in run_ids)


def plot_curve(rounds: list[RoundResult] | list[list[RoundResult]], path: str | Path,
               title: str = "agentkit improve") -> Path:
    """Success per round as a PNG: the final test set with its 95% intervals (the number to
    read), the gate set, and each gated candidate. Several runs (seeds) draw one line each,
    side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = rounds if rounds and isinstance(rounds[0], list) else [rounds]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    for k, run in enumerate(runs):
        label = f" (seed run {k + 1})" if len(runs) > 1 else ""
        shift = 0.06 * (k - (len(runs) - 1) / 2)
        xs = [r.round + shift for r in run]
        finals = [(x, r) for x, r in zip(xs, run) if r.final_success is not None]
        if finals:
            ys = [100 * r.final_success for _, r in finals]
            low = [y - 100 * r.final_ci95[0] for y, (_, r) in zip(ys, finals)]
            high = [100 * r.final_ci95[1] - y for y, (_, r) in zip(ys, finals)]
            ax.errorbar([x for x, _ in finals], ys, yerr=[low, high], marker="o", capsize=3,
                        label=f"final test success, 95% CI{label}")
        ax.plot(xs, [100 * r.heldout_success for r in run], marker="s", linestyle=":", alpha=0.6,
                label=f"gate set success{label}")
        if len(runs) == 1 and any(r.heldout_step_accuracy is not None for r in run):
            ax.plot(xs, [100 * (r.heldout_step_accuracy or 0) for r in run], marker="^", linestyle="--", alpha=0.5,
                    label="gate set step accuracy")
        cands = [(x, 100 * r.candidate_success) for x, r in zip(xs, run) if r.candidate_success is not None]
        if cands:
            ax.scatter(*zip(*cands), marker="x", color="grey", label="candidate (gated)" if k == 0 else None)
    ax.set_xlabel("round")
    ax.set_ylabel("%")
    ax.set_xticks(sorted({r.round for run in runs for r in run}))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
