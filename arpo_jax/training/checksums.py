"""Checksum manifests of checkpoint step directories: write once a step is final, verify on restore.

A manifest (``arpo_checksums.json`` in the step directory) lists every other file of the step
(path relative to the step directory, size, sha256) and a digest of that list, so a damaged
manifest is told apart from a damaged data file. It is written to a temporary name and renamed,
as the last file of the step; a step without one was never sealed (see ``checkpoint.py``).

Paths may be local or anything ``etils.epath`` opens (``gs://...``). Files are hashed on a
small thread pool (hashlib releases the GIL): about 1.7 GB/s per core with SHA-NI.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from typing import Iterable

from etils import epath

MANIFEST = "arpo_checksums.json"
_TMP = MANIFEST + ".tmp"
FORMAT = "arpo_jax checkpoint checksums v1"
_CHUNK = 8 << 20


def _workers() -> int:
    """Hashing threads: up to 8, no more than the cores."""
    return max(1, min(8, os.cpu_count() or 1))


def list_files(step_dir: str | os.PathLike) -> list[str]:
    """Every file under ``step_dir`` (relative posix paths, sorted), the manifest excepted."""
    root = epath.Path(step_dir)
    out: list[str] = []

    def walk(d: epath.Path, prefix: str) -> None:
        for p in d.iterdir():
            rel = prefix + p.name
            if p.is_dir():
                walk(p, rel + "/")
            elif rel not in (MANIFEST, _TMP):
                out.append(rel)

    walk(root, "")
    return sorted(out)


def hash_file(path: str | os.PathLike) -> tuple[int, str]:
    """(size in bytes, sha256 hex digest) of one file, read in 8 MiB chunks."""
    h, size = hashlib.sha256(), 0
    with epath.Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _hash_all(step_dir: epath.Path, rels: Iterable[str]) -> dict[str, tuple[int, str] | OSError]:
    """``hash_file`` of each relative path, in parallel; a file that cannot be read maps to its error."""
    def one(rel):
        try:
            return hash_file(step_dir / rel)
        except OSError as e:
            return e

    rels = list(rels)
    with concurrent.futures.ThreadPoolExecutor(min(_workers(), max(1, len(rels)))) as pool:
        return dict(zip(rels, pool.map(one, rels)))


def _digest(files: dict) -> str:
    """sha256 of the canonical JSON of the file list (detects a damaged manifest)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(step_dir: str | os.PathLike, step: int) -> dict:
    """Hashes every file of ``step_dir`` and writes the manifest atomically (tmp + rename)."""
    root = epath.Path(step_dir)
    files = {}
    for rel, got in _hash_all(root, list_files(root)).items():
        if isinstance(got, OSError):
            raise got
        files[rel] = {"size": got[0], "sha256": got[1]}
    manifest = {"format": FORMAT, "step": int(step), "algorithm": "sha256", "files": files,
                "digest": _digest(files)}
    tmp = root / _TMP
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(root / MANIFEST)
    return manifest


def has_manifest(step_dir: str | os.PathLike) -> bool:
    """Whether ``step_dir`` was sealed (holds a manifest, intact or not)."""
    return (epath.Path(step_dir) / MANIFEST).exists()


def read_manifest(step_dir: str | os.PathLike, step: int) -> dict[str, dict]:
    """The manifest's file list; raises ``ValueError`` (one line, naming the cause) when it is
    unreadable, damaged or written for another step."""
    try:
        manifest = json.loads((epath.Path(step_dir) / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{MANIFEST}: unreadable ({type(e).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{MANIFEST}: not a checksum manifest of this format (damaged?)")
    files = manifest.get("files")
    if not isinstance(files, dict) or manifest.get("digest") != _digest(files):
        raise ValueError(f"{MANIFEST}: digest mismatch (the manifest itself is damaged)")
    if manifest.get("step") != int(step):
        raise ValueError(f"{MANIFEST}: written for step {manifest.get('step')}")
    return files


def _check_one(rel: str, want: dict, got: tuple[int, str] | OSError) -> str | None:
    """The problem with one listed file, or None when it matches."""
    if isinstance(got, FileNotFoundError):
        return f"{rel}: missing"
    if isinstance(got, OSError):
        return f"{rel}: unreadable ({type(got).__name__}: {got.strerror or got})"
    if got[0] != want.get("size"):
        return f"{rel}: size {got[0]} bytes, expected {want.get('size')}"
    if got[1] != want.get("sha256"):
        return f"{rel}: sha256 mismatch"
    return None


def verify(step_dir: str | os.PathLike, step: int, part: tuple[int, int] = (0, 1)) -> list[str]:
    """Problems found in ``step_dir`` against its manifest (empty: intact), one line each.

    Every caller checks the file list (missing and extra files); file contents are hashed only
    for the part ``part = (i, n)`` of the sorted listed files (i::n), so n processes can share
    the reading. Raises nothing: an unreadable manifest is a problem like any other.
    """
    root = epath.Path(step_dir)
    try:
        files = read_manifest(root, step)
    except ValueError as e:
        return [str(e)]
    try:
        present = set(list_files(root))
    except OSError as e:
        return [f"step directory unreadable ({type(e).__name__}: {e.strerror or e})"]
    problems = [f"{rel}: not in the checksum manifest (extra file)" for rel in sorted(present - set(files))]
    problems += [f"{rel}: missing" for rel in sorted(set(files) - present)]
    i, n = part
    mine = [rel for k, rel in enumerate(sorted(files)) if k % n == i and rel in present]
    for rel, got in _hash_all(root, mine).items():
        problem = _check_one(rel, files[rel], got)
        if problem:
            problems.append(problem)
    return problems
