"""The coordinator's decisions without processes: refills and growth by the scheduler, state sources,
checkpoints, flags."""
from __future__ import annotations

import argparse
import json
import socket
import time

import pytest

from peers.daemon.stage_state import pack_state
from peers.daemon.timeouts import derive_timeouts
from peers.dataplane.zmq_transport import ZmqTransport
from peers.protocol import (
    Codecs,
    Departure,
    Link,
    PeerRecord,
    PlanChange,
    PlanReason,
    PlanRecord,
    SourceKind,
    StateSource,
    StepBreakdown,
    TrainingSpec,
)
from swarm.coordinator.checkpoint import fetch_stage, read_latest, write_checkpoint
from swarm.coordinator.config import add_arguments, from_args
from swarm.coordinator.planning import (
    DEFAULT_COMMIT_S,
    MIN_STEPS_BETWEEN_CHANGES,
    Placement,
    assign_sources,
    first_placement,
    grow,
    growth_target,
    predicted_step_s,
    refill,
    restart_lost_stages,
    scenario_from_records,
    stage_holders,
)
from swarm.coordinator.report import RunReport

TRAINING, CODECS = TrainingSpec(batch=8, micro_batches=2), Codecs()
KEEP, CHECKPOINT = StateSource(SourceKind.KEEP), StateSource(SourceKind.CHECKPOINT)
TIMEOUTS = derive_timeouts(message_bytes=1e5, bandwidth_gbps=1.0, latency_ms=0.1, step_flops=1e9, tflops=0.1,
                           stages=2, micro_batches=2)


def _plan(grid, standby=(), batch=8):
    names = [n for row in grid for n in row]
    return PlanRecord(version=3, start_step=5, grid=[list(r) for r in grid], layers=[2] * len(grid),
                      addresses=dict.fromkeys(names, "tcp://127.0.0.1:1"), sources=dict.fromkeys(names, KEEP),
                      codecs=CODECS, training=TrainingSpec(batch=batch, micro_batches=2, timeouts=TIMEOUTS),
                      reason=PlanReason(PlanChange.FIRST, "test"), standby=list(standby))


def _reason(text=""):
    return PlanReason(PlanChange.FIRST, text)


def _records(names, slow=()):
    """Records of peers on one fast LAN; the `slow` ones compute 10x slower."""
    return {n: PeerRecord(name=n, address="tcp://127.0.0.1:1", device="cpu", tflops=0.01 if n in slow else 0.1,
                          memory_gb=4.0, links={m: Link(bandwidth_gbps=1.0, latency_ms=0.1) for m in names if m != n})
            for n in names}


def test_a_lost_member_is_replaced_by_a_standby_peer_through_the_scheduler():
    plan = _plan([["a", "b"], ["c", "d"]], standby=["e"])
    placement = refill(plan, _records("acde"), {"b": Departure.LEFT}, TRAINING, CODECS)
    assert placement.grid == [["a", "e"], ["c", "d"]] and placement.layers == [2, 2]
    assert placement.standby == []
    assert placement.reason.change is PlanChange.REPAIRED and placement.reason.lost == {"b": Departure.LEFT}
    assert placement.reason.text == "b left: grid stays 2 x 2, 1 peers move (e)"


def test_the_cheapest_spare_fills_the_hole():
    plan = _plan([["a", "b"], ["c", "d"]], standby=["e", "f"])
    placement = refill(plan, _records("acdef", slow="e"), {"b": Departure.EXPIRED}, TRAINING, CODECS)
    assert placement.grid == [["a", "f"], ["c", "d"]] and placement.standby == ["e"]


def test_without_standby_the_grid_shrinks_to_the_replicas_every_stage_can_fill():
    plan = _plan([["a", "b"], ["c", "d"]])
    placement = refill(plan, _records("acd"), {"b": Departure.EXPIRED}, TRAINING, CODECS)
    assert placement.grid == [["a"], ["c"]] and placement.layers == [2, 2]
    assert placement.standby == ["d"] and "grid 2 x 2 -> 2 x 1, 0 peers move" in placement.reason.text


def test_too_few_peers_for_the_stages_cannot_be_refilled():
    with pytest.raises(RuntimeError, match="cannot fill 2 stages"):
        refill(_plan([["a"], ["b"]]), _records("a"), {"b": Departure.LEFT}, TRAINING, CODECS)


