"""The graph spec: pydantic models for nodes, edges and graphs, and ``validate_spec``,
which finds everything that would stop a graph from compiling or from terminating.

Every problem is one GraphSpecError naming the bad value and the fix, e.g.
"edge 'solve -> verifer': no node named 'verifer' (nodes: plan, solve, verify)".
"""

from __future__ import annotations

import re
from collections import Counter
from string import Template
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentkit.errors import AgentkitError, GraphSpecError
from agentkit.graph.search import MCTS, Beam, as_strategy, strategy_dict

__all__ = ["ROLES", "ROLE_LABELS", "MEMORY_KINDS", "MemorySpec", "NodeSpec", "EdgeSpec", "GraphSpec", "validate_spec",
           "node_spec", "graph_spec", "check_graph_name"]

ROLES = ("planner", "solver", "critic", "router", "verifier", "tool", "selector")
"""planner: task -> numbered plan; solver: context -> steps + answer; critic: answer ->
score, critique, accept|revise; router: context -> one of its labels; verifier: answer ->
reward; tool: a typed Python callable; selector: picks one of a fan-out solver's samples."""

ROLE_LABELS = {"critic": ("accept", "revise")}
"""Labels a role emits on its own (a router's labels are declared per node)."""

# the template variables each role renders its prompt with (see prompts/<role>.yaml)
ROLE_VARIABLES = {
    "planner": {"question"},
    "solver": {"context", "question", "plan_section", "revise_section", "cue"},
    "critic": {"question", "solution"},
    "router": {"question", "options"},
    "verifier": {"question", "solution"},
}

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")

MEMORY_KINDS = {
    "solver": ("exemplar", "insight"),
    "planner": ("exemplar", "insight"),
    "critic": ("insight",),
    "router": ("route",),
}
"""The experience-library item kinds each role can read (the first ones by default)."""


