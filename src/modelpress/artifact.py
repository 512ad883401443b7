"""Artifact directories: model.onnx, manifest.json (hashes, lineage), checkpoint.

An artifact is written into a temporary sibling directory and renamed into
place, so a reader never sees a half-written one. Loading verifies every
file's sha256 against the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from modelpress.errors import ArtifactError
from modelpress.sources.models import CHECKPOINT_ARCH, ModelHandle, TensorSpec, rebuild_module, save_checkpoint

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def environment_info() -> dict[str, Any]:
    """Library versions and hardware, recorded in every manifest."""
    from importlib.metadata import PackageNotFoundError, version

    libs = {}
    for name in ("modelpress", "torch", "onnx", "onnxruntime", "openvino", "torchvision", "transformers", "numpy"):
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            continue
    from modelpress.bench.hardware import cpu_info

    return {"python": sys.version.split()[0], "platform": platform.platform(), "libraries": libs, "hardware": cpu_info()}


def write_artifact(
    out_dir: Path | str,
    *,
    handle: ModelHandle,
    manifest: dict[str, Any] | None = None,
    extra_files: dict[str, Path] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``handle`` as an artifact directory at ``out_dir``, atomically.

    Args:
        out_dir: the directory to create (replaced if it exists and ``overwrite``).
        handle: needs an ONNX file; its torch module, if any, is checkpointed too.
        manifest: extra manifest fields (lineage, metrics, recipe, ...).
        extra_files: more files to include, by name in the artifact.

    Returns:
        The artifact directory.
    """
    out = Path(out_dir)
    if handle.onnx_path is None or not Path(handle.onnx_path).is_file():
        raise ArtifactError(f"cannot write artifact {out}: {handle.spec} has no ONNX file (export it first)")
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} exists; pass overwrite=True or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        shutil.copyfile(handle.onnx_path, tmp / MODEL_FILE)
        if handle.module is not None:
            save_checkpoint(handle, tmp)
        for name, path in (extra_files or {}).items():
            shutil.copyfile(path, tmp / name)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        body = {
            "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": handle.spec,
            "task": handle.task,
            "precision": handle.precision,
            "inputs": [s.to_json() for s in handle.inputs],
            "outputs": list(handle.outputs),
            "tokenizer_dir": str(handle.tokenizer_dir) if handle.tokenizer_dir else None,
            "environment": environment_info(),
            **(manifest or {}),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(body, indent=2, default=str))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(directory: Path | str) -> dict[str, Any]:
    """Read an artifact's manifest without verifying its files."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} is not an artifact directory (no {MANIFEST})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from err


def verify_artifact(directory: Path | str) -> dict[str, Any]:
    """Check every file listed in the manifest against its sha256; return the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = manifest.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise ArtifactError(f"{directory}/{MANIFEST} lists no {MODEL_FILE} hash")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory} is missing {name}, listed in its manifest")
        if sha256_file(path) != expected:
            raise ArtifactError(f"{directory}/{name} does not match its manifest hash (modified or corrupt)")
    return manifest


def load_artifact(directory: Path | str, *, with_module: bool = True) -> ModelHandle:
    """Load an artifact directory as a ModelHandle, verifying its hashes.

    Args:
        with_module: also rebuild the torch module when a checkpoint is present.
    """
    directory = Path(directory)
    manifest = verify_artifact(directory)
    handle = ModelHandle(
        spec=str(directory),
        inputs=tuple(TensorSpec.from_json(s) for s in manifest["inputs"]),
        outputs=tuple(manifest["outputs"]),
        task=manifest.get("task", "classification"),
        precision=manifest.get("precision", "fp32"),
        onnx_path=directory / MODEL_FILE,
        tokenizer_dir=Path(manifest["tokenizer_dir"]) if manifest.get("tokenizer_dir") else None,
    )
    if with_module and (directory / CHECKPOINT_ARCH).is_file():
        from safetensors.torch import load_file

        arch = json.loads((directory / CHECKPOINT_ARCH).read_text())
        rebuilt = rebuild_module(arch, load_file(str(directory / "model.safetensors")))
        handle.module = rebuilt.module
        handle.architecture = rebuilt.architecture
    return handle
