"""The build cache: every downloaded or built artefact, keyed by its recipe.

Layout under `${VFNIC_CACHE:-~/.cache/vfnic}`::

    KIND/HASH/          a finished artefact (only ever appears by rename)
    KIND/.HASH.tmp-PID  an artefact being built by process PID
    KIND/.HASH.lock     serialises builders of the same artefact
    downloads/...       package caches shared by all builds

An artefact's HASH covers its recipe (a JSON-able value: package lists,
suite, the hashes of the files it copies in), so a changed recipe builds a new
artefact next to the old one instead of patching it. A finished artefact is
renamed into place only after its builder returns, so an interrupted build
leaves a `.tmp` directory that the next build of that recipe removes, never a
half artefact that looks done.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("vfnic.images")


def cache_root() -> Path:
    return Path(os.environ.get("VFNIC_CACHE") or Path.home() / ".cache" / "vfnic")


def recipe_hash(recipe: object) -> str:
    """A short stable hash of a JSON-able recipe (dict key order ignored)."""
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_hash(root: Path) -> str:
    """Hash of a directory tree: relative paths, modes, link targets and file
    contents, so a rebuilt modules tree with the same bytes hashes the same."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            entry = f"L {relative} {os.readlink(path)}"
        elif path.is_file():
            entry = f"F {relative} {path.stat().st_mode:o} {file_hash(path)}"
        else:
            entry = f"D {relative}"
        digest.update(entry.encode() + b"\0")
    return digest.hexdigest()


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def build_once(kind: str, recipe: object, builder: Callable[[Path], None]) -> Path:
    """Return the directory of the artefact made from `recipe`, building it
    with `builder(tmp_dir)` first if no finished one exists.

    Concurrent callers (two test sessions) wait for each other on a lock
    file instead of building twice.
    """
    key = recipe_hash(recipe)
    kind_dir = cache_root() / kind
    final = kind_dir / key
    if final.is_dir():
        return final
    with _exclusive(kind_dir / f".{key}.lock"):
        if final.is_dir():
            return final
        for stale in kind_dir.glob(f".{key}.tmp-*"):
            log.info("%s: removing %s left by an interrupted build", kind, stale.name)
            _remove_tree(stale)
        work = kind_dir / f".{key}.tmp-{os.getpid()}"
        work.mkdir(parents=True)
        (work / "recipe.json").write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
        try:
            builder(work)
        except BaseException:
            _remove_tree(work)
            raise
        os.rename(work, final)
    return final


def downloads_dir(name: str) -> Path:
    """A persistent download cache shared by builds (never part of a recipe)."""
    path = cache_root() / "downloads" / name
    path.mkdir(parents=True, exist_ok=True)
    return path
