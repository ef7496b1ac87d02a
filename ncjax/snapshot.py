"""A training checkpoint, `<workdir>/checkpoints/<step>/`, as a model source.

Every tool that takes a model (`launch/evaluate.py`, `launch/convert.py`,
`launch/measure_collapse.py`, `model.path` of a training config) resolves a model source through
`ncjax.weights.resolve_source`, which hands a checkpoint step directory to `hf_export` here. The
masked LM of that step is exported once, as a Hugging Face directory, to
`<workdir>/export/step_<step>/hf`: the directory `export.every_steps` writes during training, so a
step that was already exported is read as it is. The export's `config.json` and tokenizer come
from `<workdir>/model/` (which training writes when it starts; `write_model_files`), or, for a
work directory without it, from the checkpoint's `model.path`.

Only the parameters are read from the checkpoint (optimiser state and loss-term state are left
on disk), on the local devices, whatever device count wrote it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODEL_DIR = "model"  # <workdir>/model: config.json and tokenizer of the trained model


def is_step_dir(path: Path) -> bool:
    """Whether `path` is one step of a training run's checkpoints (a directory `<step>` holding
    the `state` and `meta` items)."""
    return path.is_dir() and path.name.isdigit() and (path / "state").is_dir() and (path / "meta").is_dir()


def export_dir(step_dir: Path) -> Path:
    """<workdir>/export/step_<step>/hf of checkpoint `<workdir>/checkpoints/<step>`."""
    return step_dir.parent.parent / "export" / f"step_{int(step_dir.name)}" / "hf"


def write_model_files(model_config: Any, tokenizer_src: Path, workdir: Path) -> Path:
    """Writes `<workdir>/model/` (config.json of `model_config` and the tokenizer of
    `tokenizer_src`), atomically, replacing an older copy; returns it."""
    from ncjax import files
    from ncjax.tokenizer import write_tokenizer

    dst = workdir / MODEL_DIR
    with files.atomic_directory(dst, overwrite=True) as tmp:
        (tmp / "config.json").write_text(json.dumps(model_config.to_hf_dict(), indent=2) + "\n")
        write_tokenizer(tokenizer_src, tmp)
    return dst


def _read_meta(step_dir: Path) -> dict:
    file = step_dir / "meta" / "metadata"
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} is missing; {step_dir} is not a complete training checkpoint.") from None
    except ValueError as e:
        raise ValueError(f"{file} is not valid JSON ({e}); {step_dir} is damaged.") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{file} holds no run config; {step_dir} is not a checkpoint of launch/train.py.")
    return meta


def _model_files(step_dir: Path, meta: dict) -> Path:
    """The directory whose config.json and tokenizer belong to the checkpoint's model."""
    from ncjax.weights import resolve_source

    own = step_dir.parent.parent / MODEL_DIR
    if (own / "config.json").is_file():
        return own
    path = meta["config"].get("model", {}).get("path", "")
    try:
        src = resolve_source(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{step_dir.parent.parent} has no {MODEL_DIR}/ directory and the checkpoint's model.path {path!r} is not "
            f"found from here; run from the directory training ran in, or copy config.json and the tokenizer of "
            f"{path!r} into {own}."
        ) from None
    return src.parent if src.is_file() else src


def restore_params(state_dir: Path) -> dict:
    """The `params` subtree of a train-state checkpoint item as a nested dict of numpy arrays,
    read onto the first local device (the checkpoint may come from any device count)."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from ncjax.weights import unreadable

    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
        with ocp.StandardCheckpointer() as ckptr:
            # orbax warns that an item directory has no step metadata file: true and harmless here
            absl_log = logging.getLogger("absl")
            level = absl_log.level
            absl_log.setLevel(logging.ERROR)
            try:
                stored = ckptr.metadata(state_dir.absolute())
            finally:
                absl_log.setLevel(level)
            stored = getattr(stored, "item_metadata", stored)  # orbax >= 0.11 wraps the tree
            # The whole stored state as the target: it restores on every orbax version ncjax
            # supports; the optimiser state is dropped right after.
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), dict(stored))
            state = ckptr.restore(state_dir.absolute(), target)
    except Exception as e:  # noqa: BLE001  (orbax and tensorstore raise many kinds)
        raise unreadable(state_dir, e) from e
    if "params" not in state:
        raise ValueError(f"{state_dir} holds no params; it is not a train state of launch/train.py.")
    return jax.tree.map(np.asarray, state["params"])


def hf_export(step_dir: str | Path) -> Path:
    """The Hugging Face directory of checkpoint `step_dir` (`export_dir`), written first when it
    does not exist yet. Raises FileNotFoundError / ValueError naming the file at fault."""
    from flax import nnx

    from ncjax import convert
    from ncjax.model import BertForMaskedLM

    step_dir = Path(step_dir).absolute()
    dst = export_dir(step_dir)
    if (dst / "config.json").is_file() and (dst / "model.safetensors").is_file():
        return dst
    meta = _read_meta(step_dir)
    source = _model_files(step_dir, meta)
    config = convert.load_config(source)
    params = restore_params(step_dir / "state")
    # the parameter layout follows these two options of the run (stacked layers; own decoder)
    model = BertForMaskedLM(config, rngs=nnx.Rngs(0), scan_layers=bool(meta["config"].get("model", {}).get("scan_layers")))
    if "decoder" in params.get("head", {}):  # trained with model.untie_decoder
        model.untie()
    expected = convert.model_params(model)
    flat = {tuple(int(k) if isinstance(k, str) and k.isdigit() else k for k in path): value
            for path, value in _flatten(params)}
    if set(flat) != set(expected) or any(flat[k].shape != expected[k].shape for k in expected):
        raise ValueError(f"{step_dir} holds parameters of another model than {source / 'config.json'} describes; "
                         f"copy the config.json the run trained with into {step_dir.parent.parent / MODEL_DIR}.")
    convert.set_params(model, flat)
    try:
        convert.save_hf(model, config, dst, tokenizer_src=source, overwrite=True)
    except PermissionError as e:
        raise PermissionError(f"cannot write the export of {step_dir} to {dst} ({e.strerror}); make "
                              f"{step_dir.parent.parent} writable or copy the run directory somewhere writable.") from e
    log.info("exported checkpoint %s to %s", step_dir, dst)
    return dst


def _flatten(tree: dict, prefix: tuple = ()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v
