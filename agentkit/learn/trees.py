"""Training data from search trees, read back from the store.

A search run (``SolveAgent(search=...)``) records every node of its tree as a step whose
``meta["search"]`` holds its value, visits and place (agentkit.graph.search). From a
tree come two kinds of data:

- the solution: the verified root-to-answer path, an SFT example (expert iteration,
  ReST-EM: imitate what search found);
- sibling pairs: at every expanded node, a child line with a high value is chosen over a
  sibling line with a low one, under the same prefix (MCTS-DPO, TP-LLaMA). Both sides are the
  lines exactly as sampled, and the prompt is the node's prompt + prefix, as ids;
- sibling groups: the lines sampled at an expanded node, each weighted by how often it was
  sampled, rewarded with its value: a GRPO/RLOO group whose advantages are per step, each
  line against its siblings under the same prefix (tree advantages, as in TreeRL).

    runs = [store.get_run(i, steps=True) for i in run_ids]
    sft = [x for run in runs if (x := solution_example(run)) is not None]
    pairs = tree_pairs(runs, suite="arithmetic", policy_version="v1")
    groups = tree_groups(runs)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from agentkit.store.pairs import Pair
from agentkit.train.examples import RLGroup, SFTExample

__all__ = ["TreePairConfig", "search_steps", "solution_example", "tree_groups", "tree_pairs"]


@dataclass(frozen=True)
class TreePairConfig:
    """Which siblings make a pair."""

    high: float = field(default=0.5, metadata={"help": "A chosen line's value is at least this."})
    low: float = field(default=0.0, metadata={"help": "A rejected line's value is at most this."})
    per_node: int = field(default=4, metadata={"help": "Most pairs from one expanded node (largest value gap, then the most sampled lines first)."})


def search_steps(run: Any) -> list[Any]:
    """The run's steps that are nodes of a search tree, in the order they were written."""
    return [s for s in run.steps or () if (s.meta or {}).get("search")]


def search_tokens(run: Any) -> int:
    """Every token the run's search sampled: each node's line times the samples that drew it,
    plus its Monte-Carlo rollouts."""
    return sum(s.meta["search"]["count"] * len(s.completion_ids) + s.meta["search"].get("rollout_tokens", 0)
               for s in search_steps(run))


def solution_example(run: Any) -> SFTExample | None:
    """The verified solution search found in ``run``, as an SFT example: the prompt and the
    chosen path's lines, as sampled. None when the run did not succeed or recorded no tree."""
    if run.status != "success":
        return None
    path = [s for s in search_steps(run) if s.meta["search"]["chosen"]]
    if not path:
        return None
    path.sort(key=lambda s: s.meta["search"]["depth"])
    ids = [t for s in path for t in s.completion_ids]
    return SFTExample(list(path[0].prompt_ids), ids, run.id)


def tree_pairs(runs: Iterable[Any], *, suite: str | None = None, policy_version: str | None = None,
               config: TreePairConfig = TreePairConfig(), decode: Callable[[list[int]], str] | None = None) -> list[Pair]:
    """Step pairs from the sibling lines of every expanded node of every run's tree.
    ``decode`` (a backend's) spells each pair's prompt for export; the ids are what trains."""
    return [pair for run in runs for siblings in _sibling_lines(run)
            for pair in _node_pairs(run, siblings, suite, policy_version, config, decode)]


def tree_groups(runs: Iterable[Any]) -> list[RLGroup]:
    """One RLGroup per expanded node whose sibling lines differ in value: each distinct line
    once, weighted by how often the search sampled it (so the group mean is the node's
    Monte-Carlo value), with its value as reward. The weights give the advantages, loss and
    gradient of the group with each line repeated, but a line's forward, backward and
    reference pass run once rather than once per sample (2-3 rows instead of 8-16). The
    group's prompt is the node's prompt + prefix, so a line's advantage is its step's
    advantage over its siblings. Sampling logprobs are not kept: the policy at the start of
    training, which sampled the tree, is the ratio's old policy."""
    groups = []
    for run in runs:
        for siblings in _sibling_lines(run):
            scored = [s for s in siblings if s.meta["search"]["value"] is not None]
            if len({s.meta["search"]["value"] for s in scored}) < 2:
                continue  # equal values: every advantage is 0
            groups.append(RLGroup(
                list(scored[0].prompt_ids),
                [list(s.completion_ids) for s in scored],
                [float(s.meta["search"]["value"]) for s in scored],
                id=f"{run.id}:{scored[0].parent_step_id}",
                weights=[float(max(1, s.meta["search"]["count"])) for s in scored],
            ))
    return groups


def _sibling_lines(run: Any) -> list[list[Any]]:
    """The lines sampled at each expanded node of the run's tree (verified rollouts, which
    are whole rests rather than lines, left out)."""
    children: dict[int | None, list[Any]] = {}
    for s in search_steps(run):
        if s.meta["search"]["kind"] != "rollout":
            children.setdefault(s.parent_step_id, []).append(s)
    return list(children.values())


def _node_pairs(run: Any, siblings: Sequence[Any], suite: str | None, policy_version: str | None,
                config: TreePairConfig, decode: Callable[[list[int]], str] | None) -> list[Pair]:
    info = [s.meta["search"] for s in siblings]
    good = [(s, m) for s, m in zip(siblings, info) if m["value"] is not None and m["value"] >= config.high]
    bad = [(s, m) for s, m in zip(siblings, info) if m["value"] is not None and m["value"] <= config.low]
    candidates = [(c, cm, r, rm) for c, cm in good for r, rm in bad if c.completion_ids != r.completion_ids]
    candidates.sort(key=lambda x: (x[1]["value"] - x[3]["value"], x[1]["count"] + x[3]["count"]), reverse=True)
    out = []
    for chosen, cm, rejected, rm in candidates[: config.per_node]:
        out.append(Pair(
            kind="step", suite=suite, task_id=run.task_id, run_id=run.id, step_id=rejected.id,
            step_index=cm["depth"] - 1, method=info[0].get("value_mode", "search"),
            prompt_text=decode(list(chosen.prompt_ids)) if decode else f"<prefix of search step {chosen.id}>",
            prompt_ids=list(chosen.prompt_ids),
            chosen_text=chosen.completion_text or "", chosen_ids=list(chosen.completion_ids),
            rejected_text=rejected.completion_text or "", rejected_ids=list(rejected.completion_ids),
            policy_version=policy_version,
            meta={"source": "search", "chosen_step_id": chosen.id, "chosen_value": cm["value"],
                  "rejected_value": rm["value"], "gap": cm["value"] - rm["value"]},
        ))
    return out
