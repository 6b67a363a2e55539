"""The promotion gate: a candidate policy replaces the incumbent only on a significant gain.

Both run on the SAME held-out tasks with the SAME agent and decoding, through one backend
holding both adapters, so every task gives a paired outcome (incumbent solved?, candidate
solved?). Only discordant pairs carry information: b = tasks only the incumbent solved,
c = tasks only the candidate solved. Under "no difference" each discordant task goes either
way with probability 1/2, so the exact one-sided McNemar p-value is P(Binomial(b + c, 1/2) >= c).
Promote when c > b and p < alpha; report the numbers either way.

With ``metric="step-accuracy"`` the paired outcome is each task's step accuracy (the share
of its canonical steps the policy got right), tested by an exact one-sided sign-flip
permutation test on the per-task differences: under "no difference" each difference is as
likely negative as positive. It sees a policy that learned the first operation of a chain
long before whole chains come out right, which is what a curriculum round teaches. A
candidate must then also solve at least as many tasks as the incumbent, so no promoted
round is worse than the one before on either number.

A loop that gates round after round on the same tasks measures the incumbent once: its
outcomes (``Measured``) come from the measurement before the first gate, then from each
gate's ``GateResult.kept``, and the next gate runs only the candidate.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Sequence

from agentkit.errors import AgentkitError, ConfigError
from agentkit.llm.base import LLM
from agentkit.llm.views import PolicyLLM
from agentkit.store.policies import PolicyRegistry
from agentkit.runtime import Agent, Budget, RunReport, SolveAgent, run_tasks
from agentkit.runtime.policy import adapter_name, load_policy
from agentkit.store import TrajectoryStore
from agentkit.store.protocols import RunStore
from agentkit.tasks import Suite, Task

__all__ = ["GateConfig", "GateResult", "Measured", "GATE_METRICS", "mcnemar_exact", "paired_permutation_p",
           "wilson_interval", "compare_policies", "gate", "ALPHA_SPENDING", "spend_alpha"]

GATE_METRICS = ("success", "step-accuracy")
ALPHA_SPENDING = ("equal", "rising")


@dataclass
class GateConfig:
    """What a loop's gate decides on, declared once: ImproveConfig and TrainerConfig extend it.

    The defaults are the background trainer's. ``agentkit improve`` gates on 200 tasks, not
    100 (200 tell apart a gain of ~6 points where 100 do not, at ~1 CPU-minute a round),
    with 32 tasks in flight, not 16; there
    ``concurrency`` is every run's of the round and ``shots`` every prompt's, sampling too.
    ``eval_level`` None is the suite's default level in the trainer and the last curriculum
    level in improve."""

    eval_tasks: int = field(default=100, metadata={"help": "Held-out test tasks the gate compares policies on."})
    eval_level: int | None = field(default=None, metadata={"help": "Level of the held-out tasks (None: the loop's default)."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the held-out tasks."})
    shots: int = field(default=3, metadata={"help": "Worked examples in the gate's prompts (in improve, every prompt's)."})
    alpha: float = field(default=0.05, metadata={"help": "Gate significance level (one-sided paired test)."})
    gate_metric: str = field(default="success", metadata={"help": "What must improve significantly: success or step-accuracy."})
    concurrency: int = field(default=16, metadata={"help": "Gate tasks in flight at once."})

    def __post_init__(self) -> None:
        for name in ("eval_tasks", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}={getattr(self, name)}`: must be at least 1")
        if self.gate_metric not in GATE_METRICS:
            raise ConfigError(f"`gate_metric={self.gate_metric}`: choose {' or '.join(GATE_METRICS)}")


def mcnemar_exact(b: int, c: int) -> float:
    """One-sided exact McNemar p-value for "the candidate is better": P(X >= c), X ~ Bin(b + c, 1/2).

    b: pairs the incumbent won, c: pairs the candidate won. 1.0 when there are no discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, k) for k in range(c, n + 1)) / 2**n)


