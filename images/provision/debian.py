"""Debian packages for the build, fetched without touching the host's apt.

The host is bookworm; the guest wants trixie and the host QEMU comes from sid.
`PrivateApt` runs the host's own `apt-get` with every directory it reads or
writes redirected into the cache (sources list, lists, package cache, dpkg
status), so resolving and downloading for another suite changes nothing on the
host. The mirror is the one the host already uses (read from its apt
configuration) unless `VFNIC_DEBIAN_MIRROR` names another, and signatures are
checked against the host's `debian-archive-keyring`, which knows the trixie
keys that also sign sid.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from images.provision.cache import build_once, cache_root, downloads_dir

log = logging.getLogger("vfnic.images")

ARCHIVE_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")
APT_SOURCES_LIST = Path("/etc/apt/sources.list")


class ProvisionError(RuntimeError):
    """Provisioning failed in a way the user can act on; the message says how."""


def run_logged(argv: list[str], what: str, hint: str = "", **kwargs) -> str:
    """Run a build step, returning its stdout; on failure raise a
    ProvisionError that names the step and carries the tail of its output."""
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", **kwargs)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-25:])
        advice = f"\n{hint}" if hint else ""
        raise ProvisionError(f"{what} failed (exit {result.returncode}):\n{tail}{advice}")
    return result.stdout


def _mirrors_in_deb822(text: str) -> list[tuple[str, str]]:
    """(URI, suites) pairs from deb822 `.sources` stanzas of type deb."""
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
        if "deb" in fields.get("Types", "").split() and fields.get("URIs"):
            found.append((fields["URIs"].split()[0], fields.get("Suites", "")))
    return found


def _mirrors_in_one_line_format(text: str) -> list[tuple[str, str]]:
    found = []
    for line in text.splitlines():
        match = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def host_mirror_candidates() -> list[tuple[str, str]]:
    candidates = []
    for path in sorted(APT_SOURCES_DIR.glob("*.sources")):
        candidates += _mirrors_in_deb822(path.read_text())
    for path in [APT_SOURCES_LIST, *sorted(APT_SOURCES_DIR.glob("*.list"))]:
        if path.is_file():
            candidates += _mirrors_in_one_line_format(path.read_text())
    return candidates


def debian_mirror() -> str:
    """The Debian archive URL to use: `VFNIC_DEBIAN_MIRROR`, else the host's
    main (non-security) archive from its apt sources."""
    override = os.environ.get("VFNIC_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    for uri, suites in host_mirror_candidates():
        if "security" not in suites and "security" not in uri:
            return uri.rstrip("/")
    raise ProvisionError(
        f"cannot find a Debian mirror in {APT_SOURCES_DIR}/*.sources or {APT_SOURCES_LIST}; "
        "set VFNIC_DEBIAN_MIRROR to the URL of a Debian archive")


def deb_filename(name: str, version: str, arch: str) -> str:
    """The file name apt gives a downloaded package (epoch colon escaped)."""
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


@dataclass(frozen=True)
class ResolvedPackage:
    name: str
    version: str
    arch: str

    @property
    def filename(self) -> str:
        return deb_filename(self.name, self.version, self.arch)


class PrivateApt:
    """`apt-get` for one Debian suite with all of its state in the cache.

    The dpkg status file is empty, so resolving a package yields its whole
    dependency closure: exactly what extracting it into an empty root needs.
    """

    def __init__(self, suite: str, mirror: str | None = None):
        self.suite = suite
        self.mirror = mirror or debian_mirror()
        self.state = cache_root() / "apt" / suite
        self.archives = downloads_dir(f"debs-{suite}")
        self._updated = False

    def _options(self) -> list[str]:
        state = self.state
        settings = {
            "Dir::Etc::SourceList": state / "sources.list",
            "Dir::Etc::SourceParts": state / "empty",
            "Dir::Etc::Preferences": state / "empty" / "preferences",
            "Dir::Etc::PreferencesParts": state / "empty",
            "Dir::Etc::Parts": state / "empty",
            "Dir::State": state / "state",
            "Dir::State::status": state / "status",
            "Dir::Cache": state / "cache",
            "Dir::Cache::archives": self.archives,
            # Mirrors that serve a frozen snapshot let sid's Valid-Until lapse.
            "Acquire::Check-Valid-Until": "false",
            "APT::Install-Recommends": "false",
            "APT::Architecture": "amd64",
            "Debug::NoLocking": "true",
        }
        return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]

    def apt_get(self, *args: str, what: str, cwd: Path | None = None) -> str:
        return run_logged(["apt-get", "-q", *self._options(), *args], what, cwd=cwd,
                          hint=f"(mirror {self.mirror}, suite {self.suite}; set "
                               "VFNIC_DEBIAN_MIRROR if the host's mirror is not reachable)")

    def update(self) -> None:
        if self._updated:
            return
        if not ARCHIVE_KEYRING.is_file():
            raise ProvisionError(f"{ARCHIVE_KEYRING} is missing; it is needed to check "
                                 "Debian's signatures (package debian-archive-keyring)")
        for sub in ("empty", "state/lists/partial", "cache/archives/partial"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        (self.archives / "partial").mkdir(exist_ok=True)
        (self.state / "status").touch()
        (self.state / "sources.list").write_text(
            f"deb [signed-by={ARCHIVE_KEYRING}] {self.mirror} {self.suite} main\n")
        log.info("apt: fetching the %s package index from %s", self.suite, self.mirror)
        self.apt_get("update", "--error-on=any", what=f"fetching the {self.suite} package index")
        self._updated = True

    def resolve(self, packages: list[str]) -> list[ResolvedPackage]:
        """The dependency closure of `packages` as apt would install it into
        an empty system (no recommends)."""
        self.update()
        simulated = self.apt_get("install", "-s", *packages,
                                 what=f"resolving {' '.join(packages)} in {self.suite}")
        found = re.findall(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)", simulated, re.M)
        return [ResolvedPackage(name, version, arch) for name, version, arch in found]

    def download(self, packages: list[str]) -> list[tuple[ResolvedPackage, Path]]:
        """Resolve and download the closure; return each package with its file."""
        resolved = self.resolve(packages)
        missing = [p for p in resolved if not (self.archives / p.filename).is_file()]
        if missing:
            log.info("apt: downloading %d %s packages", len(missing), self.suite)
            pins = [f"{p.name}={p.version}" for p in missing]
            self.apt_get("install", "--download-only", "-y", "--allow-downgrades", *pins,
                         what=f"downloading {len(missing)} packages from {self.suite}")
        return [(p, self.archives / p.filename) for p in resolved]


def extract_debs(debs: list[Path], root: Path) -> None:
    """Unpack packages into `root` without running their maintainer scripts."""
    root.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        run_logged(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")


def relativize_absolute_symlinks(root: Path) -> None:
    """Make absolute symlinks inside an unpacked root point inside it.

    Packages link e.g. firmware into place with absolute targets, which would
    resolve against the host's /usr once the root is not `/`.
    """
    for path in root.rglob("*"):
        if path.is_symlink():
            target = os.readlink(path)
            if target.startswith("/"):
                inside = root / target.lstrip("/")
                path.unlink()
                path.symlink_to(os.path.relpath(inside, path.parent))


def provision_unpacked(kind: str, suite: str, packages: list[str], layout: int,
                       check: Callable[[Path], dict]) -> Path:
    """The root of `packages` and their dependency closure from `suite`,
    unpacked into the cache on first use (the QEMU, tshark): no maintainer
    script runs and absolute symlinks point inside the root, so its program
    runs through the root's own loader. `check(root)` proves it runs and
    returns what the build's manifest.json says of it beside the package
    versions. Bump `layout` when the unpacked layout or its fix-ups change."""
    def build(work: Path) -> None:
        downloaded = PrivateApt(suite).download(packages)
        root = work / "root"
        log.info("%s: unpacking %d %s packages", kind, len(downloaded), suite)
        extract_debs([path for _, path in downloaded], root)
        relativize_absolute_symlinks(root)
        manifest = {"suite": suite, **check(root),
                    "packages": {package.name: package.version for package, _ in downloaded}}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    return build_once(kind, {"suite": suite, "packages": packages, "layout": layout}, build) / "root"


def fetch_debootstrap(suite: str = "trixie") -> Path:
    """A debootstrap that knows `suite`, unpacked into the cache; returns the
    root it was unpacked into (run ROOT/usr/sbin/debootstrap with
    DEBOOTSTRAP_DIR=ROOT/usr/share/debootstrap)."""
    apt = PrivateApt(suite)
    package = next(p for p in apt.resolve(["debootstrap"]) if p.name == "debootstrap")

    def unpack(work: Path) -> None:
        apt.apt_get("download", f"debootstrap={package.version}", cwd=apt.archives,
                    what="downloading debootstrap")
        extract_debs([apt.archives / package.filename], work / "root")

    recipe = {"package": package.name, "version": package.version}
    return build_once("tools", recipe, unpack) / "root"
