"""The volunteer daemon (`swarm-peer join`) and the control-plane pieces the coordinator shares.

    PeerDaemon(PeerOptions(initial_peers=(maddr,), name="p1")).run(stop_event)
"""
from .peer import PeerDaemon, PeerOptions, UnreachableError
from .records import COORDINATOR_NAME, CoordinatorPin, publish_coordinator, read_peers, write_peer
from .stage_state import StageState, pack_state, unpack_state
from .timeouts import derive_timeouts

__all__ = [
    "PeerDaemon", "PeerOptions", "UnreachableError",
    "CoordinatorPin", "COORDINATOR_NAME", "publish_coordinator", "read_peers", "write_peer",
    "StageState", "pack_state", "unpack_state", "derive_timeouts",
]
