"""ncjax's files: output checks before work, atomic writes after it, checked text reads, and
where the bundled resources are.

- `check_writable(path, what)`: before any model is loaded, the file's directory exists (or can
  be made) and is writable and `path` is not a directory; raises ValueError naming the option.
  `check_directory(path, what)` does the same for a directory (a work directory), and
  `check_outputs({what: path})` checks several output files and that no two are the same file.
- `write_text(path, text)` / `write_json(path, obj)` / `write_bytes_with(path, write)`: a
  temporary file in the same directory, flushed to disk and renamed into place, with the user's
  umask applied (mkstemp alone would leave 0600); a failure or an interrupt leaves the old file
  (or nothing), never half a file. JSON is strict: a NaN or infinity becomes null, so every JSON
  reader accepts the file.
- `atomic_directory(dst, overwrite)`: the same for a whole directory (a model export).
- `read_text(path)`: UTF-8 text, with bytes that are not UTF-8 named by file and line.
- `resource_path(*parts)`: a file or directory bundled under `ncjax/resources/` (the one way
  every module finds bundled data).

This is the one place ncjax writes result files; every module writes through it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def resource_path(*parts: str) -> Path:
    """Path of a file or directory bundled under `ncjax/resources/`, e.g. resource_path("gap", "gap-test.tsv")."""
    from importlib import resources

    return Path(str(resources.files("ncjax").joinpath("resources", *parts)))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _writable_parent(path: Path, what: str) -> None:
    """The nearest existing ancestor of `path` is a writable directory (so `path` can be made)."""
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {path}: {existing} is not a directory; choose another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} cannot be written ({existing} is not writable); choose another path.")


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """Raises ValueError (one sentence naming `what`) unless `path` can be written as a file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name.")
    _writable_parent(path, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path} exists and is read-only; choose another path.")
    return path


def check_directory(path: str | os.PathLike, what: str) -> Path:
    """Raises ValueError (one sentence naming `what`) unless `path` is, or can be made, a directory
    this process can write into."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{what} {path} exists and is not a directory; choose another path.")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{what} {path} is not writable; choose another directory.")
        return path
    _writable_parent(path, what)
    return path


def check_outputs(outputs: dict[str, str | os.PathLike | None]) -> None:
    """check_writable for each {what: path} given (None is skipped) and no two naming one file."""
    seen: dict[Path, str] = {}
    for what, path in outputs.items():
        if path is None:
            continue
        check_writable(path, what)
        key = Path(path).absolute()
        if key in seen:
            raise ValueError(f"{seen[key]} and {what} name the same file {path}; give two paths.")
        seen[key] = what


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The text of a UTF-8 file; bytes that are not UTF-8 are a ValueError naming the file, line
    and byte (a bare UnicodeDecodeError names neither file nor line)."""
    data = Path(path).read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: byte 0x{data[e.start]:02x} is not UTF-8 text; re-save the file as "
                         "UTF-8.") from None


def text_stream(path: str | os.PathLike, encoding: str = "utf-8") -> io.StringIO:
    """`read_text` as a file object for csv readers (newlines kept as open(newline='') keeps them)."""
    return io.StringIO(read_text(path, encoding), newline="")


def finite(obj: Any) -> Any:
    """A copy of `obj` with every NaN or infinite float replaced by None (JSON null)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_bytes_with(path: str | os.PathLike, write) -> Path:
    """Calls write(tmp_path) for a temporary file next to `path`, then renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the rename makes it the file
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically writes `text` (UTF-8) to `path`."""
    return write_bytes_with(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> Path:
    """Atomically writes `obj` as indented, strict JSON (non-finite floats as null)."""
    return write_text(path, json.dumps(finite(obj), indent=2, sort_keys=sort_keys, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_directory(dst: str | os.PathLike, overwrite: bool = False):
    """`with atomic_directory(dst) as tmp:` fill `tmp` (a temporary sibling of dst); on success
    every file and directory in it gets the user's umask (mkdtemp leaves 0700 and safetensors
    writes 0600) and it replaces dst; on an error or interrupt it is removed and dst is
    untouched. A non-empty dst needs `overwrite`."""
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"{dst} exists and is not a directory; choose another destination.")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} already exists and is not empty; remove it or pass overwrite.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        mask = _umask()
        for root, dirs, names in os.walk(tmp):
            os.chmod(root, 0o777 & ~mask)
            for name in names:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
