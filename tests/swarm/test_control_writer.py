"""The coordinator's DHT copy of the control record, over real DHT nodes: the newest always lands,
but the DHT is not called once per step (peers get each decision pushed over the step channel)."""
from __future__ import annotations

import time

from peers.daemon.records import CoordinatorPin
from peers.protocol import ControlRecord, owner_fingerprint
from swarm.coordinator.step_channel import ControlWriter

SPACING_S = 0.5


def test_a_step_rate_of_control_records_costs_a_few_stores_and_the_newest_lands(nodes):
    coordinator, reader = nodes
    writer = ControlWriter(coordinator, spacing=SPACING_S)
    started = time.monotonic()
    for step in range(1, 61):  # 60 commits at 100 steps/s
        writer.offer(ControlRecord(plan_version=1, committed_step=step, committed_version=1, total_steps=100))
        time.sleep(0.01)
    writer.offer(ControlRecord(plan_version=1, committed_step=61, committed_version=1, total_steps=100, done=True),
                 wait_s=10.0)  # `done` waits until it is stored
    elapsed = time.monotonic() - started
    writer.close()
    stores = coordinator.requests_by_thread().get("control-writer", 0)
    assert 1 <= stores <= elapsed / SPACING_S + 2, (stores, elapsed)
    control = CoordinatorPin(fingerprint=owner_fingerprint(coordinator.owner)).control(reader)
    assert control is not None and (control.committed_step, control.done) == (61, True)
