"""Keep immutable, content-addressed model versions in a SQLAlchemy database.

The database (an SQLite file by default, any SQLAlchemy URL such as PostgreSQL
for a team) holds the catalogue: models, versions, aliases with their history,
lineage edges, metadata and policy-change events. The bytes of each artifact
live in a content-addressed blob directory next to it
(``blobs/sha256/<aa>/<digest>/``) and are verified against their recorded
sha256 every time they are handed out.

A register copies the artifact into a temporary directory inside the blob
root, verifies the copy, moves it into place with one ``os.replace`` and only
then inserts the version row in a single transaction. A crash at any point
leaves either nothing or an orphan blob that ``gc`` removes, never a row that
points at missing bytes. How the database is opened and written beside other
writers (SQLite locking, retries) is :mod:`modelpress.registry.db`.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelpress.errors import ArtifactError, ConfigError, NotFoundError, RegistryError
from modelpress.registry.blobs import BlobStore, hash_tree, tree_digest
from modelpress.registry.db import READ_ONLY, create_schema, make_engine, write_retrying
from modelpress.registry.schema import AliasEventRow, AliasRow, LineageRow, ModelRow, VersionRow

if TYPE_CHECKING:
    from modelpress.sources.models import ModelHandle

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///.modelpress/registry.db"
ENV_URL = "MODELPRESS_REGISTRY"
ENV_BLOBS = "MODELPRESS_BLOB_ROOT"
_MANIFEST = "manifest.json"
# Packages whose versions decide whether an artifact runs the same elsewhere.
_RUNTIME_PACKAGES = ("modelpress", "onnx", "onnxruntime", "openvino", "torch", "numpy")

RegisterStage = Literal["hashed", "copied", "inserted"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One immutable version of a model, as the registry hands it out."""

    model: str
    number: int
    digest: str
    files: Mapping[str, str]
    size_bytes: int
    metadata: Mapping[str, Any]
    created_at: datetime
    created_by: str
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        """Return the canonical reference ``NAME@vN``."""
        return f"{self.model}@v{self.number}"

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able view."""
        return {
            "model": self.model,
            "version": self.number,
            "ref": self.ref,
            "digest": self.digest,
            "files": dict(self.files),
            "size_bytes": self.size_bytes,
            "metadata": dict(self.metadata),
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model name with a summary of its versions."""

    name: str
    description: str
    created_at: datetime
    versions: int
    latest: int | None
    aliases: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able view."""
        return {
            "name": self.name,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "versions": self.versions,
            "latest": self.latest,
            "aliases": dict(self.aliases),
        }


@dataclass(frozen=True, slots=True)
class GcReport:
    """What a garbage collection removed (or would remove on a dry run)."""

    orphan_blobs: tuple[str, ...]
    stale_temp_dirs: tuple[str, ...]
    freed_bytes: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able view."""
        return {
            "orphan_blobs": list(self.orphan_blobs),
            "stale_temp_dirs": list(self.stale_temp_dirs),
            "freed_bytes": self.freed_bytes,
            "dry_run": self.dry_run,
        }


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    # SQLite drops the zone on the way back; every stored time is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def default_actor() -> str:
    """Return ``user@host``, the default author of a registry change."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry inside some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def runtime_versions() -> dict[str, str]:
    """Return the installed versions of the packages an artifact's behaviour depends on."""
    found = {"python": sys.version.split()[0]}
    for name in _RUNTIME_PACKAGES:
        try:
            found[name] = package_version(name)
        except PackageNotFoundError:
            continue
    return found


def _check_manifest(directory: Path) -> dict[str, Any]:
    """Return the artifact's manifest after checking every file hash it declares ({} without one)."""
    if not (directory / _MANIFEST).is_file():
        return {}
    from modelpress.artifact import verify_artifact

    try:
        return verify_artifact(directory)
    except ArtifactError as err:
        raise ArtifactError(f"refusing to register {directory}: {err}; re-export the artifact.") from err


def _split_ref(ref: str) -> tuple[str, str | None]:
    name, sep, selector = ref.partition("@")
    if not name:
        raise ConfigError(f"registry reference {ref!r} has no model name; expected NAME, NAME@vN, NAME@ALIAS or NAME@sha256:PREFIX.")
    return name, (selector if sep else None)


