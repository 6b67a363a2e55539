"""Monte-Carlo values through the rest of a graph: replay a recorded run up to one model
call, force a prefix of that call's output, and let the graph run on from there.

For a single-node run, V(prefix) is the success rate of continuations of the node's own
output (``values.mc_values_batch``, one batched generate call). In a graph, what follows
the node matters too: a critic may send the draft back, a verifier may judge it, a later
node may rewrite the answer. Here each rollout re-runs the whole recorded graph:

1. every model call the run made before the target call is answered from the record
   (same prompt, same tokens, no model work), so the rollout reaches the target in the
   recorded state;
2. the target call is answered with the recorded prompt + the first ``cut`` tokens of the
   recorded output + a sampled continuation;
3. every later call is sampled live (``MCConfig`` temperature, top-p, top-k), so V is the
   success rate of the graph run on from the prefix, under the sampling policy;
4. the graph's final answer is verified by the suite.

Rollouts of all prefixes and runs run on threads through one backend, whose batcher gathers
their calls. Each is recorded as a run (with its replayed and live steps) in
``rollout_store`` when one is given. A rollout that never reaches the target call (the
graph changed, or a memory node now shows other items, so the replayed prompts differ) is
diverged and not counted; a prefix whose rollouts all diverged leaves the run unvalued.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from agentkit.errors import AgentkitError
from agentkit.llm.base import Completion, GenerationRequest
from agentkit.tasks import Suite, Task
from agentkit.learn.values import MCConfig, TokenText, derive_seed
from agentkit.runtime.graph_agent import restore_agent
from agentkit.runtime.recorder import Budget, Recorder
from agentkit.store.protocols import RunStore
from agentkit.store.runs import TrajectoryStore
from agentkit.tasks.steps import step_char_spans

__all__ = ["ReplayLLM", "graph_mc_values", "needs_graph_rollouts"]

log = logging.getLogger("agentkit.credit")


def _prompt_key(prompt: str | Sequence[int]) -> str | tuple[int, ...]:
    return prompt if isinstance(prompt, str) else tuple(prompt)


def _step_keys(step: Any) -> set:
    """The prompts a recorded step answers: its text and its exact ids."""
    keys: set = set()
    if step.prompt_text is not None:
        keys.add(step.prompt_text)
    if step.prompt_ids:
        keys.add(tuple(step.prompt_ids))
    return keys


class ReplayLLM:
    """The LLM one rollout's Recorder sees. ``before``: the run's recorded steps before the
    target call; ``target``: the recorded step whose output is cut after ``cut`` tokens.

    A request whose prompt matches an unused step of ``before`` gets that step's recorded
    completion; the first request matching the target's prompt once no such step is left
    gets the forced prefix + a sampled continuation; any other request is sampled live.
    Scoring (routers, judges), tokenizing and decoding go to the real backend."""

    def __init__(self, llm: Any, before: Sequence[Any], target: Any, cut: int, prefix_text: str,
                 config: MCConfig, *, seed: int | None, adapter: str | None = None):
        self.llm, self.config, self.seed, self.adapter = llm, config, seed, adapter
        self._before = [s for s in before if s.completion_ids is not None and _step_keys(s)]
        self._used = [False] * len(self._before)
        self._target, self._cut, self._prefix_text = target, cut, prefix_text
        self._target_keys = _step_keys(target)
        self.reached = False
        """Whether the target call came: a rollout that never reaches it has diverged."""
        self.replayed = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # score, tokenize, decode, adapters, model_name
        return getattr(self.llm, name)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        return [self._answer(r) for r in requests]

    def _answer(self, request: GenerationRequest) -> list[Completion]:
        key = _prompt_key(request.prompt)
        with self._lock:
            recorded = []
            for i, step in enumerate(self._before):
                if len(recorded) < request.n and not self._used[i] and key in _step_keys(step):
                    self._used[i] = True
                    recorded.append(step)
            forced = not recorded and not self.reached and key in self._target_keys
            self.reached |= forced
            self.replayed += len(recorded)
        if recorded:
            if len(recorded) < request.n:  # the record ran out: the rest live
                recorded += self._live(request, n=request.n - len(recorded))
            return [s if isinstance(s, Completion) else _completion(s) for s in recorded]
        if forced:
            return [self._forced(request)]
        return self._live(request)

    def _sampled(self, request: GenerationRequest, prompt: Sequence[int] | str, n: int, max_tokens: int) -> list[Completion]:
        digest = hashlib.sha1(repr(_prompt_key(prompt)).encode()).hexdigest()[:12]
        return self.llm.generate([GenerationRequest(
            prompt, n=n, temperature=self.config.temperature, top_p=self.config.top_p, top_k=self.config.top_k,
            max_tokens=max_tokens, stop=request.stop, seed=derive_seed(self.seed, request.seed, digest),
            adapter=self.adapter if self.adapter is not None else request.adapter,
        )])[0]

    def _live(self, request: GenerationRequest, n: int | None = None) -> list[Completion]:
        return self._sampled(request, request.prompt, n or request.n, request.max_tokens)

    def _forced(self, request: GenerationRequest) -> Completion:
        target, cut = self._target, self._cut
        prefix = list(target.completion_ids[:cut])
        prompt_ids = list(target.prompt_ids)
        (c,) = self._sampled(request, prompt_ids + prefix, 1, max(request.max_tokens - cut, 1))
        return Completion(
            text=self._prefix_text + c.text, token_ids=prefix + c.token_ids,
            logprobs=list(target.logprobs or [0.0] * cut)[:cut] + c.logprobs, finish_reason=c.finish_reason,
            prompt_ids=prompt_ids, adapter=c.adapter, latency_s=c.latency_s,
        )


def _completion(step: Any) -> Completion:
    return Completion(
        text=step.completion_text or "", token_ids=list(step.completion_ids), logprobs=list(step.logprobs or []),
        finish_reason=step.finish_reason or "stop", prompt_ids=list(step.prompt_ids or []), adapter=step.adapter,
    )


def needs_graph_rollouts(run: Any, output_step: Any) -> bool:
    """Whether V of ``output_step``'s prefixes depends on more than the node's own output:
    the run is a declarative graph run and a model call (a step with a prompt) came after
    it. Otherwise continuing the node's output alone is exact and far cheaper."""
    if not (run.meta or {}).get("graph"):
        return False
    return any(s.id > output_step.id and s.prompt_ids for s in run.steps or ())


