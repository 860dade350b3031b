"""The data plane: how peers' messages travel, in one place.

- `transport`: the `Message`, the `Transport` interface the engine talks to, the keyed `Mailbox`
  and the in-process hub (tests, `swarm-sim local`).
- `wire`: the frame format (a msgpack header frame plus a raw payload frame) and the control
  bodies.
- `zmq_transport`: `ZmqTransport`, the live swarm's transport; its parts: `outbound` (one
  DEALER and writer per neighbour), `gate` (the receive side's plan-version check and budgets),
  `routes` (where a coordinator pushes to each peer), `stats` (counters), `delay_line` (user
  space link latency), `client` (addresses and one-shot request/reply).
- `probe`: link measurements and reachability checks through a peer's real data socket.

Nothing here imports torch or hivemind; `transport` imports nothing but the standard library,
so `peers.protocol` can use its names.
"""