def test_growth_waits_for_hysteresis_and_a_whole_replica_that_the_batch_splits_over():
    plan = _plan([["a"], ["b"]], standby=["c"])
    assert growth_target(plan, _records("abc"), 2, 10, TRAINING) is None  # one peer short
    live = _records("abcdef")
    assert growth_target(plan, live, 2, MIN_STEPS_BETWEEN_CHANGES - 1, TRAINING) is None
    assert growth_target(plan, live, 1, 10, TRAINING) is None  # already at the target
    assert growth_target(plan, live, 8, MIN_STEPS_BETWEEN_CHANGES, TRAINING) == 2  # 8 sequences never split 3 x 2
    assert growth_target(plan, live, 8, 10, TrainingSpec(batch=6, micro_batches=2)) == 3


def test_growth_is_placed_by_the_scheduler_and_keeps_the_layers():
    plan = _plan([["a"], ["b"]], standby=["c", "d"])
    grown = grow(plan, _records("abcd"), 2, TRAINING, CODECS)
    assert len(grown.grid) == 2 and sorted(n for row in grown.grid for n in row) == ["a", "b", "c", "d"]
    assert grown.layers == [2, 2] and grown.standby == []
    assert grown.reason.change is PlanChange.GROWN and grown.reason.joined == ["c", "d"]
    assert grown.reason.text.startswith("c, d join the grid: grid 2 x 1 -> 2 x 2, ")


def test_growth_pins_the_layer_split_the_peers_hold():
    """The scheduler would rebalance [3, 1] to [2, 2]; live state cannot be re-split, so it stays."""
    plan = PlanRecord.from_wire({**_plan([["a"], ["b"]], standby=["c", "d"]).to_wire(), "layers": [3, 1]})
    grown = grow(plan, _records("abcd"), 2, TRAINING, CODECS)
    assert grown is not None and grown.layers == [3, 1] and len(grown.grid[0]) == 2


def _holding(grid, step=4, checksum="c0", **overrides):
    """Records of peers that hold their cell of `grid` at `step` (each may override its fields)."""
    records = {}
    for stage, row in enumerate(grid):
        for replica, name in enumerate(row):
            fields = {"stage": stage, "replica": replica, "step": step, "param_checksum": f"{checksum}-{stage}",
                      "plan_version": 3, **overrides.get(name, {})}
            records[name] = PeerRecord(name=name, address="tcp://127.0.0.1:1", device="cpu", tflops=0.1,
                                       memory_gb=4.0, **fields)
    return records


def test_sources_keep_holders_and_spread_newcomers_over_live_donors():
    previous = _plan([["a", "b"], ["c", "d"]])
    grid = [["a", "b", "x", "y"], ["c", "d", "z", "w"]]
    holders = stage_holders(previous, _holding(previous.grid), 4, 3, live=set("abcd"))
    assert holders.checksums == ["c0-0", "c0-1"]
    sources = assign_sources(grid, holders, origin=None)
    assert [sources[n] for n in "abcd"] == [KEEP] * 4
    assert {sources["x"].donor, sources["y"].donor} == {"a", "b"}  # two newcomers, two different donors
    assert {sources["z"].donor, sources["w"].donor} == {"c", "d"}
    assert {sources[n].kind for n in "xyzw"} == {SourceKind.PEER}


def test_a_donor_moved_to_standby_is_still_listed_as_a_donor():
    from swarm.coordinator.planning import plan_donors

    previous = _plan([["p5"], ["p4"]])  # p3 takes stage 0 from p5, which the new plan names standby
    holders = stage_holders(previous, _holding(previous.grid), 4, 3, live={"p3", "p4", "p5"})
    sources = assign_sources([["p3"], ["p4"]], holders, origin=None)
    assert sources["p3"] == StateSource(SourceKind.PEER, "p5")
    assert plan_donors(sources, None) == ["p5"]


def test_a_stage_with_no_live_holder_restores_from_the_checkpoint():
    previous = _plan([["a"], ["b"]])
    holders = stage_holders(previous, _holding(previous.grid), 4, 3, live={"a", "x"})
    sources = assign_sources([["a"], ["x"]], holders, origin=None)
    assert sources == {"a": KEEP, "x": CHECKPOINT}
    fresh = assign_sources([["a"], ["x"]], holders, origin=SourceKind.INIT)
    assert set(fresh.values()) == {StateSource(SourceKind.INIT)}


