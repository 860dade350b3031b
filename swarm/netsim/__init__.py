"""The network harness behind `swarm-sim net`: a real swarm over links shaped to a scenario.

- `harness.NetHarness`: one network namespace per device plus one for the coordinator, joined by
  a bridge in its own namespace; every directed path shaped with `htb` (per-destination u32
  filters on each sender's egress, under its uplink cap); latency by `netem` where the kernel has
  it, else by the data plane's delay line (`peers.dataplane.delay_line`); CPU quotas from relative TFLOPS;
  everything named `swn-PIDxN-...` and torn down on success, failure, timeout and signals.
- `check.check_network`: measures every path through the data plane (`net check`).
- `run.run_swarm`: the coordinator and one `swarm-peer join` per device, trained N steps, with a
  report of throughput, measured against predicted iteration time, and bytes per path (`net run`).
- `cleanup.remove_leftovers`: what a killed run left behind, found by the prefix.
Needs root; without it `commands.check_privileges` raises `NetsimUnavailable` saying so.
"""
from .commands import PREFIX, CommandError, NetsimUnavailable, check_privileges
from .harness import Interrupted, NetHarness, interrupts_as_exceptions

__all__ = ["PREFIX", "CommandError", "NetsimUnavailable", "check_privileges", "NetHarness", "Interrupted",
           "interrupts_as_exceptions"]
