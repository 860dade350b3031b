"""Command-line entry points of the whole-swarm view: `swarm-sim` and `swarm status`."""
