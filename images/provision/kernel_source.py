"""Files from Debian's kernel source package, fetched into the cache.

Tests that check generated code against the kernel it came from (the hfi1 CSR
table) need a few headers of the source, not a kernel tree: the package is
downloaded once, the named files are taken from its tarball, and only they are
kept (in the cache, under `kernel-source/<hash>/`).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .cache import build_once
from .debian import PrivateApt, extract_debs, run_logged

log = logging.getLogger(__name__)

SOURCE_PACKAGE = "linux-source-6.12"


def kernel_source_files(members: list[str], suite: str = "trixie", package: str = SOURCE_PACKAGE) -> Path:
    """A directory holding `members` (paths inside the kernel tree, e.g.
    "drivers/infiniband/hw/hfi1/chip_registers.h") from `package` in `suite`."""
    apt = PrivateApt(suite)
    resolved = next(p for p in apt.resolve([package]) if p.name == package)

    def take(work: Path) -> None:
        apt.apt_get("download", f"{package}={resolved.version}", cwd=apt.archives,
                    what=f"downloading {package}")
        unpacked = work / "deb"
        extract_debs([apt.archives / resolved.filename], unpacked)
        tarball = unpacked / "usr" / "src" / f"{package}.tar.xz"
        log.info("kernel source: taking %d files from %s", len(members), tarball.name)
        run_logged(["tar", "-xJf", str(tarball), "-C", str(work), "--strip-components=1",
                    *(f"{package}/{m}" for m in members)], f"unpacking {len(members)} files of {package}")
        shutil.rmtree(unpacked)

    recipe = {"package": package, "version": resolved.version, "members": sorted(members)}
    return build_once("kernel-source", recipe, take)
