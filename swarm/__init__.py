"""The whole-swarm view: coordinator, scheduler, simulators, network harness, `swarm status`.

Imports flow one way: `swarm` -> `peers` -> `models`, `compression`.
"""
