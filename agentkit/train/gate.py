"""The promotion gate: a candidate policy replaces the incumbent only on a significant gain.

Both run on the SAME held-out tasks with the SAME agent and decoding, through one backend
holding both adapters, so every task gives a paired outcome (incumbent solved?, candidate
solved?). Only discordant pairs carry information: b = tasks only the incumbent solved,
c = tasks only the candidate solved. Under "no difference" each discordant task goes either
way with probability 1/2, so the exact one-sided McNemar p-value is P(Binomial(b + c, 1/2) >= c).
Promote when c > b and p < alpha; report the numbers either way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from agentkit.llm.base import LLM
from agentkit.memory.policies import PolicyRegistry
from agentkit.runtime import Agent, Budget, RunReport, SolveAgent, run_tasks
from agentkit.tasks import Suite, Task
from agentkit.train.registry import PolicyLLM, adapter_name, load_policy

__all__ = ["GateResult", "mcnemar_exact", "wilson_interval", "compare_policies", "gate"]


def mcnemar_exact(b: int, c: int) -> float:
    """One-sided exact McNemar p-value for "the candidate is better": P(X >= c), X ~ Bin(b + c, 1/2).

    b: pairs the incumbent won, c: pairs the candidate won. 1.0 when there are no discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, k) for k in range(c, n + 1)) / 2**n)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sensible at 0 and n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


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
    incumbent_step_accuracy: float | None = None
    candidate_step_accuracy: float | None = None
    candidate_ci95: tuple[float, float] = (0.0, 1.0)
    incumbent_ci95: tuple[float, float] = (0.0, 1.0)
    task_ids: list[str] = field(default_factory=list)
    incumbent_run_ids: list[int] = field(default_factory=list)
    candidate_run_ids: list[int] = field(default_factory=list)

    @property
    def incumbent_success(self) -> float:
        return self.incumbent_successes / self.n if self.n else 0.0

    @property
    def candidate_success(self) -> float:
        return self.candidate_successes / self.n if self.n else 0.0

    @property
    def decision(self) -> str:
        return "promote" if self.promote else "reject"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(incumbent_success=self.incumbent_success, candidate_success=self.candidate_success,
                   decision=self.decision)
        return out

    def summary(self) -> str:
        """One line with every number the decision rests on."""
        return (
            f"gate {self.candidate} vs {self.incumbent}: n={self.n}, incumbent {self.incumbent_successes} "
            f"({100 * self.incumbent_success:.1f}%), candidate {self.candidate_successes} "
            f"({100 * self.candidate_success:.1f}%), discordant b={self.b} c={self.c}, "
            f"one-sided exact McNemar p={self.p_value:.4g} (alpha {self.alpha:g}) -> {self.decision}"
        )


def _successes(report: RunReport) -> dict[str, tuple[bool, int, float | None]]:
    return {r.task_id: (r.reward >= 1.0, r.run_id, r.step_accuracy) for r in report.results}


def compare_policies(
    llm: LLM,
    suite: Suite,
    tasks: Sequence[Task],
    *,
    candidate: str,
    incumbent: str,
    agent: Agent | None = None,
    store: Any = None,
    alpha: float = 0.05,
    concurrency: int = 16,
    budget: Budget = Budget(),
) -> GateResult:
    """Run ``agent`` (default: greedy SolveAgent) on ``tasks`` once per policy version and
    test the paired outcomes. Both versions must already be loaded into ``llm`` under their
    version names (``load_policy``); runs are recorded in ``store`` (default: in memory)
    with their policy_version."""
    from agentkit.memory import TrajectoryStore

    agent = agent or SolveAgent()
    own_store = store is None
    store = TrajectoryStore(":memory:") if own_store else store
    try:
        outcomes = {}
        for version in (incumbent, candidate):
            report = run_tasks(
                PolicyLLM(llm, adapter_name(version)), suite, tasks, store, agent=agent,
                concurrency=concurrency, budget=budget, policy_version=version,
            )
            outcomes[version] = _successes(report)
    finally:
        if own_store:
            store.close()
    ids = [t.id for t in tasks]
    inc = [outcomes[incumbent][i][0] for i in ids]
    cand = [outcomes[candidate][i][0] for i in ids]
    b = sum(x and not y for x, y in zip(inc, cand))
    c = sum(y and not x for x, y in zip(inc, cand))
    p = mcnemar_exact(b, c)

    def step_acc(version: str) -> float | None:
        values = [outcomes[version][i][2] for i in ids if outcomes[version][i][2] is not None]
        return sum(values) / len(values) if values else None

    return GateResult(
        candidate=candidate, incumbent=incumbent, n=len(ids),
        incumbent_successes=sum(inc), candidate_successes=sum(cand), b=b, c=c, p_value=p, alpha=alpha,
        promote=c > b and p < alpha,
        incumbent_step_accuracy=step_acc(incumbent), candidate_step_accuracy=step_acc(candidate),
        candidate_ci95=wilson_interval(sum(cand), len(ids)), incumbent_ci95=wilson_interval(sum(inc), len(ids)),
        task_ids=ids,
        incumbent_run_ids=[outcomes[incumbent][i][1] for i in ids],
        candidate_run_ids=[outcomes[candidate][i][1] for i in ids],
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
    store: Any = None,
    alpha: float = 0.05,
    concurrency: int = 16,
    budget: Budget = Budget(),
    apply: bool = True,
) -> GateResult:
    """Evaluate ``candidate`` against ``incumbent`` (default: the active version) and, with
    ``apply``, promote it on a significant gain or mark it rejected otherwise. The numbers
    go into the candidate's metrics either way (held-out success, step accuracy, 95% CI and
    the whole gate result)."""
    if len(tasks) == 0:
        from agentkit.errors import AgentkitError

        raise AgentkitError("the gate needs held-out tasks; pass at least one (e.g. suite.tasks('test', 100))")
    incumbent = incumbent or registry.active().version
    for version in (incumbent, candidate):
        load_policy(llm, registry, version)
    result = compare_policies(
        llm, suite, tasks, candidate=candidate, incumbent=incumbent, agent=agent, store=store,
        alpha=alpha, concurrency=concurrency, budget=budget,
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