class MemorySpec(BaseModel):
    """A node's read of the experience library: ``k`` items retrieved for the task into a
    marked section of its prompt (a router: its routes' success rates as a prior)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(4, ge=1, le=16)
    kinds: tuple[str, ...] | None = None
    """Item kinds to read; None: every kind the role reads (MEMORY_KINDS)."""
    weight: float = Field(1.0, ge=0, le=10)
    """router: the prior's weight, added as weight * log(success rate) to each label's logprob."""

    def kinds_for(self, role: str) -> tuple[str, ...]:
        return self.kinds or MEMORY_KINDS.get(role, ())


class NodeSpec(BaseModel):
    """One node: a name, a role and the role's options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    role: str
    prompt: str | None = None
    """Replaces the role's default template (prompts/<role>.yaml); same variables, strict."""
    max_retries: int = Field(1, ge=0, le=5)
    """Extra attempts after a malformed output; each attempt is recorded."""
    max_revisions: int | None = Field(None, ge=0)
    """critic: revise verdicts honoured before it proceeds along accept."""
    max_visits: int | None = Field(None, ge=1)
    """Any node: runs at most this many times; arriving once more ends the run."""
    n: int = Field(1, ge=1, le=64)
    """solver: samples fanned out in parallel (then a selector picks one)."""
    temperature: float | None = Field(None, ge=0)
    """None: the run's temperature (a fan-out solver: 0.8 when the run is greedy)."""
    max_tokens: int | None = Field(None, ge=1)
    shots: int | None = Field(None, ge=0)
    """solver: worked examples from the task suite (None: the run's --shots)."""
    labels: dict[str, str] | None = None
    """router: label -> description shown to the model."""
    tool: str | None = None
    """tool: the registered tool's name (default calculator)."""
    judge: bool = False
    """verifier: ask the model (yes/no by logprob) even when the task has a checker."""
    memory: MemorySpec | None = None
    """Read the experience library: memory=4 (k items) or memory={"k": 4, "kinds": ["exemplar"]}."""
    search: dict[str, Any] | None = None
    """solver: a step-level search instead of one sampled call, Beam(width=4, expand=8),
    MCTS(simulations=32) or a spec such as "beam:4x8" (agentkit.graph.search); kept as
    ``strategy_dict`` so the spec stays JSON."""

    @field_validator("search", mode="before")
    @classmethod
    def _search_as_dict(cls, value: Any) -> Any:
        if value is None:
            return None
        try:
            return strategy_dict(as_strategy(value))
        except (AgentkitError, TypeError) as exc:  # TypeError: a recorded dict with a field no strategy has
            raise ValueError(str(exc)) from None

    @field_validator("memory", mode="before")
    @classmethod
    def _memory_shorthand(cls, value: Any) -> Any:
        if value is None or value is False or value == 0:
            return None
        if value is True:
            return {}
        if isinstance(value, int):
            return {"k": value}
        if isinstance(value, (dict, MemorySpec)):
            return value
        raise ValueError("use memory=4 (items per prompt) or memory={'k': 4, 'kinds': ['exemplar', 'insight']}")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_dict(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return {str(label): "" for label in value}
        return value

    @property
    def fan_out(self) -> bool:
        return self.n > 1

    def emits(self) -> tuple[str, ...]:
        """The route labels this node can emit (empty: it takes unconditional edges only)."""
        if self.role == "router":
            return tuple(self.labels or ())
        return ROLE_LABELS.get(self.role, ())

    @property
    def strategy(self) -> Beam | MCTS | None:
        """The node's search strategy, or None when it samples once."""
        return as_strategy(self.search)

    def options(self) -> dict[str, Any]:
        """The options that differ from their defaults, for display (a search as its spec)."""
        shown = self.model_dump(exclude={"name", "role"}, exclude_defaults=True)
        if self.search is not None:
            shown["search"] = str(self.strategy)
        return shown


class EdgeSpec(BaseModel):
    """source -> target, taken always (when=None) or when the source emits the label ``when``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    target: str
    when: str | None = None

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}" + (f" [{self.when}]" if self.when else "")


class GraphSpec(BaseModel):
    """A whole graph: nodes in declaration order, edges, and the entry node."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    nodes: list[NodeSpec] = Field(default_factory=list)
    edges: list[EdgeSpec] = Field(default_factory=list)
    entry: str | None = None

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise GraphSpecError(f"graph {self.name!r} has no node named {name!r} (nodes: {self._names()})")

    def out_edges(self, name: str) -> list[EdgeSpec]:
        return [e for e in self.edges if e.source == name]

    def routes(self, name: str) -> dict[str | None, str | None]:
        """Where each label of node ``name`` leads (None key: a node without labels;
        None value: the run ends). A label without its own edge takes the node's
        unconditional edge; a critic's revise without an edge follows accept, and its
        accept without an edge ends the run."""
        node = self.node(name)
        edges = self.out_edges(name)
        default = next((e.target for e in edges if e.when is None), None)
        labels = node.emits()
        if not labels:
            return {None: default}
        routes = {label: next((e.target for e in edges if e.when == label), default) for label in labels}
        if node.role == "critic" and not any(e.when == "revise" for e in edges):
            routes["revise"] = routes["accept"]
        return routes

    def _names(self) -> str:
        return ", ".join(n.name for n in self.nodes) or "none"


def check_graph_name(name: Any) -> str:
    """``name`` if it can name a graph (one line of printable text), else a GraphSpecError."""
    if not isinstance(name, str) or not name.strip() or not name.isprintable():
        raise GraphSpecError(
            f"graph name {name!r} is not usable; name the graph with one line of text, e.g. Graph('plan_solve_check')"
        )
    return name


def _check_node_name(name: Any) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise GraphSpecError(
            f"node name {name!r} is not usable; use letters, digits, '_' or '-', starting with a letter (e.g. 'solve')"
        )


def _check_role(name: str, role: Any) -> None:
    if not isinstance(role, str) or role not in ROLES:
        raise GraphSpecError(f"node '{name}': unknown role {role!r}; choose one of: {', '.join(ROLES)}")


def _shown(part: Any) -> str:
    """A part of a field's location as written; quoted when it is not plain text (the
    location holds dict keys, such as a router's labels)."""
    if isinstance(part, str):
        return part if part and part.isprintable() else repr(part)
    return str(part)


def _invalid(where: str, exc: ValidationError) -> GraphSpecError:
    """pydantic's first complaint as one line naming the field, the value and the fix."""
    error = exc.errors()[0]
    field = ".".join(_shown(part) for part in error["loc"]) or "the spec"
    if error["type"] == "missing":
        return GraphSpecError(f"{where}: {field} is missing; add it")
    if error["type"] == "extra_forbidden":
        return GraphSpecError(f"{where}: unknown key {field}; remove it")
    value = repr(error.get("input"))
    value = value if len(value) <= 80 else value[:77] + "..."
    return GraphSpecError(f"{where}: {field}={value} is invalid ({error['msg'].lower()}); fix the value of {field}")


def node_spec(name: str, role: str, options: dict[str, Any]) -> NodeSpec:
    """A NodeSpec, with pydantic's complaints turned into one actionable line."""
    _check_node_name(name)
    _check_role(name, role)
    allowed = [f for f in NodeSpec.model_fields if f not in ("name", "role")]
    for key in options:
        if key not in allowed:
            raise GraphSpecError(f"node '{name}': unknown option {key!r}; options: {', '.join(allowed)}")
    if options.get("search") is not None:
        try:  # the strategy's own message names the fix; pydantic's wrapping would bury it
            as_strategy(options["search"])
        except (AgentkitError, TypeError) as exc:
            raise GraphSpecError(f"node '{name}': {exc}") from None
    try:
        return NodeSpec(name=name, role=role, **options)
    except ValidationError as exc:
        raise _invalid(f"node '{name}'", exc) from None


def graph_spec(data: Any) -> GraphSpec:
    """A GraphSpec from a dict (e.g. read from JSON or YAML), with pydantic's complaints
    turned into one actionable line."""
    if not isinstance(data, dict):
        raise GraphSpecError(f"a graph spec is a dict with name, nodes, edges and entry, not {type(data).__name__}")
    try:
        return GraphSpec.model_validate(data)
    except ValidationError as exc:
        raise _invalid("graph spec", exc) from None


# --- validation ------------------------------------------------------------------------------


def validate_spec(spec: GraphSpec) -> GraphSpec:
    """Raise GraphSpecError for the first problem found; return the spec when there is none."""
    check_graph_name(spec.name)
    # a spec built from a dict (Graph.from_spec) has not been through node_spec's checks
    for node in spec.nodes:
        _check_node_name(node.name)
        _check_role(node.name, node.role)
    names = [n.name for n in spec.nodes]
    nodes = {n.name: n for n in spec.nodes}
    listing = spec._names()
    if not spec.nodes:
        raise GraphSpecError(f"graph {spec.name!r} has no nodes; add one, e.g. .add_node('solve', role='solver')")
    counts = Counter(names)
    duplicates = sorted(n for n, k in counts.items() if k > 1)
    if duplicates:
        raise GraphSpecError(f"graph {spec.name!r} has two nodes named '{duplicates[0]}'; give each node its own name")
    for node in spec.nodes:
        _check_node_options(node)
    if spec.entry is None:
        raise GraphSpecError(f"graph {spec.name!r} has no entry point; call .set_entry(<node>) (nodes: {listing})")
    if not isinstance(spec.entry, str) or spec.entry not in nodes:
        raise GraphSpecError(f"entry {spec.entry!r}: no node named {spec.entry!r} (nodes: {listing})")

    for edge in spec.edges:
        for end in (edge.source, edge.target):
            if end not in nodes:
                raise GraphSpecError(
                    f"edge {f'{edge.source} -> {edge.target}'!r}: no node named {end!r} (nodes: {listing})"
                )
        source = nodes[edge.source]
        if edge.when is not None and edge.when not in source.emits():
            if not source.emits():
                raise GraphSpecError(
                    f"edge '{edge.source} -> {edge.target}' when={edge.when!r}: node '{edge.source}' ({source.role}) "
                    "emits no labels; drop when=, or route through a router or critic"
                )
            raise GraphSpecError(
                f"edge '{edge.source} -> {edge.target}' when={edge.when!r}: {source.role} '{edge.source}' cannot emit "
                f"{edge.when!r} (labels: {', '.join(source.emits())}); use one of them or add it to labels="
            )
    for node in spec.nodes:
        edges = spec.out_edges(node.name)
        unconditional = [e.target for e in edges if e.when is None]
        if len(unconditional) > 1:
            raise GraphSpecError(
                f"node '{node.name}' has {len(unconditional)} unconditional edges (to {', '.join(unconditional)}); "
                "keep one, or make it a router with labels and add when= to each edge"
            )
        for label in node.emits():
            same = [e.target for e in edges if e.when == label]
            if len(same) > 1:
                raise GraphSpecError(
                    f"node '{node.name}' has {len(same)} edges for label {label!r} (to {', '.join(same)}); keep one"
                )
        if node.role == "router":
            for label in node.emits():
                if not any(e.when == label for e in edges) and not unconditional:
                    raise GraphSpecError(
                        f"router '{node.name}' label {label!r} has no edge; add .add_edge('{node.name}', <node>, "
                        f"when={label!r}) or remove the label"
                    )
    _check_fan_out(spec, nodes)
    _check_reachable(spec, nodes)
    _check_cycles_are_bounded(spec, nodes)
    return spec


def _check_node_options(node: NodeSpec) -> None:
    where = f"node '{node.name}' ({node.role})"
    only = {
        "max_revisions": ("critic", node.max_revisions is not None),
        "labels": ("router", node.labels is not None),
        "n": ("solver", node.n != 1),
        "shots": ("solver", node.shots is not None),
        "tool": ("tool", node.tool is not None),
        "judge": ("verifier", node.judge),
        "search": ("solver", node.search is not None),
    }
    for option, (role, given) in only.items():
        if given and node.role != role:
            raise GraphSpecError(f"{where}: {option}= is an option of {role} nodes; remove it or set role='{role}'")
    if node.role == "router":
        if not node.labels or len(node.labels) < 2:
            raise GraphSpecError(f"router '{node.name}' needs at least two labels, e.g. labels=['calculator', 'reasoning']")
        for label in node.labels:
            if not _NAME.fullmatch(label):
                raise GraphSpecError(
                    f"router '{node.name}': label {label!r} is not usable; use one word of letters, digits, '_' or '-'"
                )
    if node.memory is not None:
        readable = MEMORY_KINDS.get(node.role)
        if readable is None:
            raise GraphSpecError(
                f"{where}: memory= is read by {', '.join(MEMORY_KINDS)} nodes; remove it from this {node.role}"
            )
        for kind in node.memory.kinds or ():
            if kind not in readable:
                raise GraphSpecError(
                    f"{where}: memory kind {kind!r} is not read by a {node.role} (kinds: {', '.join(readable)}); "
                    f"use memory={{'kinds': {list(readable)!r}}}"
                )
        if node.memory.kinds is not None and not node.memory.kinds:
            raise GraphSpecError(f"{where}: memory kinds is empty; list at least one of {', '.join(readable)}")
    if node.search is not None:
        if node.fan_out:
            raise GraphSpecError(f"{where}: search= keeps the best path of its own tree; drop n={node.n} (and the "
                                 "selector after it) or drop search=")
        if node.temperature is not None:
            raise GraphSpecError(f"{where}: a search samples its lines at the strategy's temperature; drop "
                                 "temperature= or set it in the strategy, e.g. Beam(width=4, expand=8, temperature=0.6)")
    if node.fan_out and node.temperature == 0:
        raise GraphSpecError(
            f"{where}: n={node.n} samples at temperature 0 would be identical; set temperature=0.8 or drop it"
        )
    if node.role == "tool":
        from agentkit.graph.tools import get_tool

        get_tool(node.tool or "calculator")
    if node.prompt is not None:
        variables = ROLE_VARIABLES.get(node.role)
        if variables is None:
            raise GraphSpecError(f"{where}: a {node.role} node renders no prompt; remove prompt=")
        try:
            used = set(Template(node.prompt).get_identifiers())
            valid = Template(node.prompt).is_valid()
        except (ValueError, TypeError):
            used, valid = set(), False
        if not valid:
            raise GraphSpecError(f"{where}: prompt has a malformed '$' placeholder; write ${{name}} or $$ for a dollar sign")
        unknown = sorted(used - variables)
        if unknown:
            raise GraphSpecError(
                f"{where}: prompt uses ${{{unknown[0]}}}, which a {node.role} does not provide "
                f"(variables: {', '.join(sorted(variables))})"
            )


def _check_fan_out(spec: GraphSpec, nodes: dict[str, NodeSpec]) -> None:
    for node in spec.nodes:
        if node.fan_out:
            edges = spec.out_edges(node.name)
            if len(edges) != 1 or edges[0].when is not None or nodes[edges[0].target].role != "selector":
                raise GraphSpecError(
                    f"solver '{node.name}' fans out n={node.n} samples but is not followed by a selector; "
                    f"add .add_node('select', role='selector').add_edge('{node.name}', 'select')"
                )
        if node.role == "selector":
            sources = [e.source for e in spec.edges if e.target == node.name]
            plain = [s for s in sources if not nodes[s].fan_out]
            if not sources or plain or spec.entry == node.name:
                culprit = f"'{plain[0]}' is not a fan-out solver" if plain else "it has no fan-out solver before it"
                raise GraphSpecError(
                    f"selector '{node.name}' picks among a solver's samples, but {culprit}; "
                    "give the solver before it n=4 (or more) and temperature > 0"
                )


def _check_reachable(spec: GraphSpec, nodes: dict[str, NodeSpec]) -> None:
    seen, todo = {spec.entry}, [spec.entry]
    while todo:
        for edge in spec.out_edges(todo.pop()):
            if edge.target not in seen:
                seen.add(edge.target)
                todo.append(edge.target)
    for node in spec.nodes:
        if node.name not in seen:
            raise GraphSpecError(
                f"node '{node.name}' is unreachable from entry '{spec.entry}'; add an edge into it or remove it"
            )


def _check_cycles_are_bounded(spec: GraphSpec, nodes: dict[str, NodeSpec]) -> None:
    """Every cycle must pass through a node with max_visits or a revise edge of a critic with
    max_revisions: drop those and what remains must be acyclic."""

    def bounded(edge: EdgeSpec) -> bool:
        source, target = nodes[edge.source], nodes[edge.target]
        if source.max_visits is not None or target.max_visits is not None:
            return True
        return source.role == "critic" and edge.when == "revise" and source.max_revisions is not None

    graph: dict[str, list[str]] = {n: [] for n in nodes}
    for edge in spec.edges:
        if not bounded(edge):
            graph[edge.source].append(edge.target)
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done

    def visit(root: str) -> list[str] | None:
        # depth-first with an explicit stack: a long chain of nodes must not hit Python's recursion limit
        state[root] = 1
        stack, pending = [root], [iter(graph[root])]
        while pending:
            for nxt in pending[-1]:
                if state.get(nxt) == 1:
                    return stack[stack.index(nxt):] + [nxt]
                if nxt not in state:
                    state[nxt] = 1
                    stack.append(nxt)
                    pending.append(iter(graph[nxt]))
                    break
            else:
                state[stack.pop()] = 2
                pending.pop()
        return None

    for name in nodes:
        if name not in state:
            cycle = visit(name)
            if cycle:
                members = list(dict.fromkeys(cycle))
                critics = [n for n in members if nodes[n].role == "critic"]
                fix = f"set max_revisions=2 on critic '{critics[0]}' and loop back on its revise edge, or " if critics else "set "
                raise GraphSpecError(
                    f"cycle '{' -> '.join(cycle)}' has no bound; {fix}max_visits on one of its nodes ({', '.join(members)})"
                )
