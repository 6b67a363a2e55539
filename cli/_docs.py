"""docs/cli.md, generated from the Typer app so that the reference cannot drift from it.

    python -m agentkit.cli._docs > docs/cli.md

tests/test_cli.py fails when docs/cli.md differs from this output.
"""

from __future__ import annotations

from typing import Any, Iterator

__all__ = ["EXAMPLES", "commands", "render"]

EXAMPLES = {
    "run": [
        "agentkit run --suite arithmetic --n 20",
        "agentkit run plan_solve_check --suite arithmetic --n 50",
        "agentkit run graphs/my_graph.py --suite countdown --n 20",
        "agentkit run --resume 42",
        "agentkit run --suite arithmetic --n 200 --memory 4 --concurrency 1",
        "agentkit run --suite arithmetic --level 2 --n 20 --search beam:4x8",
        "agentkit run --suite countdown --n 20 --search mcts:32",
        "agentkit run --suite countdown --level 3 --n 100 --json > report.json",
        "agentkit run --suite my_tasks.jsonl --checker numeric --n 50",
        "agentkit run --backend openai --base-url http://127.0.0.1:8000/v1 --n 200 --concurrency 64",
    ],
    "improve": ["agentkit improve",
                "agentkit improve --levels 1,2 --advance-at 0.5 --rounds 4 --search beam:4x8",
                "agentkit improve --curriculum mopps --pool 4 --rounds 4",
                "agentkit improve --explore sample --method step-dpo --levels 1,2 --rounds 3"],
    "traces list": ["agentkit traces list --suite arithmetic --status failure --limit 10"],
    "traces show": ["agentkit traces show 42"],
    "graphs list": ["agentkit graphs list"],
    "graphs show": ["agentkit graphs show solve_critic", "agentkit graphs show graphs/my_graph.py --out my_graph.mmd"],
    "models": ["agentkit models"],
    "suites": ["agentkit suites"],
    "serve": ["agentkit serve --port 8000", "agentkit serve --model ./my-finetuned-model --port 8001 --max-batch 32"],
    "policy list": ["agentkit policy list", "agentkit policy list --status candidate"],
    "policy show": ["agentkit policy show v3"],
    "policy promote": ['agentkit policy promote v3 --reason "gate run on 200 tasks: p=0.004"'],
    "policy rollback": ['agentkit policy rollback --reason "worse on production tasks"'],
    "memory list": ["agentkit memory list --family arithmetic/1 --sort utility", "agentkit memory list --status retired"],
    "memory show": ["agentkit memory show 12"],
    "memory search": ['agentkit memory search "Compute 47 + 38." --family arithmetic/1 -k 4',
                      'agentkit memory search "make 24 from 3 3 8 8" --retriever embeddings'],
    "memory stats": ["agentkit memory stats --versions 20"],
    "memory prune": ["agentkit memory prune", "agentkit memory prune --family arithmetic/1 --max-items 100 --purge"],
    "memory export": ["agentkit memory export library.jsonl --family arithmetic/1"],
    "memory import": ["agentkit memory import library.jsonl"],
    "memory rollback": ["agentkit memory rollback 7"],
    "trainer start": ["agentkit trainer start --suite arithmetic --min-pairs 32 --eval-tasks 100",
                      "agentkit trainer start --serve-url http://127.0.0.1:8000/v1",
                      "agentkit trainer start --foreground --poll 5"],
    "trainer status": ["agentkit trainer status"],
    "trainer stop": ["agentkit trainer stop --timeout 300"],
}

_INTRO = """\
# agentkit command line

<!-- Generated from the Typer app by `python -m agentkit.cli._docs > docs/cli.md`; do not edit by hand
(tests/test_cli.py checks that this file is current). -->

Every command answers `--help` (or `-h`). A bad value never prints a traceback: the command
prints one line, `error: <what is wrong and how to fix it>`, on stderr and exits with status 1.
Ctrl-C exits with status 130.

Environment: `AGENTKIT_HOME` is where converted models and the default store live
(default `$XDG_CACHE_HOME/agentkit`, else `~/.cache/agentkit`); `AGENTKIT_STORE` overrides
the store path of every command (default `$AGENTKIT_HOME/runs.db`).
"""


def commands(group: Any = None, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, command) of the app, depth first in the app's order: ("traces list", cmd)."""
    if group is None:
        import typer.main

        from agentkit.cli.app import app

        group = typer.main.get_command(app)
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        yield path, command
        if hasattr(command, "commands"):
            yield from commands(command, path + " ")


def _default(param: Any) -> str:
    if isinstance(param.show_default, str):
        return param.show_default
    if param.required or param.default is None or param.show_default is False:
        return ""
    if param.is_flag and param.secondary_opts:
        return param.opts[0] if param.default else param.secondary_opts[0]
    if param.is_flag:
        return "off" if not param.default else "on"
    return str(param.default)


def _metavar(command: Any, param: Any) -> str:
    """Click's names for the option's type (INT, FLOAT, PATH, TEXT), read from the annotation."""
    import typing
    from pathlib import Path

    hint = typing.get_type_hints(command.callback).get(param.name, str)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = args[0] if args else hint
    return {int: "INT", float: "FLOAT", Path: "PATH"}.get(hint, "TEXT")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _section(path: str, command: Any) -> list[str]:
    lines = [f"## agentkit {path}", "", _cell(command.help or ""), ""]
    if hasattr(command, "commands"):
        lines += [f"Subcommands: {', '.join(f'`agentkit {path} {name}`' for name in command.commands)}.", ""]
        return lines
    if hasattr(command, "read_defaults"):  # a ConfigCommand: its defaults are a config's
        command.read_defaults()
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    options = [p for p in command.params if p.param_type_name == "option"]
    usage = " ".join([f"agentkit {path}", "[OPTIONS]" if options else "",
                      *(p.name.upper() if p.required else f"[{p.name.upper()}]" for p in arguments)])
    lines += ["```", " ".join(usage.split()), "```", ""]
    if arguments:
        lines += ["| argument | description |", "| --- | --- |"]
        lines += [f"| `{p.name.upper()}` | {_cell(p.help or '')} |" for p in arguments]
        lines.append("")
    if options:
        lines += ["| option | default | description |", "| --- | --- | --- |"]
        for p in options:
            names = " / ".join([", ".join(p.opts), *p.secondary_opts])
            flag = names if p.is_flag else f"{names} {_metavar(command, p)}"
            help_text = _cell(p.help or "") + (f" Env: `{p.envvar}`." if p.envvar else "")
            default = _default(p)
            lines.append(f"| `{flag}` | {f'`{_cell(default)}`' if default else ''} | {help_text} |")
        lines.append("")
    if path in EXAMPLES:
        lines += ["Examples:", "", "```sh", *EXAMPLES[path], "```", ""]
    return lines


def render() -> str:
    lines = [_INTRO]
    for path, command in commands():
        lines += _section(path, command)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
