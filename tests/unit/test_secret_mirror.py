"""The local Envoy's copy of the credentials Secret, kept the way a kubelet keeps one."""

from __future__ import annotations

import os
from pathlib import Path

from switchyard.local_envoy import SecretMirror


def test_keys_are_symlinks_through_data_swapped_in_one_rename(tmp_path: Path) -> None:
    mirror = SecretMirror(tmp_path)
    mirror.offer({"a": b"1", "b": b"2"}, now=0.0)
    assert (tmp_path / "..data").is_symlink()
    assert os.readlink(tmp_path / "a") == "..data/a"
    first = (tmp_path / "..data").resolve()
    mirror.offer({"a": b"3"}, now=1.0)
    assert (tmp_path / "a").read_bytes() == b"3"
    assert not (tmp_path / "b").exists()
    assert not first.exists(), "the previous version is removed once swapped out"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("..")) == ["a"]


def test_a_change_is_seen_only_after_the_delay(tmp_path: Path) -> None:
    mirror = SecretMirror(tmp_path, delay=60.0)
    mirror.offer({"a": b"old"}, now=0.0)  # what the Pod started with
    mirror.offer({"a": b"new"}, now=10.0)
    mirror.offer({"a": b"newer"}, now=40.0)
    assert (tmp_path / "a").read_bytes() == b"old"
    mirror.offer({"a": b"newer"}, now=70.0)  # 60 s after the first change was seen
    assert (tmp_path / "a").read_bytes() == b"newer"
