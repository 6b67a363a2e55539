"""The experience library: items nodes read into their prompts (exemplars, insights,
routes; library.py, _items.py), their retrieval (retrieval.py), how a prompt shows them
(prompting.py, prompts/memory.yaml) and learning them from verified runs (learning.py,
prompts/reflect.yaml). Its tables live in the store file (agentkit.store)."""

from .library import ExperienceLibrary, LibraryItem

__all__ = ["ExperienceLibrary", "LibraryItem"]
