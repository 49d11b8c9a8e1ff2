"""Atomic file writes and the small readers/writers every stage uses (safetensors, YAML, JSON, torch)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import UserError


def atomic_write(path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, then rename onto `path`: a crash never leaves a half-written file.

    An OS error (a full disk, a read-only folder) leaves `path` as it was and is raised naming it.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; output and data folders are often shared
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    return path


def write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    # Serialized in memory and written by Python, so that a full disk is an OSError (safetensors'
    # own writer reports it as a SafetensorError).
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return write_bytes(path, save(tensors, metadata=metadata))


def load_tensors(path, device: str = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=device)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e}); re-create it") from None


def tensors_metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e}); re-create it") from None


# PyYAML is imported where YAML is read or written (subnet files), so that the layer, injection,
# merge and adapters files load with torch and safetensors alone.

def save_yaml(path, data: Any) -> Path:
    import yaml

    text = yaml.safe_dump(data, sort_keys=False)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def load_yaml(path) -> Any:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder: give the path of a YAML file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML ({_yaml_problem(e)}); fix the file") from None


def _yaml_problem(e) -> str:
    """PyYAML's error as one phrase: what it found, and at which line and column."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or not problem:
        return str(e).splitlines()[0]
    return f"{problem}, line {mark.line + 1} column {mark.column + 1}"


def save_json(path, data: Any) -> Path:
    text = json.dumps(data, indent=2) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_torch(path, obj: Any) -> Path:
    """For optimizer/scheduler/RNG state; always read back with `load_torch` (weights_only)."""
    buffer = io.BytesIO()  # torch.save reports a full disk as a RuntimeError; Python's write, as an OSError
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getvalue())


def load_torch(path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as e:  # torch raises many types for a damaged or foreign pickle
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); delete it or re-create it") from None


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes, as hex (what checkpoint manifests and run records hold)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tuples(x):
    """random.setstate wants the tuples it gave; a YAML or checkpoint round trip returns lists."""
    return tuple(tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
