"""Hugging Face <-> ncjax parameter conversion: an explicit name map plus small per-tensor hooks.

Reading needs numpy and safetensors only (torch only for `pytorch_model.bin`). Accepted sources:
a local directory, a single weight file (its directory supplies `config.json`), an ncjax
parameter checkpoint (written by `save_ncjax`), a training checkpoint step (`ncjax.snapshot`), or
a hub id resolved through `huggingface_hub`. Config checks live in `ncjax.families`, tokenizer
handling in `ncjax.tokenizer`.
Every model family (`ncjax.families`) converts through its own name map. Weight layouts:
`model.safetensors`, sharded `model.safetensors.index.json`, `pytorch_model.bin`,
`flax_model.msgpack` (the transformers-4.x Flax layout; a DistilBERT with sinusoidal positions
gets the table that layout leaves out), and legacy names
(`LayerNorm.gamma/beta`, `position_ids` buffers, pooler and NSP heads, an explicit decoder
weight and bias, which must equal the word embeddings and the prediction bias). Encoder-only
checkpoints (`BertModel` and the like, no head keys) load only with `init_missing_head=True`.

Writing produces the transformers-5 layout: `model.safetensors` with `{"format": "pt"}`
metadata, `config.json` and the tokenizer files, into a temporary sibling directory that is
renamed into place, so a failed export never leaves a half-written directory.
"""

from __future__ import annotations

import dataclasses

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ncjax import families, files
from ncjax import tokenizer as tokenizers
from ncjax.tokenizer import write_tokenizer
from ncjax.model import BertConfig, BertForMaskedLM
from ncjax.weights import (  # noqa: F401  (minilm_dir and resolve_source are part of this API)
    NCJAX_MARKER,
    config_dir_and_weights,
    minilm_dir,
    read_weights,
    resolve_source,
)

log = logging.getLogger(__name__)


# Keys that carry no parameters of a masked LM: dropped with a log line (plus each family's
# pooler and pre-training heads, `Family.ignored_prefixes`).
_IGNORED_SUFFIXES = ("embeddings.position_ids",)
_WORD_PATH = ("embeddings", "word", "embedding")
_transpose = families.transpose
name_map = families.name_map  # part of this module's API


def _normalise_key(key: str, fam: families.Family) -> str:
    """Legacy and encoder-only spellings -> the transformers-5 masked-LM key of the family."""
    if not key.startswith((fam.prefix, *fam.head_prefixes)):
        key = fam.prefix + key  # encoder-only checkpoints (BertModel, ...) have no prefix
    if key.endswith(".gamma"):
        key = key[: -len(".gamma")] + ".weight"
    elif key.endswith(".beta"):
        key = key[: -len(".beta")] + ".bias"
    return key


# ----------------------------------------------------------------------------- HF -> ncjax

def _tie_decoder(named: dict[str, np.ndarray], fam: families.Family, source: str) -> None:
    """Drops an explicit decoder weight and bias after checking they equal the word embeddings and
    the prediction bias (ncjax ties them), in place."""
    word_key = fam.embeddings["word"] + ".weight"
    weight_key, bias_key = fam.decoder_keys
    decoder_w = named.pop(weight_key, None)
    if decoder_w is not None and word_key in named:
        if decoder_w.shape != named[word_key].shape or not np.array_equal(decoder_w, named[word_key]):
            raise ValueError(
                f"{source}: {weight_key} differs from {word_key}; "
                "ncjax ties them, so this checkpoint's untied decoder cannot be represented."
            )
    if bias_key == fam.head["bias"]:  # DistilBERT: the decoder's bias is the prediction bias
        return
    decoder_b = named.pop(bias_key, None)
    if decoder_b is not None:
        bias = named.setdefault(fam.head["bias"], decoder_b)
        if not np.array_equal(bias, decoder_b):
            raise ValueError(f"{source}: {bias_key} differs from {fam.head['bias']}; they must be one tensor.")


