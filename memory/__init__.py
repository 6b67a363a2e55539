"""The experience library: items nodes read into their prompts (exemplars, insights,
routes), their retrieval, and learning them from verified runs. Its tables live in the
store file (agentkit.store)."""

from .library import ExperienceLibrary, LibraryItem

__all__ = ["ExperienceLibrary", "LibraryItem"]
