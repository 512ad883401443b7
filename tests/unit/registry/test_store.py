"""Registry operations on an SQLite file: versions, verification, aliases, lineage, diff, gc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelpress.errors import ArtifactError, ConfigError, NotFoundError, RegistryError
from modelpress.registry import PolicyRecorder, Registry, alias_history, policy_history, record_policy_change
from modelpress.registry.blobs import hash_tree, tree_digest


def test_register_numbers_versions_and_is_content_addressed(registry: Registry, artifact_factory) -> None:
    a, b = artifact_factory(0), artifact_factory(1)
    v1 = registry.register("tiny", a, metadata={"metrics": {"accuracy": 0.91}, "data_hash": "abc"})
    v2 = registry.register("tiny", b)
    again = registry.register("tiny", a)

    assert (v1.number, v2.number, again.number) == (1, 2, 1)
    assert again.digest == v1.digest == tree_digest(hash_tree(a))
    assert v1.digest != v2.digest
    assert [v.number for v in registry.versions("tiny")] == [1, 2]
    assert v1.metadata["metrics"] == {"accuracy": 0.91}
    assert v1.metadata["runtime"]["onnx"]  # the runtime versions it was registered with
    assert v1.metadata["manifest"]["seed"] == 0
    stored = registry.path("tiny@v1")
    assert stored.is_dir() and stored.name == v1.digest
    assert hash_tree(stored) == hash_tree(a)


def test_stored_bytes_survive_the_source_changing(registry: Registry, artifact_factory) -> None:
    source = artifact_factory(0)
    registry.register("tiny", source)
    (source / "model.onnx").write_bytes(b"overwritten")

    assert (registry.path("tiny") / "model.onnx").read_bytes() != b"overwritten"


def test_load_detects_a_tampered_blob(registry: Registry, artifact_factory) -> None:
    info = registry.register("tiny", artifact_factory(0))
    blob = registry.blob_path(info.digest)
    (blob / "model.onnx").write_bytes(b"corrupted")

    with pytest.raises(ArtifactError, match=r"fails its sha256 check on model\.onnx"):
        registry.path("tiny@v1")


def test_register_refuses_an_artifact_that_does_not_match_its_manifest(registry: Registry, artifact_factory) -> None:
    source = artifact_factory(0)
    (source / "model.onnx").write_bytes(b"edited after export")

    with pytest.raises(ArtifactError, match=r"refusing to register .*model\.onnx does not match its manifest hash"):
        registry.register("tiny", source)
    assert registry.models() == []


def test_references_resolve_by_number_alias_digest_and_latest(registry: Registry, artifact_factory) -> None:
    v1 = registry.register("tiny", artifact_factory(0))
    v2 = registry.register("tiny", artifact_factory(1))
    registry.set_alias("tiny", "production", 1)

    assert registry.get("tiny").number == 2
    assert registry.get("tiny@latest").number == 2
    assert registry.get("tiny@v1").digest == v1.digest
    assert registry.get("tiny@2").digest == v2.digest
    assert registry.get("tiny@production").number == 1
    assert registry.get(f"tiny@sha256:{v2.digest[:10]}").number == 2
    assert registry.get("tiny@v1").aliases == ("production",)


@pytest.mark.parametrize(
    ("ref", "error", "message"),
    [
        ("nope", NotFoundError, "no model 'nope'.*known: tiny"),
        ("tiny@v9", NotFoundError, "matches no version"),
        ("tiny@staging", NotFoundError, "has no alias 'staging'"),
        ("@v1", ConfigError, "has no model name"),
    ],
)
def test_bad_references_name_what_was_wrong(registry: Registry, artifact_factory, ref: str, error: type, message: str) -> None:
    registry.register("tiny", artifact_factory(0))
    with pytest.raises(error, match=message):
        registry.get(ref)


def test_alias_moves_are_recorded_and_rollback_restores_the_previous_version(registry: Registry, artifact_factory) -> None:
    for seed in range(3):
        registry.register("tiny", artifact_factory(seed))
    registry.set_alias("tiny", "production", 1, by="alice", reason="first release")
    registry.set_alias("tiny", "production", "v3", by="bob", reason="faster")
    back = registry.rollback("tiny", "production", by="carol", reason="p99 regression")

    assert back.number == 1
    assert registry.get("tiny@production").number == 1
    events = alias_history(registry, "tiny", "production")
    assert [(e.old_version, e.new_version, e.action, e.by, e.reason) for e in events] == [
        (None, 1, "set", "alice", "first release"),
        (1, 3, "set", "bob", "faster"),
        (3, 1, "rollback", "carol", "p99 regression"),
    ]
    assert events[0].at <= events[1].at <= events[2].at


def test_alias_rules(registry: Registry, artifact_factory) -> None:
    registry.register("tiny", artifact_factory(0))
    registry.set_alias("tiny", "candidate", 1)
    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        registry.rollback("tiny", "candidate")
    with pytest.raises(ConfigError, match="would shadow a version selector"):
        registry.set_alias("tiny", "v2", 1)
    with pytest.raises(ConfigError, match="alias 'a b'"):
        registry.set_alias("tiny", "a b", 1)
    registry.remove_alias("tiny", "candidate", reason="done")
    with pytest.raises(NotFoundError, match="no alias 'candidate'"):
        registry.get("tiny@candidate")
    assert alias_history(registry, "tiny", "candidate")[-1].action == "remove"


def test_lineage_walks_ancestors_and_descendants_across_models(registry: Registry, artifact_factory) -> None:
    registry.register("base", artifact_factory(0))
    registry.register("pruned", artifact_factory(1), parents=["base@v1"], recipe={"prune": {"ratio": 0.5}})
    registry.register("pruned-int8", artifact_factory(2), parents=["pruned@v1"], recipe={"quantize": "static"})

    down = registry.lineage("base@v1")
    up = registry.lineage("pruned-int8")
    assert [(e["parent"], e["child"]) for e in down["descendants"]] == [("base@v1", "pruned@v1"), ("pruned@v1", "pruned-int8@v1")]
    assert down["ancestors"] == []
    assert [e["parent"] for e in up["ancestors"]] == ["pruned@v1", "base@v1"]
    assert up["ancestors"][1]["recipe"] == {"prune": {"ratio": 0.5}}


def test_register_with_an_unknown_parent_leaves_nothing(registry: Registry, artifact_factory) -> None:
    with pytest.raises(NotFoundError):
        registry.register("child", artifact_factory(0), parents=["ghost@v1"])
    assert registry.models() == []


def test_diff_reports_changed_metadata_and_files(registry: Registry, artifact_factory) -> None:
    registry.register("tiny", artifact_factory(0), metadata={"metrics": {"accuracy": 0.90}, "hyperparameters": {"lr": 0.1}})
    registry.register("tiny", artifact_factory(1), metadata={"metrics": {"accuracy": 0.88}, "hyperparameters": {"lr": 0.1}})

    d = registry.diff("tiny@v1", "tiny@v2")
    assert d["metadata"]["metrics.accuracy"] == {"a": 0.90, "b": 0.88}
    assert "hyperparameters.lr" not in d["metadata"]
    assert set(d["files"]) == {"model.onnx", "manifest.json"}
    assert d["same_bytes"] is False


def test_gc_removes_only_unreferenced_blobs(registry: Registry, artifact_factory) -> None:
    kept = registry.register("tiny", artifact_factory(0))
    orphan = artifact_factory(1)
    digest = tree_digest(hash_tree(orphan))
    registry.blobs.put(orphan, hash_tree(orphan), digest)  # what a crash after the copy leaves

    dry = registry.gc(dry_run=True)
    assert dry.orphan_blobs == (digest,) and registry.blob_path(digest).is_dir()
    report = registry.gc()
    assert report.orphan_blobs == (digest,) and report.freed_bytes > 0
    assert not registry.blob_path(digest).exists()
    assert registry.path("tiny@v1").name == kept.digest


def test_policy_changes_are_recorded_in_order(registry: Registry) -> None:
    record_policy_change(registry, "tiny", "set_policy", {"kind": "ab", "weights": {"v1": 0.9, "v2": 0.1}}, by="alice", reason="try v2")

    class Event:
        model, action, by, reason, at = "tiny", "rollback", "bob", "errors", None
        policy = {"kind": "single", "version": "v1"}
        previous = {"kind": "ab", "weights": {"v1": 0.9, "v2": 0.1}}

    PolicyRecorder(registry)(Event())
    changes = policy_history(registry, "tiny")
    assert [(c.action, c.by) for c in changes] == [("set_policy", "alice"), ("rollback", "bob")]
    assert changes[1].previous == {"kind": "ab", "weights": {"v1": 0.9, "v2": 0.1}}
    assert policy_history(registry, "other") == []
    assert [c.action for c in policy_history(registry, limit=1)] == ["rollback"]


def test_non_sqlite_url_needs_a_blob_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELPRESS_BLOB_ROOT", raising=False)
    with pytest.raises(ConfigError, match="MODELPRESS_BLOB_ROOT"):
        Registry("sqlite:///:memory:")
    reg = Registry("sqlite:///:memory:", blob_root=tmp_path / "blobs")
    assert reg.models() == []


def test_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="could not be opened"):
        Registry("nosuchdialect://x")


def test_json_views_round_trip(registry: Registry, artifact_factory) -> None:
    info = registry.register("tiny", artifact_factory(0))
    data = json.loads(json.dumps(info.as_dict()))
    assert data["ref"] == "tiny@v1" and data["digest"] == info.digest
    assert json.loads(json.dumps([m.as_dict() for m in registry.models()]))[0]["latest"] == 1


def test_load_returns_a_handle_on_the_verified_stored_bytes(tmp_path: Path, artifact_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelpress.registry import open_registry
    from modelpress.sources.models import load_model

    monkeypatch.setenv("MODELPRESS_REGISTRY", f"sqlite:///{tmp_path / 'env-reg' / 'registry.db'}")
    reg = open_registry()
    info = reg.register("tiny", artifact_factory(0))
    reg.set_alias("tiny", "production", 1)

    handle = load_model("registry:tiny@production")
    assert handle.onnx_path == reg.blob_path(info.digest) / "model.onnx"
    assert handle.outputs == ("logits",) and handle.inputs[0].shape == ("batch", 4)
    (reg.blob_path(info.digest) / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="fails its sha256 check on model.onnx"):
        reg.load("tiny@production")
