"""Pickled stage outputs (CHC's fitted topic model) load only when this project signed them."""
from __future__ import annotations

import pickle

import pytest

from gramprompt import signed_pickle
from gramprompt.errors import GramError


class Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_round_trip_and_a_planted_pickle_never_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAMPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(signed_pickle.ENV, raising=False)
    signed_pickle.dump({"a": [1, 2]}, tmp_path / "model.pkl")
    assert signed_pickle.load(tmp_path / "model.pkl") == {"a": [1, 2]}
    assert (tmp_path / "cache" / "signing.key").stat().st_mode & 0o077 == 0  # the owner's alone

    marker = tmp_path / "ran"
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(Planted(marker)))  # an unsigned pickle
    raw = (tmp_path / "model.pkl").read_bytes()  # a signed file whose pickle was swapped
    head = raw[: raw.index(b"\n", len(signed_pickle.MAGIC)) + 1]
    (tmp_path / "swapped.pkl").write_bytes(head + pickle.dumps(Planted(marker)))
    for name in ("plain.pkl", "swapped.pkl"):
        with pytest.raises(GramError, match="not signed"):
            signed_pickle.load(tmp_path / name)
    assert not marker.exists()


def test_another_key_is_refused_and_the_env_key_is_shared(tmp_path, monkeypatch):
    monkeypatch.setenv(signed_pickle.ENV, "ab" * 32)
    signed_pickle.dump([1], tmp_path / "m.pkl")
    monkeypatch.setenv(signed_pickle.ENV, "cd" * 32)  # another machine
    with pytest.raises(GramError, match="GRAMPROMPT_SIGNING_KEY"):
        signed_pickle.load(tmp_path / "m.pkl")
    monkeypatch.setenv(signed_pickle.ENV, "ab" * 32)  # the cluster's shared key
    assert signed_pickle.load(tmp_path / "m.pkl") == [1]
    monkeypatch.setenv(signed_pickle.ENV, "not hex")
    with pytest.raises(GramError, match="hex"):
        signed_pickle.dump([1], tmp_path / "m.pkl")


def test_a_full_disk_leaves_no_empty_key_and_an_empty_key_is_refused(tmp_path, monkeypatch):
    """Reliability probe: a full disk at the first use left a 0-byte signing.key, used as the HMAC key for
    good, so a planted pickle "signed" with the empty key ran on the next load."""
    import errno
    import hashlib
    import hmac
    import os

    monkeypatch.setenv("GRAMPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(signed_pickle.ENV, raising=False)
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        signed_pickle.dump([1], tmp_path / "m.pkl")
    assert not (tmp_path / "cache" / "signing.key").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # no temporary file left either
    monkeypatch.setattr(os, "fsync", real_fsync)

    key = tmp_path / "cache" / "signing.key"
    marker = tmp_path / "ran"
    data = pickle.dumps(Planted(marker))
    forged = signed_pickle.MAGIC + hmac.new(b"", data, hashlib.sha256).hexdigest().encode() + b"\n" + data
    (tmp_path / "forged.pkl").write_bytes(forged)
    for content in ("", "abc", "zz" * 32, "ab" * 8):  # empty, odd, not hex, too short
        key.write_text(content)
        with pytest.raises(GramError, match="empty or malformed"):
            signed_pickle.load(tmp_path / "forged.pkl")
    assert not marker.exists()
    key.unlink()
    signed_pickle.dump([2], tmp_path / "m.pkl")  # a new, whole key
    assert len(bytes.fromhex(key.read_text())) == signed_pickle.KEY_BYTES and signed_pickle.load(tmp_path / "m.pkl") == [2]