def paired_permutation_p(differences: Sequence[float], *, samples: int = 20_000, seed: int = 0) -> float:
    """One-sided p-value for "mean(candidate - incumbent) > 0" by sign flips: the share of
    the 2^n sign assignments of the nonzero differences whose sum is at least the observed
    sum. Exact (a count over integer sums) when the differences are fractions with a small
    common denominator, as step accuracies are; else estimated from ``samples`` seeded
    random assignments (with the +1 correction, so never 0). 1.0 when all are zero."""
    d = [Fraction(x).limit_denominator(1000) for x in differences]
    d = [x for x in d if x != 0]
    if not d:
        return 1.0
    unit = math.lcm(*(x.denominator for x in d))
    if unit <= 10_000:
        ints = [abs(int(x * unit)) for x in d]
        counts = {0: 1}  # sum of signed differences -> number of sign assignments giving it
        for x in ints:
            nxt: dict[int, int] = {}
            for total, k in counts.items():
                nxt[total + x] = nxt.get(total + x, 0) + k
                nxt[total - x] = nxt.get(total - x, 0) + k
            counts = nxt
        observed = int(sum(d) * unit)
        return sum(k for total, k in counts.items() if total >= observed) / 2 ** len(d)
    rng = random.Random(seed)
    observed = float(sum(d)) - 1e-9
    values = [float(x) for x in d]
    hits = sum(sum(x if rng.random() < 0.5 else -x for x in values) >= observed for _ in range(samples))
    return (hits + 1) / (samples + 1)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sensible at 0 and n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def spend_alpha(gates: int, schedule: str = "equal") -> list[float]:
    """Each gate's own fraction of alpha when a run gates ``gates`` times, fixed before the
    first: "equal" gives each 1 / gates (Bonferroni); "rising" gives gate i (from 1) a share
    proportional to i, so later gates, whose candidates trained on more data, test at a
    looser level (8 gates: 1/36 for the first, 8/36 for the last). The shares sum to 1,
    so with Wiens' fallback (GateResult.carried) a run's chance of any false promotion
    stays within alpha whichever schedule it fixed."""
    if gates < 1:
        raise AgentkitError(f"gates={gates}: a run asks at least one gate")
    if schedule == "equal":
        return [1 / gates] * gates
    if schedule == "rising":
        total = gates * (gates + 1) / 2
        return [i / total for i in range(1, gates + 1)]
    raise ConfigError(f"`alpha_spending={schedule}`: choose {' or '.join(ALPHA_SPENDING)}")


@dataclass
class Measured:
    """One policy version's outcomes on a set of tasks, by task id: (solved?, run id, step
    accuracy). A gate handed the incumbent's (``incumbent_measured``) runs only the candidate."""

    version: str
    outcomes: dict[str, tuple[bool, int, float | None]]

    @classmethod
    def of(cls, version: str, report: RunReport) -> Measured:
        """The outcomes of ``version``'s runs in ``report`` (run_tasks)."""
        return cls(version, {r.task_id: (r.reward >= 1.0, r.run_id, r.step_accuracy) for r in report.results})

    def check_reusable(self, incumbent: str, tasks: Sequence[Task]) -> None:
        """Raise unless these are ``incumbent``'s outcomes on every one of ``tasks``."""
        if self.version != incumbent:
            raise AgentkitError(f"incumbent_measured is of '{self.version}', not of the incumbent '{incumbent}'; "
                                f"pass the incumbent's outcomes (the last gate's GateResult.kept) or None to run it")
        missing = [t.id for t in tasks if t.id not in self.outcomes]
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise AgentkitError(f"incumbent_measured lacks {len(missing)} of the {len(tasks)} gate tasks ({shown}); "
                                f"measure '{incumbent}' on these tasks or pass None to run it")