class Registry:
    """Register, resolve and verify model versions; move aliases with their history.

    Args:
        url: SQLAlchemy URL. ``None`` reads ``MODELPRESS_REGISTRY`` and falls back to
            an SQLite file at ``./.modelpress/registry.db``.
        blob_root: where artifact bytes live. ``None`` reads ``MODELPRESS_BLOB_ROOT``,
            else ``blobs/`` next to an SQLite file; other databases need it set.
        busy_timeout_s: how long an SQLite writer waits for another one to finish.

    Example:
        >>> reg = Registry("sqlite:///tmp/reg.db")                # doctest: +SKIP
        >>> v = reg.register("resnet18-int8", "out/pq", metadata={"accuracy": 0.71})
        >>> reg.set_alias("resnet18-int8", "production", v.number, reason="beat v3")
    """

    def __init__(self, url: str | None = None, *, blob_root: str | Path | None = None, busy_timeout_s: float = 30.0) -> None:
        self.url = url or os.environ.get(ENV_URL) or DEFAULT_URL
        self.engine = make_engine(self.url, busy_timeout_s)
        self.blob_root = self._blob_root(blob_root)
        self.blobs = BlobStore(self.blob_root)
        # reads never take SQLite's write lock; writes go through _retrying
        self._sessions = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)
        self._write_sessions = sessionmaker(self.engine, expire_on_commit=False)
        create_schema(self.engine, self.url)

    # ----------------------------------------------------------------- setup

    def _blob_root(self, blob_root: str | Path | None) -> Path:
        chosen = blob_root or os.environ.get(ENV_BLOBS)
        if chosen is None:
            if self.engine.dialect.name == "sqlite" and self.engine.url.database not in (None, "", ":memory:"):
                chosen = Path(self.engine.url.database).parent / "blobs"
            else:
                raise ConfigError(
                    f"registry {self.url!r} keeps no files of its own; set blob_root= or {ENV_BLOBS} "
                    "to a directory every writer can reach."
                )
        return Path(chosen).resolve()

    def _retrying(self, work: Callable[[Session], T], *, attempts: int = 8) -> T:
        """Run ``work`` in a write transaction, retrying when a concurrent writer won a race."""
        return write_retrying(self._write_sessions, work, url=self.url, attempts=attempts)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    # ----------------------------------------------------------------- blobs

    def blob_path(self, digest: str) -> Path:
        """Return where the bytes of the artifact with this digest live."""
        return self.blobs.path(digest)

    # -------------------------------------------------------------- register

    def register(
        self,
        name: str,
        artifact_dir: str | Path,
        *,
        metadata: Mapping[str, Any] | None = None,
        parents: Sequence[str] = (),
        recipe: Mapping[str, Any] | None = None,
        by: str | None = None,
        description: str | None = None,
        on_stage: Callable[[RegisterStage], None] | None = None,
    ) -> VersionInfo:
        """Record an artifact directory as the next immutable version of ``name``.

        Registering bytes that ``name`` already holds returns the existing version.

        Args:
            name: model name, e.g. ``resnet18-int8``.
            artifact_dir: directory holding ``model.onnx`` and ``manifest.json``.
            metadata: data hashes, hyperparameters, metrics; runtime versions and the
                manifest are added.
            parents: references (``NAME@vN``, ``NAME@ALIAS``) this version was made from.
            recipe: how it was made from its parents, stored on each lineage edge.
            by: who registers it; defaults to ``user@host``.
            description: sets the model's description when given.
            on_stage: called after ``"hashed"``, ``"copied"`` and ``"inserted"`` (before commit).
        """
        _check_name(name, "model name")
        source = Path(artifact_dir)
        if not source.is_dir():
            raise ArtifactError(f"artifact directory {source} does not exist; pass the --out directory of a compress/export run.")
        files = hash_tree(source)
        if not files:
            raise ArtifactError(f"artifact directory {source} is empty.")
        manifest = _check_manifest(source)
        digest = tree_digest(files)
        size = sum((source / rel).stat().st_size for rel in files)
        if on_stage:
            on_stage("hashed")
        self.blobs.put(source, files, digest)
        if on_stage:
            on_stage("copied")
        meta = {**(dict(metadata) if metadata else {}), "runtime": runtime_versions()}
        if manifest:
            meta.setdefault("manifest", manifest)
        actor = by or default_actor()

        def work(session: Session) -> VersionInfo:
            model = self._get_or_create_model(session, name, description)
            existing = session.scalar(select(VersionRow).where(VersionRow.model_id == model.id, VersionRow.digest == digest))
            if existing is not None:
                return self._version_info(session, model, existing)
            parent_rows = [self._resolve(session, ref)[1] for ref in parents]
            number = (session.scalar(select(func.max(VersionRow.number)).where(VersionRow.model_id == model.id)) or 0) + 1
            row = VersionRow(
                model_id=model.id, number=number, digest=digest, files=dict(files), size_bytes=size,
                meta=meta, created_at=_now(), created_by=actor,
            )
            session.add(row)
            session.flush()
            for parent in parent_rows:
                session.add(LineageRow(parent_id=parent.id, child_id=row.id, recipe=dict(recipe or {})))
            session.flush()
            if on_stage:
                on_stage("inserted")
            return self._version_info(session, model, row)

        info: VersionInfo = self._retrying(work)
        log.info("registered %s (%s) from %s", info.ref, digest[:12], source)
        return info

    def _get_or_create_model(self, session: Session, name: str, description: str | None) -> ModelRow:
        model = session.scalar(select(ModelRow).where(ModelRow.name == name))
        if model is None:
            model = ModelRow(name=name, description=description or "", created_at=_now())
            session.add(model)
            session.flush()
        elif description is not None:
            model.description = description
        return model

    # --------------------------------------------------------------- resolve

    def _model(self, session: Session, name: str) -> ModelRow:
        model = session.scalar(select(ModelRow).where(ModelRow.name == name))
        if model is None:
            known = session.scalars(select(ModelRow.name).order_by(ModelRow.name).limit(20)).all()
            raise NotFoundError(f"no model {name!r} in the registry {self.url}; known: {', '.join(known) or 'none'}.")
        return model

    def _resolve(self, session: Session, ref: str) -> tuple[ModelRow, VersionRow]:
        name, selector = _split_ref(ref)
        model = self._model(session, name)
        query = select(VersionRow).where(VersionRow.model_id == model.id)
        if selector is None or selector == "latest":
            row = session.scalar(query.order_by(VersionRow.number.desc()).limit(1))
        elif selector.startswith("v") and selector[1:].isdigit():
            row = session.scalar(query.where(VersionRow.number == int(selector[1:])))
        elif selector.isdigit():
            row = session.scalar(query.where(VersionRow.number == int(selector)))
        elif selector.startswith("sha256:"):
            prefix = selector.removeprefix("sha256:")
            rows = session.scalars(query.where(VersionRow.digest.startswith(prefix))).all()
            if len(rows) > 1:
                raise ConfigError(f"digest prefix {prefix!r} of {name} matches {len(rows)} versions; give more characters.")
            row = rows[0] if rows else None
        else:
            alias = session.scalar(select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.alias == selector))
            if alias is None:
                aliases = session.scalars(select(AliasRow.alias).where(AliasRow.model_id == model.id)).all()
                raise NotFoundError(f"model {name!r} has no alias {selector!r}; its aliases: {', '.join(sorted(aliases)) or 'none'}.")
            row = session.get(VersionRow, alias.version_id)
        if row is None:
            raise NotFoundError(f"{ref!r} matches no version of {name!r}; see `modelpress registry show {name}`.")
        return model, row

    def _version_info(self, session: Session, model: ModelRow, row: VersionRow) -> VersionInfo:
        aliases = session.scalars(select(AliasRow.alias).where(AliasRow.version_id == row.id).order_by(AliasRow.alias)).all()
        return VersionInfo(
            model=model.name, number=row.number, digest=row.digest, files=dict(row.files), size_bytes=row.size_bytes,
            metadata=dict(row.meta), created_at=_utc(row.created_at), created_by=row.created_by, aliases=tuple(aliases),
        )

    def get(self, ref: str) -> VersionInfo:
        """Return the version ``ref`` names (``NAME``, ``NAME@vN``, ``NAME@ALIAS``, ``NAME@sha256:PREFIX``)."""
        with self._sessions() as session:
            model, row = self._resolve(session, ref)
            return self._version_info(session, model, row)

    def path(self, ref: str, *, verify: bool = True) -> Path:
        """Return the stored artifact directory of ``ref``, its sha256 checked first."""
        info = self.get(ref)
        directory = self.blob_path(info.digest)
        if not directory.is_dir():
            raise ArtifactError(f"{info.ref} ({info.digest[:12]}) has no bytes at {directory}; the blob store was removed or moved.")
        if verify:
            self.blobs.verify(directory, info.files, info.digest)
        return directory

    def load(self, ref: str, *, with_module: bool = True) -> ModelHandle:
        """Load the version ``ref`` names as a ModelHandle, its bytes verified first.

        This is what the model spec ``registry:NAME@ALIAS`` resolves to.
        """
        from modelpress.artifact import load_artifact

        info = self.get(ref)
        handle = load_artifact(self.path(ref), with_module=with_module)
        handle.spec = f"registry:{info.ref}"
        return handle

    def models(self) -> list[ModelInfo]:
        """Return every model with its version count, latest version and aliases."""
        with self._sessions() as session:
            out = []
            for model in session.scalars(select(ModelRow).order_by(ModelRow.name)):
                count, latest = session.execute(
                    select(func.count(VersionRow.id), func.max(VersionRow.number)).where(VersionRow.model_id == model.id)
                ).one()
                aliases = session.execute(
                    select(AliasRow.alias, VersionRow.number)
                    .join(VersionRow, VersionRow.id == AliasRow.version_id)
                    .where(AliasRow.model_id == model.id)
                    .order_by(AliasRow.alias)
                ).all()
                out.append(ModelInfo(model.name, model.description, _utc(model.created_at), count, latest, dict(aliases)))
            return out

    def versions(self, name: str) -> list[VersionInfo]:
        """Return every version of ``name``, oldest first."""
        with self._sessions() as session:
            model = self._model(session, name)
            rows = session.scalars(select(VersionRow).where(VersionRow.model_id == model.id).order_by(VersionRow.number))
            return [self._version_info(session, model, row) for row in rows]

    # --------------------------------------------------------------- aliases

    def set_alias(self, name: str, alias: str, version: int | str, *, by: str | None = None, reason: str = "") -> VersionInfo:
        """Point ``alias`` of ``name`` at a version and record who moved it, when and why.

        Args:
            version: a version number or any selector (``v3``, ``candidate``, ``sha256:ab12``).
        """
        _check_name(alias, "alias")
        if alias in ("latest",) or (alias.startswith("v") and alias[1:].isdigit()) or alias.isdigit() or alias.startswith("sha256:"):
            raise ConfigError(f"alias {alias!r} would shadow a version selector; pick a word such as production or candidate.")
        selector = f"v{version}" if isinstance(version, int) else version
        actor = by or default_actor()

        def work(session: Session) -> VersionInfo:
            model, row = self._resolve(session, f"{name}@{selector}")
            return self._move_alias(session, model, alias, row, actor, reason, "set")

        return self._retrying(work)

    def _move_alias(self, session: Session, model: ModelRow, alias: str, row: VersionRow | None, actor: str, reason: str, action: str) -> VersionInfo | None:
        current = session.scalar(select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.alias == alias))
        old_id = current.version_id if current is not None else None
        if row is None:
            if current is not None:
                session.delete(current)
        elif current is None:
            session.add(AliasRow(model_id=model.id, alias=alias, version_id=row.id))
        else:
            current.version_id = row.id
        session.add(AliasEventRow(
            model_id=model.id, alias=alias, old_version_id=old_id, new_version_id=row.id if row else None,
            action=action, at=_now(), by=actor, reason=reason,
        ))
        session.flush()
        return self._version_info(session, model, row) if row is not None else None

    def remove_alias(self, name: str, alias: str, *, by: str | None = None, reason: str = "") -> None:
        """Delete ``alias`` of ``name``, keeping the removal in its history."""
        actor = by or default_actor()

        def work(session: Session) -> None:
            model = self._model(session, name)
            if session.scalar(select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.alias == alias)) is None:
                raise NotFoundError(f"model {name!r} has no alias {alias!r}.")
            self._move_alias(session, model, alias, None, actor, reason, "remove")

        self._retrying(work)

    def rollback(self, name: str, alias: str = "production", *, by: str | None = None, reason: str = "") -> VersionInfo:
        """Point ``alias`` back at the version it held before its latest change."""
        actor = by or default_actor()

        def work(session: Session) -> VersionInfo:
            model = self._model(session, name)
            last = session.scalar(
                select(AliasEventRow)
                .where(AliasEventRow.model_id == model.id, AliasEventRow.alias == alias)
                .order_by(AliasEventRow.id.desc())
                .limit(1)
            )
            if last is None or last.old_version_id is None:
                raise RegistryError(f"alias {alias!r} of {name!r} has no earlier version to roll back to; set it with `registry alias`.")
            previous = session.get(VersionRow, last.old_version_id)
            return self._move_alias(session, model, alias, previous, actor, reason or "rollback", "rollback")

        return self._retrying(work)

    # ------------------------------------------------------------- lineage

    def add_lineage(self, parent: str, child: str, *, recipe: Mapping[str, Any] | None = None) -> None:
        """Record that ``child`` was made from ``parent`` with ``recipe``."""

        def work(session: Session) -> None:
            _, parent_row = self._resolve(session, parent)
            _, child_row = self._resolve(session, child)
            if parent_row.id == child_row.id:
                raise ConfigError(f"a version cannot be its own parent ({child}).")
            exists = session.scalar(select(LineageRow).where(LineageRow.parent_id == parent_row.id, LineageRow.child_id == child_row.id))
            if exists is not None:
                exists.recipe = dict(recipe or exists.recipe)
                return
            session.add(LineageRow(parent_id=parent_row.id, child_id=child_row.id, recipe=dict(recipe or {})))

        self._retrying(work)

    def lineage(self, ref: str) -> dict[str, Any]:
        """Return the ancestors and descendants of ``ref`` as edges ``{parent, child, recipe}``."""
        with self._sessions() as session:
            _, start = self._resolve(session, ref)
            labels: dict[int, str] = {}

            def label(version_id: int) -> str:
                if version_id not in labels:
                    row = session.get(VersionRow, version_id)
                    model = session.get(ModelRow, row.model_id)
                    labels[version_id] = f"{model.name}@v{row.number}"
                return labels[version_id]

            def walk(column: str) -> list[dict[str, Any]]:
                edges, frontier, seen = [], [start.id], {start.id}
                while frontier:
                    current = frontier.pop()
                    key = LineageRow.child_id if column == "up" else LineageRow.parent_id
                    for edge in session.scalars(select(LineageRow).where(key == current).order_by(LineageRow.id)):
                        edges.append({"parent": label(edge.parent_id), "child": label(edge.child_id), "recipe": dict(edge.recipe)})
                        nxt = edge.parent_id if column == "up" else edge.child_id
                        if nxt not in seen:
                            seen.add(nxt)
                            frontier.append(nxt)
                return edges

            return {"version": label(start.id), "ancestors": walk("up"), "descendants": walk("down")}

    # ------------------------------------------------------------------ diff

    def diff(self, a: str, b: str) -> dict[str, Any]:
        """Return what differs between two versions: metadata keys, files, size."""
        left, right = self.get(a), self.get(b)
        flat_a, flat_b = _flatten(left.metadata), _flatten(right.metadata)
        changed = {
            key: {"a": flat_a.get(key), "b": flat_b.get(key)}
            for key in sorted(set(flat_a) | set(flat_b))
            if flat_a.get(key) != flat_b.get(key)
        }
        files = {
            name: {"a": left.files.get(name), "b": right.files.get(name)}
            for name in sorted(set(left.files) | set(right.files))
            if left.files.get(name) != right.files.get(name)
        }
        return {
            "a": left.ref, "b": right.ref, "same_bytes": left.digest == right.digest,
            "size_bytes": {"a": left.size_bytes, "b": right.size_bytes},
            "metadata": changed, "files": files,
        }

    # -------------------------------------------------------------------- gc

    def gc(self, *, dry_run: bool = False, temp_age_s: float = 3600.0) -> GcReport:
        """Remove blobs no version references and staging dirs older than ``temp_age_s``."""
        with self._sessions() as session:
            referenced = set(session.scalars(select(VersionRow.digest)).all())
        orphans, stale, freed = self.blobs.sweep(referenced, dry_run=dry_run, temp_age_s=temp_age_s)
        return GcReport(tuple(orphans), tuple(stale), freed, dry_run)


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping):
            out.update(_flatten(item, f"{name}."))
        else:
            out[name] = item
    return out


def _check_name(value: str, what: str) -> None:
    if not value or any(ch in value for ch in "@/\\ \t\n") or len(value) > 100:
        raise ConfigError(f"{what} {value!r} must be 1-100 characters without '@', '/', '\\' or spaces.")


def open_registry(url: str | None = None, *, blob_root: str | Path | None = None) -> Registry:
    """Open the registry ``url`` names, else ``MODELPRESS_REGISTRY``, else ``./.modelpress/registry.db``."""
    return Registry(url, blob_root=blob_root)