def hf_to_params(
    tensors: dict[str, np.ndarray],
    config: BertConfig,
    *,
    source: str,
    init_missing_head: bool = False,
    fallback: dict[tuple[Any, ...], np.ndarray] | None = None,
) -> dict[tuple[Any, ...], np.ndarray]:
    """HF-named tensors -> {ncjax state path: float32 array}, checking names and shapes.

    `fallback` supplies initialised values used for the MLM head when `init_missing_head`."""
    fam = families.get(config.model_type)
    named = {}
    for key, value in tensors.items():
        norm = _normalise_key(key, fam)
        if norm in named:
            raise ValueError(f"{source} holds {key} twice (as {norm}); remove the duplicate.")
        named[norm] = value
    ignored = [k for k in named if k.endswith(_IGNORED_SUFFIXES) or k.startswith(fam.ignored_prefixes)]
    for key in ignored:
        del named[key]
    if ignored:
        log.info("%s: ignoring %s (not part of a masked LM)", source, ", ".join(ignored))
    _tie_decoder(named, fam, source)

    rows = name_map(config)
    known = {hf for _, hf, _, _ in rows}
    unknown = sorted(set(named) - known)
    if unknown:
        raise ValueError(
            f"{source} has keys ncjax does not know: {', '.join(unknown[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}; is this a {fam.architecture} checkpoint?"
        )
    missing = [hf for _, hf, _, _ in rows if hf not in named]
    head_missing = [k for k in missing if k.startswith(fam.head_prefixes)]
    other_missing = [k for k in missing if not k.startswith(fam.head_prefixes)]
    if other_missing:
        raise ValueError(f"{source} is missing {', '.join(other_missing[:8])}; the checkpoint is incomplete.")
    if head_missing and not init_missing_head:
        raise ValueError(
            f"{source} has no MLM head ({', '.join(head_missing[:3])} ...); it is an encoder-only checkpoint: "
            "pass init_missing_head=True (--init-missing-head) to initialise a fresh head."
        )
    if head_missing and len(head_missing) != sum(hf.startswith(fam.head_prefixes) for _, hf, _, _ in rows):
        raise ValueError(f"{source} has a partial MLM head: {', '.join(head_missing)} missing.")
    params = {}
    for path, hf, to_ncjax, to_hf in rows:
        if hf not in named:
            assert fallback is not None, "init_missing_head needs initialised fallback values"
            params[path] = np.asarray(fallback[path], np.float32)
            continue
        if fallback is not None:
            expected = to_hf(np.empty(np.shape(fallback[path]), np.float32)).shape
            if tuple(np.shape(named[hf])) != tuple(expected):
                raise ValueError(
                    f"{source}: {hf} has shape {tuple(np.shape(named[hf]))} but config.json needs "
                    f"{tuple(expected)}; the config and the weights disagree."
                )
        value = to_ncjax(np.asarray(named[hf]))
        params[path] = value.astype(np.float32)
    if head_missing:
        log.warning("%s: initialised a fresh MLM head (seeded); it is untrained.", source)
    return params


def set_params(model: BertForMaskedLM, params: dict[tuple[Any, ...], np.ndarray]) -> None:
    """Overwrites the model's parameters at the given ncjax state paths (as `model_params` names
    them) with the given arrays, in place."""
    _, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    for path, value in params.items():
        node = pure
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = jnp.asarray(value)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def model_params(model: BertForMaskedLM) -> dict[tuple[Any, ...], np.ndarray]:
    """{ncjax state path: numpy array} of every parameter."""
    _, state = nnx.split(model)
    return {tuple(path): np.asarray(v[...]) for path, v in nnx.to_flat_state(state)}


# The model families ncjax loads (config.json `model_type`): the registry of ncjax.families.
MODEL_TYPES = families.MODEL_TYPES
# Part of this module's API, defined where they belong:
check_config = families.check_config
check_tokenizer = tokenizers.check_tokenizer
has_tokenizer = tokenizers.has_tokenizer
load_tokenizer = tokenizers.load_tokenizer


