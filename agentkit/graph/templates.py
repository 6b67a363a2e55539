"""Role prompts are data: ``prompts/<role>.yaml`` (package data of agentkit.graph, or of
agentkit.memory for the library's own), rendered with ``string.Template.substitute``, so a
placeholder without a value is an error, never an empty string in a prompt."""

from __future__ import annotations

import functools
from importlib import resources
from string import Template
from typing import Any

from agentkit.errors import GraphSpecError

__all__ = ["role_prompts", "render"]


@functools.cache
def role_prompts(role: str, package: str = "agentkit.graph") -> dict[str, Any]:
    """The parsed prompts/<role>.yaml of ``package``; loaded once per process."""
    import yaml

    try:
        text = resources.files(package).joinpath("prompts", f"{role}.yaml").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GraphSpecError(f"no prompt file prompts/{role}.yaml for role '{role}'; reinstall agentkit") from None
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or "template" not in data:
        raise GraphSpecError(f"prompts/{role}.yaml has no 'template' key; restore it from the agentkit source")
    return data


@functools.lru_cache(maxsize=256)
def _template(text: str) -> Template:
    return Template(text)


def render(template: str, where: str, **values: Any) -> str:
    """``template`` with every ${name} replaced; a name without a value raises GraphSpecError."""
    try:
        return _template(template).substitute(values)
    except KeyError as exc:
        name = exc.args[0]
        raise GraphSpecError(
            f"{where}: the template uses ${{{name}}} but no value is given for it "
            f"(values: {', '.join(sorted(values)) or 'none'}); remove ${{{name}}} from the template"
        ) from None
    except ValueError as exc:
        raise GraphSpecError(f"{where}: malformed template ({exc}); write ${{name}}, or $$ for a dollar sign") from None
