"""hack/images.py's pure parts: content tags, the apt sources it reads, ldd's output, and the
docker-archives it writes by hand."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path, PurePosixPath

import pytest

import images

DEB822 = """\
Types: deb
# a comment
URIs: http://mirror.example/debian http://other.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_apt_mirror_is_the_first_uri_of_the_stanza_serving_the_suite() -> None:
    assert images.apt_mirror(DEB822) == "http://mirror.example/debian"
    assert images.apt_mirror(DEB822, "bookworm-security") == "http://mirror.example/debian-security"
    assert images.apt_mirror(DEB822, "trixie") is None
    assert images.apt_mirror(DEB822.replace("Types: deb\n", "Types: deb-src\n", 1)) is None


def test_build_by_products_do_not_count() -> None:
    assert images.excluded(PurePosixPath("operator/switchyard/__pycache__/cli.cpython-311.pyc"))
    assert images.excluded(PurePosixPath("operator/switchyard.egg-info/PKG-INFO"))
    assert not images.excluded(PurePosixPath("operator/switchyard/cli.py"))


def _tree(root: Path) -> None:
    for name in images.OPERATOR_INPUTS:
        (root / name).write_text(name)
    (root / "operator" / "switchyard").mkdir(parents=True)
    (root / "operator" / "switchyard" / "cli.py").write_text("print()\n")


def test_operator_tag_follows_the_sources_and_ignores_bytecode(tmp_path: Path) -> None:
    _tree(tmp_path)
    tag = images.operator_tag(tmp_path)
    assert len(tag) == 12
    cache = tmp_path / "operator" / "switchyard" / "__pycache__"
    cache.mkdir()
    (cache / "cli.cpython-311.pyc").write_bytes(b"\0")
    assert images.operator_tag(tmp_path) == tag
    (tmp_path / "operator" / "switchyard" / "cli.py").write_text("print(1)\n")
    assert images.operator_tag(tmp_path) != tag


def test_ldd_paths_are_the_libraries_and_the_loader() -> None:
    output = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibtinfo.so.6 => /lib/x86_64-linux-gnu/libtinfo.so.6 (0x00007f9c)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f9b)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f9d)
"""
    assert images.ldd_paths(output) == [
        "/lib/x86_64-linux-gnu/libtinfo.so.6",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]
    with pytest.raises(RuntimeError, match="not found"):
        images.ldd_paths("\tlibgone.so.1 => not found\n")


def test_archive_path_is_named_after_the_reference() -> None:
    path = images.archive_path("localhost/switchyard-envoy:v1.40.0-abc")
    assert path == images.IMAGES_DIR / "switchyard-envoy-v1.40.0-abc.tar"


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {
            member.name: tar.extractfile(member).read()  # type: ignore[union-attr]
            for member in tar.getmembers()
            if member.isfile()
        }


def test_files_image_is_a_deterministic_docker_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "IMAGES_DIR", tmp_path / "images")
    tool = tmp_path / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    tool.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(tool)
    files: dict[str, Path | bytes] = {"/usr/bin/tool": link, "/etc/motd": b"hello\n"}

    image = images.files_image("localhost/x:1", files, ["/usr/bin/tool"], user="7:7")
    first = image.archive.read_bytes()
    assert images.files_image("localhost/x:1", files, ["/usr/bin/tool"], user="7:7") == image
    assert image.archive.read_bytes() == first

    members = _members(image.archive)
    [manifest] = json.loads(members["manifest.json"])
    assert manifest["RepoTags"] == ["localhost/x:1"]
    config = json.loads(members[manifest["Config"]])
    assert config["config"]["Entrypoint"] == ["/usr/bin/tool"]
    assert config["config"]["User"] == "7:7"
    layer = tmp_path / "layer.tar"
    layer.write_bytes(members[manifest["Layers"][0]])
    assert config["rootfs"]["diff_ids"] == [f"sha256:{images._sha256_file(layer)}"]
    with tarfile.open(layer) as tar:
        entries = {member.name: member for member in tar.getmembers()}
    assert list(entries) == ["etc", "etc/motd", "usr", "usr/bin", "usr/bin/tool"]
    # The symlink became the file, executable and readable by any user.
    assert entries["usr/bin/tool"].isfile()
    assert entries["usr/bin/tool"].mode == 0o755
    assert entries["etc/motd"].mode == 0o644
    assert all(member.mtime == 0 and member.uid == 0 for member in entries.values())


def test_files_digest_changes_with_content_and_modes(tmp_path: Path) -> None:
    digest = images.files_digest({"/a": b"1"})
    assert images.files_digest({"/a": b"1"}) == digest
    assert images.files_digest({"/a": b"2"}) != digest
    assert images.files_digest({"/a": b"1"}, {"/tmp": 0o1777}) != digest


def test_prune_keeps_the_most_recently_used_archives_of_one_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "IMAGES_DIR", tmp_path)
    names = [f"switchyard-{n:012x}.tar" for n in range(5)]
    for age, name in enumerate(names):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (1000 - age, 1000 - age))
    other = tmp_path / "switchyard-envoy-v1.40.0-000000000000.tar"
    other.write_bytes(b"")
    os.utime(other, (1, 1))
    current = images.Image("localhost/switchyard:000000000004", tmp_path / names[4])

    images._prune(current, "[0-9a-f]{12}")

    kept = sorted(path.name for path in tmp_path.iterdir())
    assert kept == sorted([*names[:3], names[4], other.name])