def load_config(directory: Path) -> BertConfig:
    """The checked config.json of a checkpoint directory."""
    file = directory / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{directory} has no config.json; a checkpoint directory needs one.")
    try:
        d = json.loads(files.read_text(file))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e}); fix or replace it.") from e
    return BertConfig.from_hf_dict(check_config(d, file))


def _add_fixed_positions(tensors: dict[str, np.ndarray], directory: Path, config: BertConfig) -> dict[str, np.ndarray]:
    """The weights, plus DistilBERT's sinusoidal position table when config.json sets
    `sinusoidal_pos_embds` and the file holds no table: transformers-4.x Flax checkpoints compute
    it instead of storing it (PyTorch ones store it). ncjax keeps it as a parameter, as it keeps
    every stored table."""
    fam = families.get(config.model_type)
    key = fam.embeddings["position"] + ".weight"
    if fam.model_type != "distilbert" or any(k.endswith(key.split(".", 1)[1]) for k in tensors):
        return tensors
    if not json.loads(files.read_text(directory / "config.json")).get("sinusoidal_pos_embds", False):
        return tensors
    return {**tensors, key: families.sinusoidal_positions(config.max_position_embeddings, config.hidden_size)}


def load_model(
    src: str | os.PathLike,
    *,
    init_missing_head: bool = False,
    seed: int = 0,
    dtype: Any = jnp.float32,
    remat: bool = False,
    overrides: dict[str, Any] | None = None,
    untie_decoder: bool = False,
    **options: Any,
) -> tuple[BertForMaskedLM, BertConfig]:
    """Loads a masked LM of any family (`ncjax.families`) from a HF directory, weight file, ncjax checkpoint or hub id.

    With `init_missing_head`, an encoder-only checkpoint gets a fresh MLM head initialised as
    transformers does (normal(0.02) dense, unit LayerNorm, zero bias) from `seed`. `overrides`
    replaces config fields that carry no weights (e.g. dropout probabilities); `options`
    (attention, attention_impl, scan_layers, remat_policy) go to `BertForMaskedLM`. With
    `untie_decoder`, the MLM head gets its own decoder matrix, a copy of the loaded word
    embeddings (the checkpoint's tied decoder)."""
    path = resolve_source(src)
    directory, weights = config_dir_and_weights(path)
    config = load_config(directory)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    model = BertForMaskedLM(config, rngs=nnx.Rngs(seed), dtype=dtype, remat=remat, **options)
    if weights is None:
        params = _read_ncjax_params(directory, model)
    else:
        fallback = model_params(model)
        params = hf_to_params(
            _add_fixed_positions(read_weights(weights), directory, config), config, source=str(weights),
            init_missing_head=init_missing_head, fallback=fallback,
        )
    set_params(model, params)
    if untie_decoder:  # after loading: checkpoints hold the tied layout
        model.untie()
    return model, config


POOLER_KEYS = ("bert.pooler.dense.weight", "bert.pooler.dense.bias")  # BERT's; other families: their prefix