def test_before_any_checkpoint_a_stage_that_lost_every_holder_starts_from_the_seed():
    previous = _plan([["a"], ["b"]])
    holders = stage_holders(previous, _holding(previous.grid), 4, 3, live={"a", "x"})
    sources, lost = restart_lost_stages([["a"], ["x"]], assign_sources([["a"], ["x"]], holders, origin=None))
    assert lost == [1] and sources == {"a": KEEP, "x": StateSource(SourceKind.INIT)}


def test_a_member_still_loading_its_stage_is_no_holder_and_no_donor():
    """y was told to fetch stage 1 and has not announced it yet (or failed, announcing stage -1): the
    only real holder died, so the stage restores from the checkpoint instead of naming y a donor."""
    previous = _plan([["a", "b"], ["c", "y"]])
    records = _holding(previous.grid, y={"stage": -1, "step": 0})
    holders = stage_holders(previous, records, 4, 3, live={"a", "b", "y", "z"})
    assert holders.names == [["a", "b"], []]
    sources = assign_sources([["a", "b"], ["y", "z"]], holders, origin=None)
    assert sources["y"] == sources["z"] == CHECKPOINT


def test_a_replica_that_prepared_the_committed_step_holds_it_and_a_diverged_one_does_not():
    previous = _plan([["a", "b", "e"], ["c", "d", "f"]], batch=12)
    records = _holding(previous.grid, c={"step": 3, "prepared_step": 4, "prepared_version": 3},
                       b={"param_checksum": "forged"})
    # b diverged from a and e; c prepared step 4 (it applies it before taking up the next plan)
    holders = stage_holders(previous, records, 4, 3, live=set("abcdef"))
    assert holders.names == [["a", "e"], ["c", "d", "f"]] and holders.checksums == ["c0-0", "c0-1"]
    sources = assign_sources(previous.grid, holders, origin=None)
    assert sources["a"] == sources["e"] == KEEP
    assert sources["b"].kind is SourceKind.PEER and sources["b"].donor in {"a", "e"}  # re-synced from a holder


def test_first_placement_uses_the_scheduler_on_measured_records():
    records = {n: PeerRecord(name=n, address="tcp://127.0.0.1:1", device="cpu", tflops=0.1 * (i + 1),
                             memory_gb=4.0, links={m: Link(bandwidth_gbps=1.0, latency_ms=0.1)
                                                   for m in "abcde" if m != n})
               for i, n in enumerate("abcde")}
    scenario = scenario_from_records(records, TrainingSpec(batch=4, micro_batches=2), CODECS, 2, 2)
    placement = first_placement(records, scenario, seed=0)
    placed = [n for row in placement.grid for n in row]
    assert len(placement.grid) == 2 and len(placement.grid[0]) == 2 and sum(placement.layers) == 4
    assert len(placement.standby) == 1 and set(placed) | set(placement.standby) == set("abcde")


def test_plan_changes_are_priced_by_the_cost_model():
    records = {n: PeerRecord(name=n, address="tcp://127.0.0.1:1", device="cpu", tflops=0.02, memory_gb=4.0)
               for n in "abcd"}
    full = predicted_step_s(Placement([["a", "b"], ["c", "d"]], [2, 2], [], _reason()), records, TRAINING, CODECS)
    shrunk = predicted_step_s(Placement([["a"], ["c"]], [2, 2], ["b"], _reason()), records, TRAINING, CODECS)
    assert full is not None and shrunk is not None
    assert 0 < full < shrunk  # half the replicas: each does twice the work
    assert predicted_step_s(Placement([["a"], ["zz"]], [2, 2], [], _reason()), records, TRAINING, CODECS) is None


def test_the_peers_codec_speed_and_commit_wait_price_the_step():
    def record(name: str, codec: float | None = None, commit: float | None = None) -> PeerRecord:
        breakdown = None if commit is None else StepBreakdown(step=3, compute_s=0.1, wait_forward_s=0.0,
                                                              wait_backward_s=0.0, allreduce_s=0.0, commit_s=commit)
        return PeerRecord(name=name, address="tcp://127.0.0.1:1", device="cpu", tflops=0.02, memory_gb=4.0,
                          codec_gvalues=codec, breakdown=breakdown)

    fresh = {n: record(n) for n in "abcd"}
    scenario = scenario_from_records(fresh, TRAINING, CODECS, 2, 2)
    assert scenario.control.commit_s == DEFAULT_COMMIT_S and {d.codec_gvalues for d in scenario.devices} == {None}
    # the shortest wait the peers measured, the last to prepare's (one has not applied a step yet); each
    # peer's codec speed
    measured = {"a": record("a", 0.5, 0.010), "b": record("b", 0.5, 0.030), "c": record("c", 0.01, 0.050),
                "d": record("d", 0.5)}
    scenario = scenario_from_records(measured, TRAINING, CODECS, 2, 2)
    assert scenario.control.commit_s == pytest.approx(0.010)
    assert [d.codec_gvalues for d in scenario.devices] == [0.5, 0.5, 0.01, 0.5]
    placement = Placement([["a", "b"], ["c", "d"]], [2, 2], [], _reason())
    before, after = (predicted_step_s(placement, records, TRAINING, CODECS) for records in (fresh, measured))
    assert before is not None and after is not None and after > before + 0.010 - DEFAULT_COMMIT_S


