"""The control-plane protocol a volunteer speaks: DHT keys, typed records, their validation.

`records` holds the three DHT records, `training` what every peer of a run agrees on (spec,
codecs, timeouts), `changes` why a plan looks as it does (state sources, reasons), `validation`
the one mechanism that checks them all (msgspec Structs). Nothing here imports torch.
"""
from .admission import Admitted, JoinToken, admission_proof, check_proof, owner_fingerprint, read_allowed_keys
from .changes import Departure, PlanChange, PlanReason, Resplit, SourceKind, StateSource
from .records import (
    CONTROL_KEY,
    PEER_STATES,
    PEERS_KEY,
    PLAN_KEY,
    ControlRecord,
    Link,
    PeerRecord,
    PeerState,
    PlanRecord,
    StepBreakdown,
    peer_subkey,
    subkey_name,
    subkey_owner,
)
from .training import BUCKET_VALUES, CHANNELS, CODEC_FLAGS, DTYPES, Codecs, ComputeDtype, Timeouts, TrainingSpec
from .validation import RecordError, from_builtins, to_builtins, validated

__all__ = [
    "PEERS_KEY", "PLAN_KEY", "CONTROL_KEY", "PEER_STATES", "PeerState", "CHANNELS", "CODEC_FLAGS", "DTYPES",
    "BUCKET_VALUES",
    "ComputeDtype",
    "RecordError", "PeerRecord", "PlanRecord", "ControlRecord", "Link", "StepBreakdown", "Codecs", "Timeouts",
    "TrainingSpec",
    "SourceKind", "StateSource", "Departure", "PlanChange", "PlanReason", "Resplit",
    "Admitted", "JoinToken", "admission_proof", "check_proof", "owner_fingerprint", "read_allowed_keys",
    "peer_subkey", "subkey_name", "subkey_owner", "from_builtins", "to_builtins", "validated",
]