@dataclass
class _Job:
    item: int
    prefix: int
    rollout: int
    cut: int
    prefix_text: str


def graph_mc_values(
    llm: Any,
    suite: Suite,
    items: Sequence[tuple[Any, Any, Task]],
    config: MCConfig = MCConfig(),
    *,
    adapter: str | None = None,
    store: RunStore | None = None,
    rollout_store: RunStore | None = None,
    concurrency: int = 32,
) -> list[list[float] | None]:
    """V[0..S] of each (run, output step, task) item, by K = ``config.samples`` rollouts of
    the run's whole graph from every step prefix of the output step (see the module doc).
    The prefixes are those of ``mc_values_batch``: before step 1, then through each step's
    newline. ``store``: the run's own store, whose experience library memory nodes read;
    ``rollout_store``: where rollouts are recorded (None: not recorded). Returns None for
    an item whose rollouts of some prefix all diverged."""
    agents, jobs = [], []
    for i, (run, step, task) in enumerate(items):
        agent, _, _ = restore_agent(run, checkpoints=None, suite=suite)
        if store is not None and agent.library is None:
            agent.library = agent.library_for(store)
        agents.append(agent)
        tt = TokenText(llm, step.completion_ids)
        spans = step_char_spans(tt.text)
        cuts = [tt.boundary(spans[0].start) if spans else 0] + [tt.boundary(s.end) for s in spans]
        for j, cut in enumerate(cuts):
            jobs += [_Job(i, j, k, cut, tt.text_of(0, cut)) for k in range(config.samples)]

    def rollout(job: _Job) -> bool | None:
        run, step, task = items[job.item]
        before = [s for s in run.steps if s.id < step.id]
        replay = ReplayLLM(llm, before, step, job.cut, job.prefix_text, config,
                           seed=derive_seed(config.seed, "graph-mc", run.id, step.id, job.prefix, job.rollout),
                           adapter=adapter)
        rollout_id = sink.start_run(
            run.graph, suite=suite.name, task_id=task.id, split="rollout", model=run.model,
            policy_version=run.policy_version,
            meta={"rollout_of": run.id, "step": step.id, "prefix": job.prefix, "rollout": job.rollout},
        )
        recorder = Recorder(replay, sink, rollout_id, budget=Budget(max_calls=None, max_tokens=None))
        try:
            text = agents[job.item](task, suite, recorder)
            reward = suite.verify(task, text)
            status, error = ("success" if reward >= 1.0 else "failure"), None
        except AgentkitError as exc:
            reward, status, error = 0.0, "failure", f"{type(exc).__name__}: {exc}"
        if not replay.reached:
            status, error = "error", "diverged: the replayed calls never reached the target call"
        sink.finish_run(rollout_id, status=status, reward=reward, error=error)
        return None if not replay.reached else reward >= 1.0

    sink = rollout_store if rollout_store is not None else TrajectoryStore(":memory:")
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(jobs) or 1))) as pool:
            outcomes = list(pool.map(rollout, jobs))
    finally:
        if sink is not rollout_store:
            sink.close()

    wins: list[dict[int, list[bool]]] = [{} for _ in items]
    for job, outcome in zip(jobs, outcomes):
        row = wins[job.item].setdefault(job.prefix, [])
        if outcome is not None:
            row.append(outcome)
    values: list[list[float] | None] = []
    for (run, step, _), rows in zip(items, wins):
        if any(not row for row in rows.values()):
            log.warning("run %s: every rollout of some prefix of step %s diverged from the record; no values", run.id, step.id)
            values.append(None)
        else:
            values.append([sum(rows[j]) / len(rows[j]) for j in sorted(rows)])
    return values