@dataclass
class GateResult:
    """Paired held-out outcomes of two policies and the decision."""

    candidate: str
    incumbent: str
    n: int
    incumbent_successes: int
    candidate_successes: int
    b: int
    """Tasks the incumbent solved and the candidate did not."""
    c: int
    """Tasks the candidate solved and the incumbent did not."""
    p_value: float
    alpha: float
    promote: bool
    metric: str = "success"
    share: float = 1.0
    """This gate's own fraction of alpha. A run that gates once per round spends alpha over
    its gates (``spend_alpha``): their shares sum to at most 1, so the run's chance of any
    false promotion stays within alpha."""
    carried: float = 0.0
    """The fraction of alpha this gate inherits: a promotion passes its gate's whole level on
    to the next gate, a refusal passes nothing (Wiens' fallback procedure, which keeps the
    run's chance of any false promotion within alpha). The gate tests at
    alpha * (share + carried)."""
    incumbent_step_accuracy: float | None = None
    candidate_step_accuracy: float | None = None
    candidate_ci95: tuple[float, float] = (0.0, 1.0)
    incumbent_ci95: tuple[float, float] = (0.0, 1.0)
    task_ids: list[str] = field(default_factory=list)
    incumbent_run_ids: list[int] = field(default_factory=list)
    candidate_run_ids: list[int] = field(default_factory=list)
    incumbent_measured: Measured | None = field(default=None, repr=False)
    candidate_measured: Measured | None = field(default=None, repr=False)

    @property
    def kept(self) -> Measured | None:
        """The outcomes of the policy this decision keeps (the candidate if promoted, else the
        incumbent): the next gate on the same tasks passes them as ``incumbent_measured``."""
        return self.candidate_measured if self.promote else self.incumbent_measured

    @property
    def incumbent_success(self) -> float:
        return self.incumbent_successes / self.n if self.n else 0.0

    @property
    def candidate_success(self) -> float:
        return self.candidate_successes / self.n if self.n else 0.0

    @property
    def level(self) -> float:
        """The significance level this gate tests at: its own share of alpha plus what it carried."""
        return self.alpha * (self.share + self.carried)

    @property
    def p_adjusted(self) -> float:
        """The p-value on alpha's scale: min(1, p / (share + carried)); promote when it is
        below alpha."""
        return min(1.0, self.p_value / (self.share + self.carried))

    @property
    def decision(self) -> str:
        return "promote" if self.promote else "reject"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["incumbent_measured"], out["candidate_measured"]  # per task: the runs hold them, the run ids point there
        out.update(incumbent_success=self.incumbent_success, candidate_success=self.candidate_success,
                   decision=self.decision, p_adjusted=self.p_adjusted, level=self.level)
        return out

    def summary(self) -> str:
        """One line with every number the decision rests on."""
        line = (
            f"gate {self.candidate} vs {self.incumbent}: n={self.n}, incumbent {self.incumbent_successes} "
            f"({100 * self.incumbent_success:.1f}%), candidate {self.candidate_successes} "
            f"({100 * self.candidate_success:.1f}%), discordant b={self.b} c={self.c}, "
        )
        carried = f" + {self.carried:.3g} carried" if self.carried else ""
        spent = f", at {self.share:.3g}{carried} of alpha p adj={self.p_adjusted:.4g}"
        p = f"p={self.p_value:.4g}" + (spent if self.share + self.carried < 1 - 1e-9 else "")
        if self.metric == "success":
            return line + f"one-sided exact McNemar {p} (alpha {self.alpha:g}) -> {self.decision}"
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        return line + (
            f"step accuracy {pct(self.incumbent_step_accuracy)} -> {pct(self.candidate_step_accuracy)}, "
            f"one-sided paired permutation {p} (alpha {self.alpha:g}) -> {self.decision}"
        )


