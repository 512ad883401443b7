"""Open the registry's database and write to it safely beside other writers.

SQLite is the default and the hard case: several processes (a CLI, a
server's background writer, a CI job) may write at once. Connections use WAL
so readers never wait; writers take the write lock when their transaction
begins (``BEGIN IMMEDIATE``) and queue on the busy timeout; a write that still
loses a race (two writers picking the same version number) is retried with a
jittered back-off. Other SQLAlchemy databases only get the retry.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from modelpress.errors import ConfigError, RegistryError
from modelpress.registry.schema import Base

# Execution option that marks an engine's transactions as readers (plain BEGIN on SQLite).
READ_ONLY = "modelpress_read_only"

T = TypeVar("T")


def make_engine(url: str, busy_timeout_s: float) -> Engine:
    """Create the engine for ``url``; on SQLite, set WAL, foreign keys and write-lock-on-begin.

    Raises:
        ConfigError: the URL names an unknown dialect or driver, or is malformed.
    """
    if url.startswith("sqlite:///") and ":memory:" not in url:
        db_path = Path(url.removeprefix("sqlite:///"))
        db_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url)
    except Exception as err:  # unknown dialect, missing driver, malformed URL
        raise ConfigError(f"registry URL {url!r} could not be opened: {err}. Example: sqlite:///.modelpress/registry.db") from err
    if engine.dialect.name == "sqlite":
        timeout_ms = int(busy_timeout_s * 1000)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, decide when a transaction begins.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            # IMMEDIATE takes the write lock up front, so two writers queue on the
            # busy timeout instead of one failing when it upgrades a read lock.
            # Readers begin deferred: under WAL they never wait for a writer.
            read_only = connection.get_execution_options().get(READ_ONLY, False)
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def create_schema(engine: Engine, url: str) -> None:
    """Create the registry's tables in ``engine`` unless they are all there.

    Raises:
        RegistryError: the database cannot be read.
    """
    # Look before creating: create_all takes the write lock, and a reader such as
    # `registry ls` must not wait for a writer just to find the tables there.
    reader = engine.execution_options(**{READ_ONLY: True})
    try:
        missing = set(Base.metadata.tables) - set(inspect(reader).get_table_names())
    except OperationalError as err:
        raise RegistryError(f"registry {url} could not be read: {getattr(err, 'orig', err)}") from err
    if missing:
        Base.metadata.create_all(engine)


def write_retrying(sessions: sessionmaker[Session], work: Callable[[Session], T], *, url: str, attempts: int = 8) -> T:
    """Run ``work`` in a write transaction, retrying when a concurrent writer won a race.

    Args:
        sessions: makes write sessions.
        work: the transaction's body; it runs again from the start on a retry.
        url: the database, for error messages.
        attempts: how many times to try before giving up.

    Raises:
        RegistryError: the database refused the write, or stayed busy through every attempt.
    """
    for attempt in range(attempts):
        try:
            with sessions() as session, session.begin():
                return work(session)
        except (IntegrityError, OperationalError) as err:
            if not is_race(err):
                raise RegistryError(f"registry {url} refused the write: {getattr(err, 'orig', err)}") from err
            if attempt == attempts - 1:
                raise RegistryError(
                    f"registry {url} stayed busy through {attempts} attempts ({getattr(err, 'orig', err)}); "
                    "another writer holds it: retry, or raise busy_timeout_s."
                ) from err
            # jittered back-off so colliding writers do not collide again in step
            time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
    raise AssertionError("unreachable")


def is_race(err: Exception) -> bool:
    """Say whether ``err`` came from losing a race to another writer (worth a retry)."""
    text = str(getattr(err, "orig", err)).lower()
    if isinstance(err, IntegrityError):
        # two writers picked the same version number or created the same model/alias at once
        return "unique" in text or "duplicate" in text
    return "locked" in text or "busy" in text
