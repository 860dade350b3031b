"""Curve key pairs on disk and the admission registry (no sockets: see test_zmq_security for those)."""
from __future__ import annotations

import json
import logging
import stat
import threading

import pytest
import zmq

from peers.security import Admission, CurveKeys, check_curve_key, load_or_create_keys


def test_generated_keys_are_z85_pairs_and_the_secret_stays_out_of_the_repr():
    keys = CurveKeys.generate()
    assert len(keys.public) == len(keys.secret) == 40
    assert zmq.curve_public(keys.secret.encode()).decode() == keys.public
    assert keys.secret not in repr(keys) and keys.public in repr(keys)
    with pytest.raises(ValueError, match="does not belong"):
        CurveKeys(CurveKeys.generate().public, keys.secret)
    for bad in ("short", "~" * 40, "#" * 40, None):
        with pytest.raises(ValueError, match="z85-encoded curve key of 40"):
            check_curve_key(bad)


def test_a_key_file_is_created_once_with_mode_0600_and_then_reused(tmp_path):
    path = tmp_path / "keys" / "peer.key"
    keys = load_or_create_keys(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"public": keys.public, "secret": keys.secret}
    assert load_or_create_keys(path) == keys
    assert [p.name for p in path.parent.iterdir()] == ["peer.key"]  # no temporary file left behind


def test_concurrent_creators_end_up_with_the_same_key_pair(tmp_path):
    path = tmp_path / "swarm.key"
    results: list[CurveKeys] = []
    threads = [threading.Thread(target=lambda: results.append(load_or_create_keys(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1


def test_a_malformed_key_file_is_named_and_never_overwritten(tmp_path):
    path = tmp_path / "swarm.key"
    for text in ("not json", json.dumps({"public": "x"}), json.dumps({"public": "a" * 40, "secret": "b" * 40}),
                 json.dumps(["list"])):
        path.write_text(text)
        with pytest.raises(ValueError, match=str(path)):
            load_or_create_keys(path)
        assert path.read_text() == text


def test_a_key_file_others_can_read_is_used_with_a_warning(tmp_path, caplog):
    path = tmp_path / "swarm.key"
    keys = load_or_create_keys(path)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="peers.security"):
        assert load_or_create_keys(path) == keys
    assert "chmod 600" in caplog.text


def test_admission_binds_names_and_keys_one_to_one():
    k1, k2, k3 = (CurveKeys.generate().public for _ in range(3))
    admission = Admission({"p1": k1, "p2": k2})
    assert (admission.name_of(k1), admission.key_of("p2"), k1 in admission, k3 in admission) == ("p1", k2, True, False)
    admission.admit("p3", k1)  # the key moves: p1 no longer has it
    assert (admission.name_of(k1), admission.key_of("p1")) == ("p3", None)
    admission.admit("p2", k3)  # a new key for p2: its old key is out
    assert (admission.name_of(k2), admission.name_of(k3), len(admission)) == (None, "p2", 2)
    admission.revoke("p2")
    assert admission.snapshot() == {"p3": k1}
    admission.update({"q": k2})
    assert (admission.snapshot(), k1 in admission) == ({"q": k2}, False)


def test_admission_refuses_a_key_under_two_names_and_a_malformed_key():
    key = CurveKeys.generate().public
    admission = Admission({"p1": key})
    with pytest.raises(ValueError, match="same curve key"):
        admission.update({"a": key, "b": key})
    with pytest.raises(ValueError, match="curve key of 'x'"):
        admission.admit("x", "not a key")
    assert admission.snapshot() == {"p1": key}  # a refused update changes nothing
