"""Step-level search: grow a solver's output one line at a time, score every candidate
line with a verifier, and keep the promising ones (beam) or grow the most promising branch
(MCTS). Search finds verified steps a weak policy rarely samples; training then distils
them (expert iteration: ReST-MCTS*, AlphaMath, MCTS-DPO in RESEARCH.md).

    tree = search(llm, suite, task, prompt, Beam(width=4, expand=8))
    tree.answer                     # the best node that ends the solution
    tree.text(tree.answer)          # "Step 1: 33 + 36 = 69\\nAnswer: 69\\n"
    tree.verified                   # the answer's outcome reward was 1

Expanding a node samples ``expand`` candidate next lines from the prompt + the node's
prefix in one request (n = k, stop at the newline), so a batching backend shares the
prefix's KV cache among them; a beam's whole frontier goes in one generate call. Only
token ids are trusted: a child's prefix is its parent's ids + its own, as sampled, and
text is decoded from them.

A candidate line is scored by

- the suite's step checker (``value="checker"``): 1 while every "Step k:" line so far
  checks, else 0. For the synthetic suites the checker is a program of the question alone
  (the canonical operation), like a unit test, so search may use it at inference too;
- Monte-Carlo (``value="mc"``): ``rollouts`` samples from the candidate to an answer, each
  verified; V is the share that verify (ReST-MCTS*, AlphaMath: no step labels needed).

An answer line (or the end of the output) is terminal, and scores the outcome verifier's
reward. A verified Monte-Carlo rollout is a solution already: it joins the tree as one
terminal node (kind "rollout") under the line it valued. Search stops at the first verified
answer, when the tree is out of nodes, or when the sampled tokens reach ``max_tokens``.

``record_tree`` writes every node as a step of the run: its parent step, value, visit
count and prior go in ``meta["search"]``, so pairs, credit and the trace tools read the
whole tree from the store.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple, Sequence

from agentkit.errors import AgentkitError
from agentkit.graph.context import NodeRecorder
from agentkit.llm.base import LLM, Completion, GenerationRequest
from agentkit.tasks import Suite, Task
from agentkit.tasks.base import parse_answer
from agentkit.tasks.steps import STEP_LINE

__all__ = ["Beam", "MCTS", "SearchNode", "SearchTree", "parse_search", "as_strategy", "strategy_dict", "search",
           "record_tree", "VALUES"]

VALUES = ("auto", "checker", "mc")


@dataclass(frozen=True)
class _Strategy:
    expand: int = 8
    """Candidate next lines sampled per expanded node (one request, n = expand)."""
    value: str = "auto"
    """How a candidate is scored: "checker" (the suite's step checker), "mc" (Monte-Carlo
    rollouts to a verified answer), "auto" (the checker where the suite has one)."""
    rollouts: int = 4
    """Monte-Carlo value: rollouts per candidate."""
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 64
    line_tokens: int = 40
    """Longest candidate line."""
    rollout_length: int = 120
    """Longest Monte-Carlo rollout."""
    max_depth: int = 8
    """Lines before the output is cut off (and judged as it stands)."""
    max_tokens: int = 4096
    """Sampled tokens (lines and rollouts) the whole search may spend."""
    share_prefix: bool = True
    """Sample a node's candidate lines once up to their first uncertain token: a greedy
    pass finds the tokens whose probability is at least ``top_p`` (where nucleus sampling
    has one choice, so every sample would repeat them), and only the rest of the line is
    sampled ``expand`` times from there. Same distribution, a fraction of the tokens: most
    of a step line copies the question ("Step 1: 23 + 41 = ")."""

    def __post_init__(self) -> None:
        if self.expand < 1 or self.rollouts < 1 or self.max_depth < 1 or self.max_tokens < 1:
            raise AgentkitError(f"{self}: expand, rollouts, max_depth and max_tokens must each be at least 1")
        if self.value not in VALUES:
            raise AgentkitError(f"search value {self.value!r} is unknown; choose one of {', '.join(VALUES)}")
        if not 0 < self.temperature < math.inf or not 0 < self.top_p <= 1:
            raise AgentkitError(f"{self}: search samples its lines, so temperature must be above 0 and top_p in (0, 1] "
                                f"(got temperature={self.temperature}, top_p={self.top_p})")
        if self.line_tokens < 1 or self.rollout_length < 1 or self.top_k < 0 or not 0 <= getattr(self, "c_puct", 0.0) < math.inf:
            raise AgentkitError(f"{self}: line_tokens and rollout_length must each be at least 1, top_k at least 0 "
                                "(0: no cut) and c_puct a finite number >= 0")


@dataclass(frozen=True)
class Beam(_Strategy):
    """Step-level beam search: each depth samples ``width * expand`` candidate lines, shared
    evenly by the frontier (the root takes them all), and keeps the ``width`` best."""

    width: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width < 1:
            raise AgentkitError(f"beam width {self.width}: must be at least 1")

    def __str__(self) -> str:
        return f"beam:{self.width}x{self.expand}{_value_suffix(self)}"


@dataclass(frozen=True)
class MCTS(_Strategy):
    """Monte-Carlo tree search, ``simulations`` times: descend by PUCT,

        score(c) = Q(c) + c_puct * P(c) * sqrt(N(parent)) / (1 + N(c)),

    with P the policy's probability of each sibling line (renormalised over the siblings
    sampled), expand the leaf reached (``expand`` lines in one request), score its
    children, and back the mean of their values up the path. A terminal leaf backs up its
    reward."""

    simulations: int = 16
    c_puct: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.simulations < 1:
            raise AgentkitError(f"MCTS simulations {self.simulations}: must be at least 1")

    def __str__(self) -> str:
        expand = "" if self.expand == _Strategy.expand else f"x{self.expand}"
        return f"mcts:{self.simulations}{expand}{_value_suffix(self)}"


_SPEC = re.compile(r"^(?:beam:(\d+)x(\d+)|mcts:(\d+)(?:x(\d+))?)(?::(\w+))?$")
# what a spec's ",name=value" options may set, and their types (the shape and value have their own syntax)
_OPTIONS = {"temperature": float, "top_p": float, "top_k": int, "rollouts": int, "line_tokens": int,
            "rollout_length": int, "max_depth": int, "max_tokens": int, "c_puct": float}


def parse_search(spec: str, **options: Any) -> Beam | MCTS:
    """``beam:WxK`` (width W, K lines per frontier node) or ``mcts:N`` / ``mcts:NxK``
    (N simulations, K lines per expansion), optionally ending in ``:checker`` or ``:mc``
    (how lines are valued, see ``value``), then any ``,name=value`` options
    (``beam:4x8,temperature=1.0,top_p=0.99``); keyword ``options`` set the other fields."""
    head, *pairs = spec.strip().lower().split(",") if isinstance(spec, str) else [""]
    m = _SPEC.match(head.strip())
    if m is None:
        raise AgentkitError(f"search {spec!r} is not understood; write beam:WxK (e.g. beam:4x8) or mcts:N (e.g. mcts:32),"
                            " optionally ending in :checker or :mc")
    width, expand, sims, sims_expand, value = m.groups()
    options = {**_spec_options(spec, pairs, mcts=width is None), **options}
    if value is not None:
        options = {"value": value, **options}
    if width is not None:
        return Beam(width=int(width), expand=int(expand), **options)
    return MCTS(simulations=int(sims), **({"expand": int(sims_expand)} if sims_expand else {}), **options)


def _spec_options(spec: str, pairs: list[str], *, mcts: bool) -> dict[str, Any]:
    """The ``,name=value`` options of a spec, typed; a one-line error names a bad one."""
    allowed = [k for k in _OPTIONS if mcts or k != "c_puct"]
    options: dict[str, Any] = {}
    for pair in pairs:
        name, _, raw = (part.strip() for part in pair.partition("="))
        if name not in allowed or not raw:
            raise AgentkitError(f"search {spec!r}: option {pair.strip()!r} is not understood; write name=value "
                                f"with name one of {', '.join(allowed)} (e.g. beam:4x8,temperature=1.0)")
        try:
            options[name] = _OPTIONS[name](raw)
        except ValueError:
            raise AgentkitError(f"search {spec!r}: {name}={raw} is not a number; "
                                f"write e.g. {name}={_OPTIONS[name](1)}") from None
    return options


def _value_suffix(strategy: _Strategy) -> str:
    """How the spec string ends: the value mode unless "auto", then every option that differs
    from its default, so that ``parse_search(str(s)) == s`` for what a spec can say."""
    defaults = type(strategy)()
    changed = [f",{k}={getattr(strategy, k)}" for k in _OPTIONS
               if hasattr(strategy, k) and getattr(strategy, k) != getattr(defaults, k)]
    return ("" if strategy.value == "auto" else f":{strategy.value}") + "".join(changed)


def as_strategy(spec: Any) -> Beam | MCTS | None:
    """A strategy from what a user or a run row gives: None, a Beam or MCTS, a spec
    string (``parse_search``) or the dict ``strategy_dict`` wrote."""
    if spec is None or isinstance(spec, (Beam, MCTS)):
        return spec
    if isinstance(spec, str):
        return parse_search(spec)
    if isinstance(spec, dict):
        fields = dict(spec)
        kind = fields.pop("kind", None)
        if kind in ("beam", "mcts"):
            return (Beam if kind == "beam" else MCTS)(**fields)
    raise AgentkitError(f"search {spec!r} is not a strategy; pass Beam(...), MCTS(...) or 'beam:4x8' / 'mcts:32'")


def strategy_dict(strategy: Beam | MCTS) -> dict[str, Any]:
    """Every field of ``strategy`` and its kind: what a run row records to rebuild it."""
    return {"kind": "beam" if isinstance(strategy, Beam) else "mcts", **asdict(strategy)}


@dataclass
class SearchNode:
    """One line of the tree (the root is the prompt itself)."""

    id: int
    parent: int | None
    depth: int
    token_ids: list[int]
    logprobs: list[float]
    text: str
    """The line as its tokens spell it (after the parent's text)."""
    kind: str
    """root, step ("Step k:" line), answer ("Answer:" line), end (the output stopped or
    was cut off), other (any other line), or rollout (a verified Monte-Carlo rollout: the
    rest of a solution, several lines)."""
    count: int = 1
    """Times this line was sampled among its siblings (duplicates are merged)."""
    expansions: int = 0
    """Times lines were sampled under this node (MCTS samples more where every line failed)."""
    value: float | None = None
    """V of the candidate: checker (0/1), Monte-Carlo share, or a terminal's reward."""
    prior: float = 1.0
    """P among its siblings: the policy's probability of the line, renormalised."""
    visits: int = 0
    value_sum: float = 0.0
    children: list[int] = field(default_factory=list)
    expanded: bool = False
    rollout_tokens: int = 0
    """Tokens of the Monte-Carlo rollouts that valued this node."""
    rollout_ids: list[int] | None = None
    """A verified Monte-Carlo rollout from this node (its continuation ids), if one was seen."""
    step_id: int | None = None
    """The store step this node was recorded as (``record_tree``)."""

    @property
    def terminal(self) -> bool:
        return self.kind in ("answer", "end", "rollout")

    @property
    def q(self) -> float:
        """Mean backed-up value (MCTS); the node's own value before any visit."""
        return self.value_sum / self.visits if self.visits else (self.value or 0.0)

    @property
    def logprob(self) -> float:
        return sum(self.logprobs)


@dataclass
class SearchTree:
    """The nodes of one search, the answer it chose and what it cost."""

    task: Task
    strategy: Beam | MCTS
    prompt_ids: list[int]
    nodes: list[SearchNode]
    value_mode: str
    tokens: int = 0
    """Sampled tokens: candidate lines and rollouts, duplicates included."""
    prefill: int = 0
    """Prompt tokens of every request (prompt + prefix), as a backend without a prefix cache pays them."""
    calls: int = 0
    """Generate calls (each a batch of requests)."""
    answer: int | None = None
    """Id of the node that ends the chosen solution."""
    adapter: str | None = None
    """The adapter that sampled the tree (None: the base model)."""

    def path(self, node: int) -> list[SearchNode]:
        """Root excluded: the lines from the first to ``node``."""
        out = []
        while node is not None and self.nodes[node].parent is not None:
            out.append(self.nodes[node])
            node = self.nodes[node].parent
        return out[::-1]

    def ids(self, node: int) -> list[int]:
        """The completion ids from the prompt to the end of ``node``."""
        return [t for n in self.path(node) for t in n.token_ids]

    def text(self, node: int | None = None) -> str:
        node = self.answer if node is None else node
        return "" if node is None else "".join(n.text for n in self.path(node))

    @property
    def verified(self) -> bool:
        return self.answer is not None and (self.nodes[self.answer].value or 0.0) >= 1.0

    @property
    def chosen(self) -> set[int]:
        """Nodes on the path to the answer."""
        return {n.id for n in self.path(self.answer)} if self.answer is not None else set()


def search(llm: LLM, suite: Suite, task: Task, prompt: str | Sequence[int], strategy: Beam | MCTS, *,
           adapter: str | None = None, seed: int | None = 0) -> SearchTree:
    """Search for a verified solution of ``task`` from ``prompt`` (text, tokenized once,
    or ids); see the module doc. ``seed``: the same seed gives the same tree."""
    prompt_ids = list(prompt) if not isinstance(prompt, str) else llm.tokenize(prompt)
    value_mode = strategy.value
    if value_mode == "auto":
        value_mode = "checker" if suite.has_step_checker else "mc"
    if value_mode == "checker" and not suite.has_step_checker:
        raise AgentkitError(f"suite '{suite.name}' has no step checker; search it with value='mc'")
    root = SearchNode(0, None, 0, [], [], "", "root", value=None)
    tree = SearchTree(task, strategy, prompt_ids, [root], value_mode, adapter=adapter)
    runner = _Search(llm, suite, task, tree, adapter, seed)
    runner.beam() if isinstance(strategy, Beam) else runner.mcts()
    return tree


class _Head(NamedTuple):
    """The certain start of a node's next line (``_Search._certain_heads``)."""

    token_ids: list[int]
    logprobs: list[float]
    line: Completion | None = None
    """The whole line when every token of it is certain: all the samples are this line."""

    def join(self, tail: Completion) -> Completion:
        """A sampled line: this head, then what was sampled after it."""
        return replace(tail, token_ids=self.token_ids + tail.token_ids, logprobs=self.logprobs + tail.logprobs)


class _Search:
    def __init__(self, llm: LLM, suite: Suite, task: Task, tree: SearchTree, adapter: str | None, seed: int | None):
        self.llm, self.suite, self.task, self.tree = llm, suite, task, tree
        self.s = tree.strategy
        self.adapter, self.seed = adapter, seed

    # --- the two strategies ---------------------------------------------------------

    def beam(self) -> None:
        tree, s = self.tree, self.s
        frontier = [tree.nodes[0]]
        while frontier and not self._spent():
            share = max(1, (s.width * s.expand) // len(frontier))
            children = _unique(self._expand([(node, share) for node in frontier]))
            if self._solved():
                break
            open_ = [c for c in children if not c.terminal and c.depth < s.max_depth and self._alive(c)]
            frontier = sorted(open_, key=self._rank, reverse=True)[: s.width]
        self._choose_answer()

    def mcts(self) -> None:
        tree, s = self.tree, self.s
        root = tree.nodes[0]
        for _ in range(s.simulations):
            if self._spent():
                break
            path, node = [root], root
            while node.children and not node.terminal:
                open_ = [self.tree.nodes[i] for i in node.children if self._open(self.tree.nodes[i])]
                if not open_:
                    break  # every line under it failed: widen it, sample more lines there
                node = self._select(node, open_)
                path.append(node)
            if node.terminal or node.depth >= s.max_depth or not self._alive(node):
                value = node.value or 0.0  # nothing to grow: back its own value up again
            else:
                sampled = self._expand([(node, s.expand)])
                value = sum(c.value for c in sampled) / len(sampled)  # the mean over what the policy drew
                for c in _unique(sampled):
                    if c.visits == 0:
                        c.visits, c.value_sum = 1, c.value
            for n in path:
                n.visits += 1
                n.value_sum += value
            if self._solved():
                break
        self._choose_answer()

    def _solved(self) -> bool:
        """A verified answer is in the tree (a line, or a Monte-Carlo rollout)."""
        return any(n.terminal and (n.value or 0.0) >= 1.0 for n in self.tree.nodes)

    def _alive(self, node: SearchNode) -> bool:
        """Whether the node may still lead to a verified answer: under the step checker a
        refuted line is dead (a wrong step stays wrong); a Monte-Carlo 0 is only an estimate."""
        return self.tree.value_mode != "checker" or node.value is None or node.value > 0.0

    def _open(self, node: SearchNode) -> bool:
        """Worth descending into: not an answer that failed, and not a line valued 0. Under
        the checker such a line is dead; valued by rollouts, every one of them failed, so
        MCTS samples new lines beside it (widening its parent) before lines under it."""
        return (node.value is None or node.value > 0.0) and not (node.terminal and (node.value or 0.0) < 1.0)

    def _select(self, node: SearchNode, children: list[SearchNode]) -> SearchNode:
        sqrt_n = math.sqrt(max(node.visits, 1))
        return max(children, key=lambda c: c.q + self.s.c_puct * c.prior * sqrt_n / (1 + c.visits))

    # --- expansion and scoring ------------------------------------------------------

    def _expand(self, jobs: list[tuple[SearchNode, int]]) -> list[SearchNode]:
        """Sample ``n`` candidate lines under each node (one generate call, after the
        greedy pass of ``share_prefix``) and score the new ones; returns the child each
        sample landed on (a line sampled again, also one sampled in an earlier expansion of
        the node, lands on the same child)."""
        s, tree = self.s, self.tree
        heads = self._certain_heads([node for node, _ in jobs])
        requests = [GenerationRequest(
            tree.prompt_ids + tree.ids(node.id) + head.token_ids, n=n, temperature=s.temperature, top_p=s.top_p,
            top_k=s.top_k, max_tokens=s.line_tokens - len(head.token_ids), stop=("\n",),
            seed=self._seed("line", node.id, node.expansions), adapter=self.adapter,
        ) for (node, n), head in zip(jobs, heads) if head.line is None]
        results = iter(self._generate(requests) if requests else [])
        sampled: list[SearchNode] = []
        for (parent, n), head in zip(jobs, heads):
            parent.expanded = True
            parent.expansions += 1
            lines = [head.line] * n if head.line is not None else [head.join(c) for c in next(results)]
            sampled += self._add_children(parent, lines)
        self._score([n for n in _unique(sampled) if n.value is None])
        return sampled

    def _certain_heads(self, nodes: list[SearchNode]) -> list[_Head]:
        """Per node, the start of its next line that every sample would share: the greedy
        tokens while each has probability >= top_p, exactly the positions where the nucleus
        holds one token (a temperature <= 1 only sharpens it). Without ``share_prefix``, or
        where sampling is not nucleus-truncated, the heads are empty."""
        s, tree = self.s, self.tree
        if not s.share_prefix or s.top_p >= 1.0 or not 0.0 < s.temperature <= 1.0:
            return [_Head([], [])] * len(nodes)
        greedy = self._generate([GenerationRequest(
            tree.prompt_ids + tree.ids(node.id), n=1, temperature=0.0, max_tokens=s.line_tokens, stop=("\n",),
            adapter=self.adapter) for node in nodes])
        floor = math.log(s.top_p)
        heads = []
        for (line,) in greedy:
            certain = next((i for i, lp in enumerate(line.logprobs) if lp < floor), None)
            heads.append(_Head(line.token_ids, line.logprobs, line) if certain is None
                         else _Head(line.token_ids[:certain], line.logprobs[:certain]))
        return heads

    def _add_children(self, parent: SearchNode, completions: list[Completion]) -> list[SearchNode]:
        tree = self.tree
        head = self.tree.text(parent.id)
        seen = {tree.nodes[i].text: tree.nodes[i] for i in parent.children}
        sampled = []
        for c in completions:
            full = self.llm.decode(tree.ids(parent.id) + c.token_ids)
            line = full[len(head):] if full.startswith(head) else self.llm.decode(c.token_ids)
            if line in seen:
                seen[line].count += 1
                sampled.append(seen[line])
                continue
            node = SearchNode(len(tree.nodes), parent.id, parent.depth + 1, list(c.token_ids), list(c.logprobs),
                              line, _kind(line, c), count=1)
            tree.nodes.append(node)
            parent.children.append(node.id)
            seen[line] = node
            sampled.append(node)
        children = list(seen.values())
        # the prior: the policy's probability of each line, renormalised over the siblings
        top = max((c.logprob for c in children), default=0.0)
        weights = [math.exp(c.logprob - top) for c in children]
        for c, w in zip(children, weights):
            c.prior = w / sum(weights)
        return sampled

    def _score(self, nodes: list[SearchNode]) -> None:
        tree, suite, task = self.tree, self.suite, self.task
        pending = []
        for node in nodes:
            text = tree.text(node.id)
            if node.terminal or node.depth >= self.s.max_depth:
                node.value = suite.verify(task, text)
                if not node.terminal:
                    node.kind = "end"  # cut off at max_depth: judged as it stands
            elif tree.value_mode == "checker":
                node.value = 1.0 if all(suite.check_steps(task, text) or []) else 0.0
            else:
                pending.append(node)
        if pending:
            self._mc_values(pending)

    def _mc_values(self, nodes: list[SearchNode]) -> None:
        s, tree = self.s, self.tree
        requests = [GenerationRequest(
            tree.prompt_ids + tree.ids(node.id), n=s.rollouts, temperature=s.temperature, top_p=s.top_p,
            top_k=s.top_k, max_tokens=s.rollout_length, stop=self.suite.stop, seed=self._seed("mc", node.id),
            adapter=self.adapter,
        ) for node in nodes]
        for node, rollouts in zip(nodes, self._generate(requests)):
            head = tree.text(node.id)
            wins = [r for r in rollouts if self.suite.verify(self.task, head + r.text) >= 1.0]
            node.value = len(wins) / len(rollouts)
            node.rollout_tokens = sum(len(r.token_ids) for r in rollouts)
            if wins:
                node.rollout_ids = list(wins[0].token_ids)
                self._graft(node, wins[0])

    def _graft(self, node: SearchNode, rollout: Completion) -> None:
        """A verified rollout from ``node`` joins the tree as its terminal child: a solution
        found, which ends the search (its tokens were counted as the rollout's)."""
        tree = self.tree
        if any(tree.nodes[i].kind == "rollout" for i in node.children):
            return
        child = SearchNode(len(tree.nodes), node.id, node.depth + 1, list(rollout.token_ids), list(rollout.logprobs),
                           rollout.text, "rollout", value=1.0, visits=1, value_sum=1.0)  # ids as sampled, text cut at the stop
        tree.nodes.append(child)
        node.children.append(child.id)

    def _generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        results = self.llm.generate(requests)
        self.tree.calls += 1
        self.tree.tokens += sum(len(c.token_ids) for row in results for c in row)
        self.tree.prefill += sum(len(r.prompt) for r in requests)
        return results

    def _spent(self) -> bool:
        return self.tree.tokens >= self.s.max_tokens

    def _seed(self, what: str, *parts: Any) -> int | None:
        if self.seed is None:
            return None
        digest = hashlib.sha1(repr((self.seed, what, self.task.id, *parts)).encode()).hexdigest()
        return int(digest[:8], 16)

    @staticmethod
    def _rank(node: SearchNode) -> tuple[float, float]:
        """Beam order: value, then the policy's mean log-probability per token."""
        return (node.value or 0.0, node.logprob / max(len(node.token_ids), 1))

    def _choose_answer(self) -> None:
        """The best terminal (verified first, then value, then the policy's probability);
        with none, the deepest best line (an unfinished solution, judged as it stands)."""
        tree = self.tree
        ends = [n for n in tree.nodes if n.terminal]
        if ends:
            tree.answer = max(ends, key=lambda n: (n.value or 0.0, n.q, n.logprob)).id
        elif len(tree.nodes) > 1:
            tree.answer = max(tree.nodes[1:], key=lambda n: (n.depth, *self._rank(n))).id


def _unique(nodes: list[SearchNode]) -> list[SearchNode]:
    return list({id(n): n for n in nodes}.values())


def _kind(line: str, completion: Completion) -> str:
    if parse_answer(line) is not None:
        return "answer"
    if not line.endswith("\n") and "\n" not in line:
        return "end"  # the model stopped (end of sequence, a stop string) or ran out of tokens
    if STEP_LINE.match(line.lstrip("\n")):
        return "step"
    return "other"


def record_tree(recorder: NodeRecorder, tree: SearchTree, *, node: str = "solve", role: str = "solver") -> dict[int, int]:
    """Write every node of ``tree`` as a step of ``recorder``'s run, parents first (one
    transaction per depth), and count its tokens and calls on the recorder. Each step's
    prompt is the search prompt + the node's prefix and its completion the node's line, as
    sampled; ``meta["search"]`` holds the tree (node, parent, value, visits, prior, count,
    kind, chosen). Returns node id -> step id."""
    chosen = tree.chosen
    by_depth: dict[int, list[SearchNode]] = {}
    for n in tree.nodes[1:]:
        by_depth.setdefault(n.depth, []).append(n)
    step_ids: dict[int, int] = {}
    for depth in sorted(by_depth):
        rows = []
        for n in by_depth[depth]:
            parent = tree.nodes[n.parent]
            rows.append(dict(
                node=node, role=role, parent_step_id=parent.step_id,
                prompt_ids=tree.prompt_ids + tree.ids(parent.id), completion_text=n.text,
                completion_ids=n.token_ids, logprobs=n.logprobs, finish_reason="stop" if n.kind != "end" else "length",
                adapter=tree.adapter, meta={"search": {
                    "strategy": str(tree.strategy), "value_mode": tree.value_mode, "node": n.id, "parent": n.parent,
                    "depth": n.depth, "kind": n.kind, "value": n.value, "visits": n.visits, "q": n.q,
                    "prior": n.prior, "count": n.count, "chosen": n.id in chosen,
                    "rollout_ids": n.rollout_ids, "rollout_tokens": n.rollout_tokens,
                }},
            ))
        for n, step_id in zip(by_depth[depth], recorder.record_steps(rows)):
            n.step_id = step_id
            step_ids[n.id] = step_id
    recorder.account(calls=tree.calls, tokens=tree.tokens + tree.prefill)
    return step_ids
