"""`swarm status`: the operator's view of a running swarm, read from the DHT.

    swarm status --initial-peers /ip4/1.2.3.4/tcp/31337/p2p/12D3Koo...          # a table
    swarm status --initial-peers ... --json                                      # for scripts
    swarm report RUN_DIR [--out DIR]                 # plots and report.md of a run (swarm.cli.report)

Shows every peer (name, state, stage, replica, device, measured speed and links, heartbeat age,
parameter checksum), the plan version and why it changed, the global step, the last loss and
tokens/s. It joins the DHT as a client only (nobody dials it), reads every bucket of peer records
at once (`read_peers`: PEER_BUCKETS concurrent lookups) and leaves.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from typing import Any

__all__ = ["main", "collect"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarm", description="Inspect a running swarm, or plot a run.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    status = sub.add_parser("status", help="peers, plan version, step, loss and throughput",
                            description="Peers, plan version, step, loss and throughput of a running swarm.")
    status.add_argument("--initial-peers", nargs="+", required=True, metavar="MULTIADDR",
                        help="the coordinator's address (as it printed it) or any peer's")
    status.add_argument("--json", action="store_true", help="print machine-readable JSON")
    from swarm.cli import report  # matplotlib only when it runs

    report.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "report":
        return report.run(args)
    from peers.daemon.records import CoordinatorPin
    from peers.dht import SwarmDHT

    try:
        dht = SwarmDHT(args.initial_peers, client_mode=True, startup_timeout=30.0)
    except Exception as error:  # hivemind raises its own types for bad or unreachable multiaddrs
        print(f"swarm status: cannot join the DHT via --initial-peers {' '.join(args.initial_peers)}: {error}",
              file=sys.stderr)
        return 2
    try:
        view = collect(dht, CoordinatorPin(peer_ids=[addr.rsplit("/p2p/", 1)[-1] for addr in args.initial_peers]))
    finally:
        dht.close()
    if args.json:
        print(json.dumps(view, indent=1))
    else:
        _print_table(view)
    return 0


def collect(dht: Any, pin: Any = None) -> dict[str, Any]:
    """The status as a JSON-ready dict (the `--json` contract). pin: the `CoordinatorPin` to read the
    plan and control records through (the coordinator's dashboard pins itself); default: a new one."""
    from peers.daemon.records import CoordinatorPin, read_peers
    from peers.dataplane.transport import REJECTIONS
    from peers.dht import dht_time
    from peers.protocol import to_builtins

    pin = pin or CoordinatorPin()
    control = pin.control(dht)
    plan = pin.plan(dht)
    now = dht_time()
    peers = []
    owners = {name: admitted.owner for name, admitted in control.admitted.items()} if control else None
    for name, record in sorted(read_peers(dht, owners).items()):
        peers.append({"name": name, "state": record.state, "stage": record.stage, "replica": record.replica,
                      "device": record.device, "tflops": record.tflops, "memory_gb": record.memory_gb,
                      "heartbeat_age_s": round(max(0.0, now - record.heartbeat), 2),
                      "param_checksum": record.param_checksum, "step": record.step, "address": record.address,
                      "links": to_builtins(record)["links"], "bytes_sent": record.bytes_sent,
                      "dropped_stale": record.dropped_stale,
                      "rejected": {reason: record.rejected.get(reason, 0) for reason in REJECTIONS},
                      "suspects": record.suspects, "error": record.error,
                      "breakdown": to_builtins(record)["breakdown"]})
    flagged: Counter[str] = Counter()  # how often the other replicas' all-reduce flagged each peer's gradients
    for peer in peers:
        flagged.update(peer["suspects"])
    return {
        "plan_version": control.plan_version if control else 0,
        "step": control.committed_step if control else 0,
        "total_steps": control.total_steps if control else 0,
        "loss": _finite_or_none(control.loss) if control else None,  # a diverged (NaN) loss is null: valid JSON
        "tokens_per_s": control.tokens_per_s if control else 0.0,
        "done": control.done if control else False,
        "plan": None if plan is None else {"version": plan.version, "start_step": plan.start_step, "grid": plan.grid,
                                           "layers": plan.layers, "standby": plan.standby,
                                           "reason": to_builtins(plan.reason)},
        "peers": peers,
        "suspects": dict(flagged.most_common()),
    }


def _print_table(view: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if view["plan"] is None:
        console.print("no plan yet: the coordinator is waiting for peers" if view["peers"] or view["plan_version"] == 0
                      else "no coordinator found")
    loss = "-" if view["loss"] is None else f"{view['loss']:.4f}"
    console.print(f"plan version {view['plan_version']}, step {view['step']}/{view['total_steps']}, loss {loss}, "
                  f"{view['tokens_per_s']:.0f} tokens/s" + (" (finished)" if view["done"] else ""))
    if view["plan"]:
        reason = view["plan"]["reason"]
        predicted = reason["predicted_step_s"]
        console.print(f"why this plan ({reason['change']}): {reason['text']}"
                      + ("" if predicted is None else f"; predicted {predicted:.3g} s/step"), markup=False)
    table = Table("peer", "state", "cell", "device", "TFLOPS", "slowest link", "beat", "checksum")
    for peer in view["peers"]:
        cell = "-" if peer["stage"] < 0 else f"s{peer['stage']} r{peer['replica']}"
        table.add_row(peer["name"], peer["state"], cell, peer["device"], f"{peer['tflops']:.3f}",
                      _slowest(peer["links"]), f"{peer['heartbeat_age_s']:.1f}s", peer["param_checksum"][:8] or "-")
    console.print(table)
    if view["suspects"]:
        console.print("gradients flagged by other replicas' all-reduce (steps): "
                      + ", ".join(f"{name} {count}" for name, count in view["suspects"].items()), markup=False)


def _slowest(links: dict[str, dict[str, Any]]) -> str:
    """The measured link with the least bandwidth, as "NAME RATE, ms" (the scheduler's worry): "<=" when its
    probe failed (the rate is a bound), "(traffic)" when the peer read it from its training traffic."""
    if not links:
        return "-"
    name, link = min(links.items(), key=lambda item: item[1]["bandwidth_gbps"])
    gbps = link["bandwidth_gbps"]
    rate = f"{gbps:.2f} Gb/s" if gbps >= 1 else f"{gbps * 1e3:.1f} Mb/s"
    return (f"{name} {'<= ' if link.get('at_most') else ''}{rate} {link['latency_ms']:.1f} ms"
            + (" (traffic)" if link.get("from_traffic") else ""))


def _finite_or_none(value: float | None) -> float | None:
    """`value` if it is a finite number, else None (JSON has no NaN or infinity)."""
    return value if value is not None and math.isfinite(value) else None


if __name__ == "__main__":
    sys.exit(main())
