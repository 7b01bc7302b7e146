"""The bring-up loop of issue 16, timed: rebuild hfi1 after touching one
.c file, then `vfnic up --module hfi1.ko` (two guests, opafm) to both ports
Active. The issue's target for the loop is 60 s on this 2-core machine
after the first build.

    python -m benchmarks.bringup [--keep]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from images.lab.up import Up, UpOptions, check_options
from images.provision.kernel_matrix import build_guest_image
from images.provision.module_build import hfi1_source, timed_build_and_rebuild

TARGET_SECONDS = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/bringup", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the build directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vfnic-bringup-"))
    release = build_guest_image("trixie").kernel_version
    source = hfi1_source(work / "hfi1")
    module, first, rebuild = timed_build_and_rebuild(source, "hfi1", release)
    options = UpOptions(name="bringup", modules=(str(module),), logs=str(work / "logs"))
    check_options(options)
    up = Up(options, say=lambda *a, **k: None)
    started = time.monotonic()
    try:
        up.claim()
        up.start()
        to_active = time.monotonic() - started
    finally:
        up.close()
    loop = rebuild + to_active
    print(f"hfi1 out of tree against {release}: first build {first:.1f} s; "
          f"rebuild after touching init.c {rebuild:.1f} s")
    print(f"vfnic up --module hfi1.ko, two guests, to both ports Active: {to_active:.1f} s")
    print(f"the loop (rebuild + up to Active): {loop:.1f} s; target {TARGET_SECONDS:.0f} s: "
          f"{'met' if loop <= TARGET_SECONDS else 'not met'}")
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