def test_a_silent_replica_holds_a_checkpoint_fetch_only_for_its_share_of_the_patience():
    with socket.socket() as probe:  # a port nobody answers on: a replica that is just leaving
        probe.bind(("127.0.0.1", 0))
        silent = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    with ZmqTransport("donor") as donor:
        donor.serve_state(0, pack_state(0, [2, 2], 5, {"model": {}, "optimizer": {}}))
        started = time.monotonic()
        blob = fetch_stage([(silent, None), (donor.address, None)], 0, step=5, patience=8.0)
        assert blob is not None and time.monotonic() - started < 4.0
        assert fetch_stage([(donor.address, None)], 0, step=6, patience=1.0) is None  # only an older step is served


def test_checkpoints_are_published_atomically_and_pruned(tmp_path):
    for step in (5, 10, 15):
        write_checkpoint(tmp_path, step, {"version": step}, {0: b"zero", 1: bytes([step])})
    (tmp_path / ".tmp-step-00000020-1").mkdir()  # a crash mid-write leaves only a temp directory
    latest = read_latest(tmp_path)
    assert latest.step == 15 and latest.stages == {0: b"zero", 1: bytes([15])} and latest.plan == {"version": 15}
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000010", "step-00000015"]
    (tmp_path / "step-00000030").mkdir()  # a newer orphan from an abandoned timeline
    write_checkpoint(tmp_path, 20, {"version": 20}, {0: b"zero"})
    assert read_latest(tmp_path).step == 20
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000015", "step-00000020", "step-00000030"]
    (tmp_path / "latest.json").write_text(json.dumps({"step": 99, "path": "step-00000099"}))
    with pytest.raises(ValueError, match="--resume: cannot read"):
        read_latest(tmp_path)


def _args(*flags):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--steps", "10", "--checkpoint-dir", "/tmp/ck-test", *flags])


@pytest.mark.parametrize("flags, message", [
    (["--stages", "2"], "--stages and --replicas go together"),
    ([], "give --stages S --replicas R, or --min-peers K"),
    (["--stages", "2", "--replicas", "2", "--min-peers", "4"], "not both"),
    (["--stages", "9", "--replicas", "1"], "--stages 9: model 'tiny' has only 4 layers"),
    (["--min-peers", "4", "--batch", "0"], "--batch: expected `int` >= 1, got 0"),
    (["--stages", "2", "--replicas", "2", "--batch", "6"], "--batch 6 must split evenly"),
    (["--min-peers", "4", "--fwd", "q99"], "--fwd:"),
    (["--min-peers", "4", "--listen", "nowhere"], "--listen: expected HOST:PORT"),
    (["--min-peers", "4", "--model", "huge"], "--model: unknown preset"),
    (["--min-peers", "4", "--data", "/no/such/file"], "--data:"),
])
def test_bad_flags_are_refused_naming_the_flag(flags, message):
    with pytest.raises(ValueError, match=message):
        from_args(_args(*flags))


def test_resume_needs_an_earlier_run_but_not_a_checkpoint(tmp_path):
    args = _args("--min-peers", "2", "--resume")
    args.checkpoint_dir = tmp_path
    with pytest.raises(ValueError, match="--resume: no earlier run"):
        from_args(args)
    (tmp_path / "report.jsonl").write_text("")  # a run that died before its first checkpoint
    assert from_args(args).resume


def test_a_rollback_drops_the_abandoned_steps_so_each_step_appears_once(tmp_path):
    report = RunReport(tmp_path / "report.jsonl")
    for step in range(1, 8):
        report.step(step, 1, {"p": 1.0}, 10.0, 0.1)
        report.checksums[str(step)] = {"0": {"p": "x"}}
    report.rollback(5)
    assert [entry["step"] for entry in report.steps] == [1, 2, 3, 4, 5]
    assert sorted(map(int, report.checksums)) == [1, 2, 3, 4, 5]
    assert report.events[-1]["abandoned_steps"] == [6, 7]
    report.close()


