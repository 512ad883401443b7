"""Content-addressed artifact bytes: ``<root>/sha256/<aa>/<digest>/``, verified on every load.

An artifact's digest is the sha256 over the sorted list of ``(relative path,
file sha256)`` of its directory. A put copies into ``<root>/tmp/``, verifies
the copy and moves it into place with one ``os.replace``, so a reader never
sees a half-copied blob.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Set
from pathlib import Path

from modelpress.artifact import sha256_file
from modelpress.errors import ArtifactError


def hash_tree(directory: Path) -> dict[str, str]:
    """Return ``{relative posix path: sha256}`` for every file under ``directory``."""
    files: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            raise ArtifactError(f"artifact {directory} contains a symlink {path}; copy the real file in instead.")
        if path.is_file():
            files[path.relative_to(directory).as_posix()] = sha256_file(path)
    return files


def tree_digest(files: Mapping[str, str]) -> str:
    """Return the content address of an artifact: sha256 over its sorted (path, sha256) list."""
    canonical = json.dumps(sorted(files.items()), separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class BlobStore:
    """Store artifact directories by digest under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Return where the artifact with this digest lives (whether or not it exists)."""
        return self.root / "sha256" / digest[:2] / digest

    def put(self, source: Path, files: Mapping[str, str], digest: str) -> Path:
        """Copy ``source`` into the store unless its digest is there already; return its path."""
        final = self.path(digest)
        if final.is_dir():
            self.verify(final, files, digest)
            return final
        staging = self.root / "tmp" / f"{digest[:12]}-{uuid.uuid4().hex}"
        try:
            shutil.copytree(source, staging, symlinks=False)
            self.verify(staging, files, digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, final)
        except OSError:
            # Another writer moved the same bytes into place first (rename onto a non-empty dir).
            shutil.rmtree(staging, ignore_errors=True)
            if not final.is_dir():
                raise
            self.verify(final, files, digest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    @staticmethod
    def verify(directory: Path, files: Mapping[str, str], digest: str) -> None:
        """Raise :class:`ArtifactError` naming every file that differs from ``files``."""
        found = hash_tree(directory)
        if found != dict(files):
            changed = sorted(name for name in set(found) | set(files) if found.get(name) != files.get(name))
            raise ArtifactError(
                f"stored artifact {digest[:12]} at {directory} fails its sha256 check on {', '.join(changed)}; "
                "the blob store was modified or corrupted. Re-register the artifact from its source."
            )

    def sweep(self, referenced: Set[str], *, dry_run: bool, temp_age_s: float) -> tuple[list[str], list[str], int]:
        """Remove blobs not in ``referenced`` and staging dirs older than ``temp_age_s``.

        Returns:
            (orphan digests, stale staging dir names, bytes freed).
        """
        orphans, stale, freed = [], [], 0
        for shard in sorted((self.root / "sha256").iterdir()):
            for blob in sorted(shard.iterdir()) if shard.is_dir() else []:
                if blob.name not in referenced:
                    orphans.append(blob.name)
                    freed += _tree_size(blob)
                    if not dry_run:
                        shutil.rmtree(blob, ignore_errors=True)
        cutoff = time.time() - temp_age_s
        for staging in sorted((self.root / "tmp").iterdir()):
            if staging.stat().st_mtime < cutoff:
                stale.append(staging.name)
                freed += _tree_size(staging)
                if not dry_run:
                    shutil.rmtree(staging, ignore_errors=True)
        return orphans, stale, freed
