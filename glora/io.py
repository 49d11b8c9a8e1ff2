"""Atomic file writes and the small readers/writers every stage uses (safetensors, YAML, JSON, torch)."""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Hashable
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


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 digest: bool = False) -> Path:
    """Write tensors as safetensors whose bytes depend on their content alone (see `_canonical`);
    with `digest`, their `tensors_digest` goes into the metadata, so that the file carries its own
    check (`check_digest`)."""
    # Serialized in memory and written by Python, so that a full disk is an OSError (safetensors'
    # own writer reports it as a SafetensorError).
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if digest:
        metadata = {**(metadata or {}), DIGEST: tensors_digest(tensors, metadata)}
    return write_bytes(path, _canonical(save(tensors, metadata=metadata)))


def _canonical(serialized: bytes) -> bytes:
    """The same safetensors file with its JSON header in one order: safetensors writes the metadata
    in hash order, which changes from process to process, so equal content gave other bytes (and
    another SHA-256, which lineage reads as another file). The data section is left as it is."""
    n = int.from_bytes(serialized[:8], "little")
    header = json.loads(serialized[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = {**({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}),
               **dict(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]))}
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the header is padded to 8 bytes, as safetensors writes it
    return len(text).to_bytes(8, "little") + text + serialized[8 + n:]


DIGEST = "digest"  # the metadata key of a file's own digest


def tensors_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """SHA-256 of what a safetensors file holds: the metadata (but this digest) and each tensor's
    name, dtype, shape and bytes, in name order. A byte changed anywhere in the file changes it,
    or makes the file unreadable."""
    h = hashlib.sha256(json.dumps({k: v for k, v in (metadata or {}).items() if k != DIGEST}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"\n{name} {t.dtype} {list(tensors[name].shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy())
    return f"sha256:{h.hexdigest()}"


def check_digest(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Refuse a file whose tensors or metadata differ from what its recorded digest says (a flipped
    byte, a truncated copy, an edit), or that records none."""
    recorded = metadata.get(DIGEST)
    if recorded is None:
        raise UserError(f"{path}: records no digest of its tensors, so a damaged copy cannot be told from a sound "
                        "one: export it again (retrain.py writes one), or copy it again from where it was made")
    if tensors_digest(tensors, metadata) != recorded:
        raise UserError(f"{path}: its tensors or metadata differ from the digest it records (damaged on disk or in "
                        "transfer, or edited): copy it again from where it was made, or export it again")


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
    """A YAML file's content; an unreadable file, invalid YAML or a key given twice in one mapping
    is a UserError naming the file and the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder: give the path of a YAML file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str) -> Any:
    """YAML text read as configs are: floats as YAML 1.2 reads them (`1e-4` is a number, not a
    string), and a key given twice in one mapping refused (YAML would keep the last silently)."""
    import yaml

    try:
        return yaml.load(text, Loader=_loader())
    except _GivenTwice as e:
        raise UserError(f"{where}: line {e.line}: {e.key!r} is given twice in one mapping (first on line {e.first}): "
                        "YAML would keep the last silently; keep one") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = "; ".join(str(p) for p in (e.problem, e.context) if p)
        raise UserError(f"{where}: invalid YAML at {at}{what}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{where}: invalid YAML ({str(e).splitlines()[0]})") from None


class _GivenTwice(Exception):
    def __init__(self, key, line: int, first: int):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


@functools.lru_cache(maxsize=None)
def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, Hashable) and key in seen:
                    raise _GivenTwice(key, key_node.start_mark.line + 1, seen[key])
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


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