def _checkpoint(step, plan):
    from pathlib import Path

    from swarm.coordinator.checkpoint import Checkpoint

    return Checkpoint(step=step, path=Path("step"), plan=plan.to_wire(), stages={})


def test_a_rollback_after_a_re_split_restores_the_split_the_checkpoint_was_saved_under():
    """CI's churn run: layers re-split [2, 2] -> [1, 3] after checkpoint 40, then a stage lost every replica;
    the rollback plan kept [1, 3] and no peer could load the [2, 2] checkpoint, forever."""
    checkpoint = _checkpoint(40, _plan([["a"], ["c"]]))
    assert checkpoint.layers_for([1, 3]) == [2, 2]
    assert checkpoint.layers_for([1, 1, 2]) == [1, 1, 2]  # another stage count: not its split to give


def test_a_resumed_coordinator_continues_from_the_live_peers_step_when_every_stage_has_a_holder():
    from swarm.coordinator.resume import resume_start

    previous = _plan([["a", "b"], ["c", "d"]])
    records = _holding(previous.grid, step=9, c={"step": 8, "prepared_step": 9, "prepared_version": 3})
    start = resume_start(previous, _checkpoint(6, previous), records, TRAINING, CODECS, 4, patient=True)
    assert (start.origin, start.start_step, start.committed, start.version) == (None, 10, 9, 3)
    assert start.rolled_back_to is None and "the live peers at step 9" in start.placement.reason.text
    assert start.placement.grid == previous.grid


def test_a_resumed_coordinator_waits_for_the_last_plans_members_while_patient():
    from swarm.coordinator.resume import resume_start

    previous = _plan([["a", "b"], ["c", "d"]])
    records = _holding(previous.grid, step=9)
    del records["d"]
    assert resume_start(previous, _checkpoint(6, previous), records, TRAINING, CODECS, 4, patient=True) is None


def test_a_resumed_coordinator_rolls_back_to_the_checkpoint_when_a_stage_has_no_live_holder():
    from swarm.coordinator.resume import resume_start

    previous = _plan([["a", "b"], ["c", "d"]])
    records = _holding(previous.grid, step=9, c={"stage": -1}, d={"stage": -1})
    start = resume_start(previous, _checkpoint(6, previous), records, TRAINING, CODECS, 4, patient=True)
    assert (start.origin, start.start_step, start.committed, start.version) == (SourceKind.CHECKPOINT, 7, 6, 0)
    assert start.rolled_back_to == 6
    assert resume_start(None, _checkpoint(6, previous), records, TRAINING, CODECS, 4, patient=True).rolled_back_to == 6


def test_without_a_checkpoint_a_resume_keeps_the_stages_someone_holds_or_starts_over():
    from swarm.coordinator.resume import resume_start

    previous = _plan([["a", "b"], ["c", "d"]])
    partial = _holding(previous.grid, step=9, c={"stage": -1}, d={"stage": -1})
    start = resume_start(previous, None, partial, TRAINING, CODECS, 4, patient=True)
    assert (start.origin, start.committed) == (None, 9)  # stage 1 restarts from the seed (restart_lost_stages)
    nobody = _holding(previous.grid, step=9, **{n: {"stage": -1} for n in "abcd"})
    assert resume_start(previous, None, nobody, TRAINING, CODECS, 4, patient=True) is None
    over = resume_start(previous, None, nobody, TRAINING, CODECS, 4, patient=False)
    assert (over.origin, over.start_step, over.rolled_back_to) == (SourceKind.INIT, 1, 0)


