"""agentkit: agent graphs that improve themselves.

Importing agentkit is light: torch and transformers load only when a backend or the
trainer is used."""

__version__ = "0.1.0"
__all__ = ["__version__"]
