"""Join tokens, admission proofs and allowlists: the pure rules of who may join a swarm."""
from __future__ import annotations

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from peers.protocol import (
    Admitted,
    ControlRecord,
    JoinToken,
    RecordError,
    admission_proof,
    check_proof,
    owner_fingerprint,
    read_allowed_keys,
)


def _keys() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def _token() -> JoinToken:
    public, secret = _keys()
    return JoinToken.issue(secret, public, owner_fingerprint(b"[owner:coordinator-key]"))


def test_a_token_survives_printing_and_is_the_same_for_the_same_swarm_key():
    public, secret = _keys()
    owner = owner_fingerprint(b"[owner:ssh-rsa AAAA]")
    token = JoinToken.issue(secret, public, owner)
    assert JoinToken.parse(token.encode()) == token
    assert JoinToken.parse("  " + token.encode() + "\n") == token
    assert JoinToken.issue(secret, public, owner) == token  # a resumed coordinator prints the same token
    assert JoinToken.issue(_keys()[1], public, owner).secret != token.secret


def test_a_proof_admits_exactly_its_name_key_and_owner():
    token = _token()
    key, other_key = _keys()[0], _keys()[0]
    owner, other_owner = "a" * 32, "b" * 32
    proof = admission_proof(token, "p1", key, owner)
    assert check_proof(token, "p1", key, owner, proof)
    assert not check_proof(token, "p2", key, owner, proof)
    assert not check_proof(token, "p1", other_key, owner, proof)  # a copied proof is useless for another key
    assert not check_proof(token, "p1", key, other_owner, proof)
    assert not check_proof(_token(), "p1", key, owner, proof)  # another swarm's token


@pytest.mark.parametrize("text, message", [
    ("", "must start with"),
    ("swarm1-!!!", "not valid base64"),
    ("swarm1-AAAA", "bytes, expected"),
])
def test_bad_tokens_say_where_to_find_the_right_one(text, message):
    with pytest.raises(ValueError, match=message) as error:
        JoinToken.parse(text)
    assert "coordinator.json" in str(error.value)


@given(st.text(max_size=120))
def test_parsing_any_text_gives_a_token_or_a_value_error(text):
    try:
        JoinToken.parse(text)
    except ValueError:
        pass


def test_allow_keys_files_name_the_bad_line(tmp_path):
    key = "#" + _keys()[0][1:]  # '#' is a z85 character, not only a comment
    assert read_allowed_keys(f"{key}\n", "allow.txt") == {key}
    key = _keys()[0]
    assert read_allowed_keys(f"# mine\n\n{key}  # laptop\n", "allow.txt") == {key}
    with pytest.raises(ValueError, match=r"allow.txt, line 2: 'not-a-key'"):
        read_allowed_keys(f"{key}\nnot-a-key\n", "allow.txt")


def test_control_records_carry_admitted_peers_and_refuse_bad_keys():
    key = _keys()[0]
    control = ControlRecord(plan_version=1, committed_step=0, committed_version=0, total_steps=5, curve_key=key,
                            admitted={"p1": Admitted(key, "c" * 32), "p2": Admitted("", "d" * 32)})
    assert ControlRecord.from_wire(control.to_wire()) == control
    with pytest.raises(RecordError, match="admitted.p1.key"):
        ControlRecord.from_wire({**control.to_wire(), "admitted": {"p1": {"key": "short", "owner": "c" * 32}}})