def test_a_re_split_plan_fetches_moved_layers_from_the_old_stages_holders():
    from swarm.coordinator.planning import plan_sources

    previous = PlanRecord.from_wire({**_plan([["s0"], ["f0"]]).to_wire(), "layers": [1, 3]})
    holders = stage_holders(previous, _holding(previous.grid), 4, 3, live={"s0", "f0", "f1"})
    sources, resplit = plan_sources([["f1"], ["f0"]], [2, 2], previous, holders, origin=None)
    assert sources == {"f1": StateSource(SourceKind.LAYERS), "f0": StateSource(SourceKind.LAYERS)}
    assert resplit.layers == [1, 3] and resplit.holders == [["s0"], ["f0"]] and resplit.donors() == ["f0", "s0"]
    kept, _ = plan_sources([["s0"], ["f0"]], [1, 3], previous, holders, origin=None)
    assert kept == {"s0": KEEP, "f0": KEEP}  # the same split: no re-split
    four = PlanRecord.from_wire({**_plan([["a"], ["b"], ["c"]]).to_wire(), "layers": [2, 1, 1]})
    holding = stage_holders(four, _holding(four.grid), 4, 3, live=set("abc"))
    moved, _ = plan_sources([["a"], ["b"], ["c"]], [2, 1, 1], four, holding, origin=None)
    assert set(moved.values()) == {KEEP}
    partly, _ = plan_sources([["a"], ["b"], ["c"]], [1, 2, 1], four, holding, origin=None)
    assert partly == {"a": StateSource(SourceKind.LAYERS), "b": StateSource(SourceKind.LAYERS), "c": KEEP}
    holding.names[1] = []
    with pytest.raises(ValueError, match="no holder"):
        plan_sources([["a"], ["b"], ["c"]], [1, 2, 1], four, holding, origin=None)


def test_a_re_split_is_proposed_only_for_a_clearly_shorter_predicted_step():
    from swarm.coordinator.planning import resplit

    previous = PlanRecord.from_wire({**_plan([["s0"], ["f0"]], batch=8).to_wire(), "layers": [1, 3]})
    slow = _records(["s0", "f0", "f1"], slow=["s0"])
    placement = resplit(previous, slow, TRAINING, CODECS)
    assert placement is not None and placement.reason.change is PlanChange.RESPLIT
    assert placement.layers == [2, 2] and sorted(n for row in placement.grid for n in row) == ["f0", "f1"]
    assert resplit(PlanRecord.from_wire({**previous.to_wire(), "layers": [2, 2]}), _records(["s0", "f0"]),
                   TRAINING, CODECS) is None  # already balanced: nothing to gain


def test_peers_are_not_moved_onto_links_only_because_nobody_measured_them():
    from swarm.coordinator.planning import resplit

    # a 2 x 2 grid on one LAN whose peers measured only the links the plan gave them, on a busy machine
    # (0.05 Gbit/s); the other pairs were never probed, and are no faster for that
    plan = _plan([["a", "b"], ["c", "d"]])
    neighbours = {"a": "bc", "b": "ad", "c": "ad", "d": "bc"}
    records = {n: PeerRecord(name=n, address="tcp://127.0.0.1:1", device="cpu", tflops=0.1, memory_gb=4.0,
                             links={m: Link(bandwidth_gbps=0.05, latency_ms=2.0) for m in neighbours[n]})
               for n in "abcd"}
    network = scenario_from_records(records, TRAINING, CODECS, 2, 2)
    assert network.network.bandwidth(network.index["a"], network.index["d"]) == pytest.approx(0.05e9 / 8)
    assert resplit(plan, records, TRAINING, CODECS) is None


def test_a_state_transfer_from_a_donor_outside_the_grid_gets_a_deadline_for_that_donors_link():
    from models import get_config, stage_parameters
    from swarm.coordinator.planning import transfers
    from swarm.coordinator.timeouts import STATE_BYTES_PER_PARAMETER, plan_timeouts

    # the cascade test's plan 4: a1 takes y's cell and loads stage 1 from y, now standby behind 2 Mbit/s
    records = _records(["a0", "a1", "y"])
    records["y"].links = {"a0": Link(bandwidth_gbps=0.002, latency_ms=5.0), "a1": Link(0.002, 5.0)}
    placement = Placement([["a0"], ["a1"]], [2, 2], ["y"], _reason())
    sources = {"a0": KEEP, "a1": StateSource(SourceKind.PEER, "y")}
    assert transfers(sources, None) == [("a1", "y")]
    lan = plan_timeouts(placement, records, TRAINING, CODECS)
    moving = plan_timeouts(placement, records, TRAINING, CODECS, transfers(sources, None))
    state_bytes = STATE_BYTES_PER_PARAMETER * max(stage_parameters(get_config("tiny"), [2, 2], s) for s in (0, 1))
    assert lan.state_s < state_bytes * 8 / 0.002e9  # the LAN's deadline would cut the transfer off
    assert moving.state_s == pytest.approx(moving.message_s + 2 * (0.005 + state_bytes * 8 / 0.002e9))
    assert (moving.message_s, moving.commit_s) == (lan.message_s, lan.commit_s)  # only the transfer waits longer
