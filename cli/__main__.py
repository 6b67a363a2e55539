"""``python -m agentkit.cli`` runs the ``agentkit`` command."""

from agentkit.cli.app import main

main()
