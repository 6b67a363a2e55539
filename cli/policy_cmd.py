"""``agentkit policy list|show|promote|rollback``: the policy versions (trained LoRA
adapters) in a store. Only typer is imported at module level (see app.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from agentkit.cli._common import _existing_store, _Group, _require, _store_option

__all__ = ["policy_app"]

policy_app = typer.Typer(
    cls=_Group, no_args_is_help=True,
    help="List, inspect, promote and roll back policy versions (trained LoRA adapters).",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _open_registry(store: Optional[Path]) -> Any:
    """The policy registry in the existing store at ``store``."""
    from agentkit.store.policies import PolicyRegistry

    return PolicyRegistry(_existing_store(store))


@policy_app.command("list")
def policy_list(
    store: Optional[Path] = _store_option(),
    status: Optional[str] = typer.Option(None, help="Only versions with this status: candidate, active, rejected or retired."),
) -> None:
    """List policy versions, oldest first: status, parent, held-out success, checksum."""
    from agentkit.store.policies import POLICY_STATUSES

    _require(status is None or status in POLICY_STATUSES, f"--status {status}: choose one of: {', '.join(POLICY_STATUSES)}")
    with _open_registry(store) as registry:
        policies = registry.list(status)
        path = registry.path

    from rich.console import Console

    from agentkit.cli.render import policies_table

    Console().print(policies_table(policies, path))


@policy_app.command("show")
def policy_show(
    version: str = typer.Argument(..., help="A version from `agentkit policy list`, e.g. v3 or base."),
    store: Optional[Path] = _store_option(),
) -> None:
    """Show every field of one policy version: lineage, adapter, data, hyper-parameters, metrics, events."""
    with _open_registry(store) as registry:
        policy = registry.get(version)
        events = registry.events(version)

    from rich.console import Console

    from agentkit.cli.render import policy_detail

    Console().print(policy_detail(policy, events))


@policy_app.command("promote")
def policy_promote(
    version: str = typer.Argument(..., help="The version to make active, e.g. v3 (its adapter checksum is verified first)."),
    reason: str = typer.Option("manual promote", help="Why; recorded with the promotion."),
    by: Optional[str] = typer.Option(None, show_default="your user name", help="Who promotes; recorded with the promotion."),
    store: Optional[Path] = _store_option(),
) -> None:
    """Make a version the active policy by hand, bypassing the gate (who and why are recorded)."""
    with _open_registry(store) as registry:
        previous = registry.active().version
        policy = registry.promote(version, actor=by, reason=reason)
    typer.echo(f"{policy.version} is active (was {previous})")


@policy_app.command("rollback")
def policy_rollback(
    reason: str = typer.Option("manual rollback", help="Why; recorded with the rollback."),
    by: Optional[str] = typer.Option(None, show_default="your user name", help="Who rolls back; recorded with the rollback."),
    store: Optional[Path] = _store_option(),
) -> None:
    """Re-activate the previously active policy version; the current one is marked rejected."""
    with _open_registry(store) as registry:
        current = registry.active().version
        policy = registry.rollback(actor=by, reason=reason)
    typer.echo(f"{policy.version} is active again ({current} rolled back)")