def compare_policies(
    llm: LLM,
    suite: Suite,
    tasks: Sequence[Task],
    *,
    candidate: str,
    incumbent: str,
    agent: Agent | None = None,
    store: RunStore | None = None,
    alpha: float = 0.05,
    concurrency: int = 16,
    budget: Budget = Budget(),
    metric: str = "success",
    share: float = 1.0,
    carried: float = 0.0,
    incumbent_measured: Measured | None = None,
) -> GateResult:
    """Run ``agent`` (default: greedy SolveAgent) on ``tasks`` once per policy version and
    test the paired outcomes. Both versions must already be loaded into ``llm`` under their
    version names (``load_policy``); runs are recorded in ``store`` (default: in memory)
    with their policy_version. ``metric``: what must improve significantly, "success"
    (exact McNemar) or "step-accuracy" (paired permutation test, and no fewer successes).
    ``share``: this gate's fraction of alpha when a run asks several (``spend_alpha``);
    it tests at alpha * (share + carried), ``carried`` passed on by earlier promotions
    (GateResult.carried).

    ``incumbent_measured``: the incumbent's outcomes on these tasks, measured before with the
    same agent, decoding and budget (``Measured.of`` a run_tasks report, or the last gate's
    GateResult.kept); then only the candidate runs, and the incumbent's numbers and run ids
    are those. They must be the incumbent's and cover every task, else AgentkitError: a gap
    means another task set was measured, and running the incumbent quietly instead would
    spend the time the caller meant to save."""
    if metric not in GATE_METRICS:
        raise AgentkitError(f"gate metric '{metric}' is unknown; choose one of {', '.join(GATE_METRICS)}")
    if not 0 < share <= 1 or not 0 <= carried <= 1 - share + 1e-9:
        raise AgentkitError(f"share={share:g}, carried={carried:g}: a gate's own share of alpha is in (0, 1], "
                            "and with what it inherits at most 1")
    if incumbent_measured is not None:
        incumbent_measured.check_reusable(incumbent, tasks)

    agent = agent or SolveAgent()
    own_store = store is None
    store = TrajectoryStore(":memory:") if own_store else store
    measured = {} if incumbent_measured is None else {incumbent: incumbent_measured}
    try:
        for version in (incumbent, candidate):
            if version in measured:
                continue
            report = run_tasks(
                PolicyLLM(llm, adapter_name(version)), suite, tasks, store, agent=agent,
                concurrency=concurrency, budget=budget, policy_version=version,
            )
            measured[version] = Measured.of(version, report)
    finally:
        if own_store:
            store.close()
    outcomes = {version: m.outcomes for version, m in measured.items()}
    ids = [t.id for t in tasks]
    inc = [outcomes[incumbent][i][0] for i in ids]
    cand = [outcomes[candidate][i][0] for i in ids]
    b = sum(x and not y for x, y in zip(inc, cand))
    c = sum(y and not x for x, y in zip(inc, cand))

    def step_acc(version: str) -> float | None:
        values = [outcomes[version][i][2] for i in ids if outcomes[version][i][2] is not None]
        return sum(values) / len(values) if values else None

    level = alpha * (share + carried)
    if metric == "success":
        p = mcnemar_exact(b, c)
        promote = c > b and p < level
    else:
        diffs = [(outcomes[candidate][i][2] or 0.0) - (outcomes[incumbent][i][2] or 0.0) for i in ids]
        p = paired_permutation_p(diffs)
        promote = sum(diffs) > 0 and p < level and sum(cand) >= sum(inc)
    return GateResult(
        candidate=candidate, incumbent=incumbent, n=len(ids),
        incumbent_successes=sum(inc), candidate_successes=sum(cand), b=b, c=c, p_value=p, alpha=alpha,
        promote=promote, metric=metric, share=share, carried=carried,
        incumbent_step_accuracy=step_acc(incumbent), candidate_step_accuracy=step_acc(candidate),
        candidate_ci95=wilson_interval(sum(cand), len(ids)), incumbent_ci95=wilson_interval(sum(inc), len(ids)),
        task_ids=ids,
        incumbent_run_ids=[outcomes[incumbent][i][1] for i in ids],
        candidate_run_ids=[outcomes[candidate][i][1] for i in ids],
        incumbent_measured=measured[incumbent], candidate_measured=measured[candidate],
    )


def gate(
    registry: PolicyRegistry,
    llm: LLM,
    suite: Suite,
    tasks: Sequence[Task],
    candidate: str,
    *,
    incumbent: str | None = None,
    agent: Agent | None = None,
    store: RunStore | None = None,
    alpha: float = 0.05,
    concurrency: int = 16,
    budget: Budget = Budget(),
    apply: bool = True,
    metric: str = "success",
    share: float = 1.0,
    carried: float = 0.0,
    incumbent_measured: Measured | None = None,
) -> GateResult:
    """Evaluate ``candidate`` against ``incumbent`` (default: the active version) and, with
    ``apply``, promote it on a significant gain or mark it rejected otherwise. The numbers
    go into the candidate's metrics either way (held-out success, step accuracy, 95% CI and
    the whole gate result). With ``incumbent_measured`` (see compare_policies) only the
    candidate is loaded and run."""
    if len(tasks) == 0:
        raise AgentkitError("the gate needs held-out tasks; pass at least one (e.g. suite.tasks('test', 100))")
    incumbent = incumbent or registry.active().version
    for version in (incumbent, candidate) if incumbent_measured is None else (candidate,):
        load_policy(llm, registry, version)
    result = compare_policies(
        llm, suite, tasks, candidate=candidate, incumbent=incumbent, agent=agent, store=store,
        alpha=alpha, concurrency=concurrency, budget=budget, metric=metric, share=share, carried=carried,
        incumbent_measured=incumbent_measured,
    )
    registry.update_metrics(candidate, {
        "heldout_success": result.candidate_success,
        "heldout_step_accuracy": result.candidate_step_accuracy,
        "heldout_ci95": list(result.candidate_ci95),
        "heldout_n": result.n,
        "gate": {k: v for k, v in result.as_dict().items() if not k.endswith("_ids")},
    })
    if apply:
        if result.promote:
            registry.promote(candidate, actor="gate", reason=result.summary())
        else:
            registry.reject(candidate, actor="gate", reason=result.summary())
    return result
