"""Several processes writing at once, and a process killed in the middle of a register."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import modelpress
from modelpress.registry import Registry, alias_history

_SRC = str(Path(modelpress.__file__).resolve().parents[1])


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": _SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


_WRITER = """
    import sys
    from modelpress.registry import Registry
    url, worker, *dirs = sys.argv[1:]
    reg = Registry(url)
    for d in dirs:
        v = reg.register("shared", d, by=f"worker{worker}")
        reg.set_alias("shared", "latest-" + worker, v.number, by=f"worker{worker}")
        reg.set_alias("shared", "production", v.number, by=f"worker{worker}")
        print(v.number, v.digest)
"""


@pytest.mark.slow
def test_concurrent_writers_get_distinct_versions_and_a_consistent_history(tmp_path: Path, artifact_factory) -> None:
    url = f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    Registry(url).close()  # create the schema once, as a first `modelpress` run would
    workers, per_worker = 4, 4
    dirs = {w: [str(artifact_factory(100 * w + i)) for i in range(per_worker)] for w in range(workers)}
    # the same bytes from two workers must end up as one version, not two
    dirs[1].append(dirs[0][0])

    procs = [_python(_WRITER, url, str(w), *dirs[w]) for w in range(workers)]
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err

    reg = Registry(url)
    versions = reg.versions("shared")
    assert [v.number for v in versions] == list(range(1, workers * per_worker + 1))
    assert len({v.digest for v in versions}) == workers * per_worker
    for v in versions:
        reg.path(v.ref)  # every row points at bytes that pass their sha256 check
    production_moves = alias_history(reg, "shared", "production")
    assert len(production_moves) == workers * per_worker + 1
    # each move starts where the previous one ended: no lost update between writers
    for before, after in zip(production_moves, production_moves[1:], strict=False):
        assert after.old_version == before.new_version
    assert reg.get("shared@production").number == production_moves[-1].new_version
    with sqlite3.connect(tmp_path / "reg" / "registry.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


_CRASHER = """
    import os, signal, sys
    from modelpress.registry import Registry
    url, directory, stage = sys.argv[1:]
    reg = Registry(url)

    def on_stage(name):
        if name == stage:
            os.kill(os.getpid(), signal.SIGKILL)

    reg.register("crashy", directory, parents=["base@v1"], on_stage=on_stage)
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["copied", "inserted"])
def test_a_crash_mid_register_leaves_no_half_entry(tmp_path: Path, artifact_factory, stage: str) -> None:
    url = f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    reg = Registry(url)
    reg.register("base", artifact_factory(1))
    source = artifact_factory(2)

    proc = _python(_CRASHER, url, str(source), stage)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err

    # nothing of the crashed register is visible: no model, no version, no lineage edge
    assert [m.name for m in reg.models()] == ["base"]
    assert reg.lineage("base@v1")["descendants"] == []
    # the copied bytes are an orphan that gc reclaims
    report = reg.gc()
    assert len(report.orphan_blobs) == 1
    # and the same artifact registers cleanly afterwards as version 1
    again = reg.register("crashy", source, parents=["base@v1"])
    assert again.number == 1
    assert reg.path("crashy@v1").is_dir()
    with sqlite3.connect(tmp_path / "reg" / "registry.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_readers_never_wait_for_a_writer_and_a_stuck_writer_gives_a_clear_error(tmp_path: Path, artifact_factory) -> None:
    from modelpress.errors import RegistryError

    db = tmp_path / "reg" / "registry.db"
    url = f"sqlite:///{db}"
    Registry(url).register("tiny", artifact_factory(0))
    holder = sqlite3.connect(db, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        reg = Registry(url, busy_timeout_s=0.2)
        assert [v.number for v in reg.versions("tiny")] == [1]
        assert reg.path("tiny@v1").is_dir()
        with pytest.raises(RegistryError, match="stayed busy through"):
            reg.set_alias("tiny", "production", 1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    reg.set_alias("tiny", "production", 1)
    assert reg.get("tiny@production").number == 1