def load_pooler(src: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The pretrained pooler of a checkpoint as {"kernel": [hidden, hidden], "bias": [hidden]}
    (ncjax layout: y = tanh(x @ kernel + bias)), or None when the checkpoint has none.

    The masked LM ignores the pooler; sequence-classification heads start from it. ncjax
    parameter checkpoints hold no pooler (None)."""
    path = resolve_source(src)
    directory, weights = config_dir_and_weights(path)
    if weights is None:
        return None
    fam = families.get(load_config(directory).model_type)
    keys = tuple(fam.prefix + k.split(".", 1)[1] for k in POOLER_KEYS)
    named = {_normalise_key(k, fam): v for k, v in read_weights(weights).items()}
    found = [k for k in keys if k in named]
    if not found:
        return None
    if len(found) != len(keys):
        raise ValueError(f"{weights} has {found[0]} but not {set(keys) - set(found)}; the pooler is incomplete.")
    w, b = (np.asarray(named[k], np.float32) for k in keys)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or b.shape != (w.shape[0],):
        raise ValueError(f"{weights}: pooler shapes {w.shape} and {b.shape} are not [hidden, hidden] and [hidden].")
    return {"kernel": _transpose(w), "bias": b}


# ----------------------------------------------------------------------------- ncjax -> HF

def params_to_hf(model: BertForMaskedLM) -> dict[str, np.ndarray]:
    """{HF key: contiguous float32 numpy array} in the transformers-5 masked-LM layout of the family.

    An untied model is tied back the way MABEL's conversion did it: that script loads the
    trained decoder into the tied head of a BertForMaskedLM, which overwrites the shared word
    embeddings, so the decoder matrix is kept (as input embeddings and decoder alike) and the
    separately trained input embeddings are dropped."""
    params = model_params(model)
    if model.untied:
        params[_WORD_PATH] = params[("head", "decoder")]
    return {hf: np.ascontiguousarray(to_hf(params[path]), np.float32)
            for path, hf, _, to_hf in name_map(model.config)}


def save_hf(
    model: BertForMaskedLM,
    config: BertConfig,
    dst: str | os.PathLike,
    *,
    tokenizer_src: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a transformers-5 masked-LM directory of the model's family (weights, config,
    tokenizer) atomically."""
    from safetensors.numpy import save_file

    dst = Path(dst)
    with files.atomic_directory(dst, overwrite) as tmp:
        save_file(params_to_hf(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
        write_tokenizer(tokenizer_src, tmp)
    return dst


# ----------------------------------------------------------------------------- ncjax checkpoints

def save_ncjax(
    model: BertForMaskedLM,
    config: BertConfig,
    dst: str | os.PathLike,
    *,
    tokenizer_src: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes an ncjax parameter checkpoint (orbax) with config.json and tokenizer files.

    `load_model(dst)` reads it back, so training can start from it."""
    import orbax.checkpoint as ocp

    dst = Path(dst)
    _, state = nnx.split(model)
    with files.atomic_directory(dst, overwrite) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save((tmp / "params").absolute(), nnx.to_pure_dict(state))
        (tmp / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
        (tmp / NCJAX_MARKER).write_text(json.dumps({"format": "ncjax-params", "version": 1}) + "\n")
        write_tokenizer(tokenizer_src, tmp)
    return dst


def _read_ncjax_params(directory: Path, model: BertForMaskedLM) -> dict[tuple[Any, ...], np.ndarray]:
    import orbax.checkpoint as ocp

    from ncjax.weights import unreadable

    try:
        marker = json.loads((directory / NCJAX_MARKER).read_text(encoding="utf-8"))
    except ValueError as e:  # JSON or UTF-8
        raise unreadable(directory / NCJAX_MARKER, e) from e
    if not isinstance(marker, dict) or marker.get("format") != "ncjax-params":
        found = marker.get("format") if isinstance(marker, dict) else marker
        raise ValueError(f"{directory / NCJAX_MARKER} names format {found!r}; expected 'ncjax-params'.")
    _, state = nnx.split(model)
    target = nnx.to_pure_dict(state)
    params_dir = directory / "params"
    if not params_dir.is_dir():
        raise FileNotFoundError(f"{params_dir} is missing; {directory} is an incomplete ncjax checkpoint.")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            restored = ckptr.restore(params_dir.absolute(), target)
    except Exception as e:  # noqa: BLE001  (orbax and tensorstore raise many kinds)
        raise unreadable(params_dir, e, "is truncated, corrupt or of another model than its config.json") from e
    flat = {}

    def walk(node, prefix):
        for k, v in node.items():
            # orbax stores integer keys (layer indices) as strings.
            key = int(k) if isinstance(k, str) and k.isdigit() else k
            if isinstance(v, dict):
                walk(v, prefix + (key,))
            else:
                flat[prefix + (key,)] = np.asarray(v)

    walk(restored, ())
    return flat
