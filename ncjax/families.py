"""Model families: `model_type` -> how ncjax reads, builds, converts and tokenises such a model.

One `Family` per supported Hugging Face `model_type` (see docs/families.md):

- `bert`: absolute positions, token types, WordPiece; head `cls.predictions`.
- `roberta`: position ids counted from `pad_token_id + 1` over non-padding tokens (transformers'
  `create_position_ids_from_input_ids`), a single token type, byte-level BPE (a word that follows
  a space starts with the `Ġ` marker); head `lm_head` (dense, exact GELU, layer_norm, decoder).
- `distilbert`: no token types, attention `q_lin/k_lin/v_lin/out_lin`, `sa_layer_norm`,
  `ffn.lin1/lin2`, `output_layer_norm`; head `vocab_transform` -> activation ->
  `vocab_layer_norm` -> `vocab_projector`; WordPiece. Its config names (`dim`, `n_layers`, ...)
  are read into the shared `BertConfig` fields and written back.
- `albert`: factorised embeddings (`embedding_size`, projected to `hidden_size` by
  `embedding_hidden_mapping_in`), `num_hidden_groups` groups of `inner_group_num` layers shared
  across depth, head `predictions` (dense hidden -> embedding, activation, LayerNorm, decoder);
  SentencePiece (`▁` marks every word start).

Every family runs the same post-LayerNorm encoder (`ncjax.layers`); a family differs only in the
options below and in its parameter names. `name_map(config)` lists, for every ncjax parameter, its
Hugging Face key and the hooks that convert the tensor each way. `check_config` checks a
config.json's fields before any family builds a model from it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

Row = tuple[tuple[Any, ...], str, Callable, Callable]  # (ncjax path, HF key, to ncjax, to HF)

# ncjax module names inside one encoder layer (`ncjax.layers.Layer`), in parameter order.
LAYER_MODULES = ("query", "key", "value", "attention_out", "attention_norm", "intermediate", "output", "output_norm")
_BERT_LAYER = dict(zip(LAYER_MODULES, (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")))


@dataclasses.dataclass(frozen=True)
class Tokenization:
    """kind: 'wordpiece', 'bpe' (byte-level) or 'unigram' (SentencePiece); word_start: the marker
    a word-initial piece carries ('' when word-initial pieces are unmarked and continuations carry
    '##'); stereoset_leading_space: StereoSet fillers are encoded as ' ' + word (bias-bench does so
    for RoBERTa only)."""

    kind: str
    word_start: str
    stereoset_leading_space: bool = False


@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str  # the transformers masked-LM class of exports
    prefix: str  # the encoder's key prefix ("bert.")
    head_prefixes: tuple[str, ...]  # keys of the MLM head start with one of these
    embeddings: dict[str, str]  # ncjax embeddings module -> HF module (minus prefix)
    layer_modules: dict[str, str]  # ncjax layer module -> HF module (minus the layer's prefix)
    layer_prefix: Callable[[int, Any], str]  # ncjax layer index, config -> the layer's HF prefix
    head: dict[str, str]  # ncjax head module ("dense", "norm", "bias") -> HF key or module
    decoder: str  # the HF decoder module (its weight is tied to the word embeddings)
    tokenization: Tokenization
    token_types: bool = True  # token-type embeddings exist
    padding_positions: bool = False  # RoBERTa's position ids (see module docstring)
    factorised: bool = False  # ALBERT: embeddings of embedding_size projected to hidden_size
    head_act: str | None = None  # the head's activation; None: the config's hidden_act
    ignored_prefixes: tuple[str, ...] = ()  # keys that are not part of a masked LM
    config_in: Callable[[dict[str, Any]], dict[str, Any]] = dict  # HF config -> BertConfig fields
    config_out: Callable[[dict[str, Any]], dict[str, Any]] = dict  # BertConfig fields -> HF config

    @property
    def decoder_keys(self) -> tuple[str, str]:
        return self.decoder + ".weight", self.decoder + ".bias"


def _rename(pairs: dict[str, str]) -> tuple[Callable, Callable]:
    """Config translators for a family whose HF names differ from BertConfig's: HF -> ncjax, back."""
    def inward(d):
        out = dict(d)
        for hf, ours in pairs.items():
            if hf in d:
                out[ours] = d[hf]
        return out

    def outward(d):
        return {pairs_back.get(k, k): v for k, v in d.items()}

    pairs_back = {v: k for k, v in pairs.items()}
    return inward, outward


_DISTIL_IN, _DISTIL_OUT = _rename({
    "dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
    "hidden_dim": "intermediate_size", "activation": "hidden_act", "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob"})


def _distil_in(d: dict[str, Any]) -> dict[str, Any]:
    return {**_DISTIL_IN(d), "type_vocab_size": 0, "layer_norm_eps": 1e-12}  # fixed in DistilBERT


def _distil_out(d: dict[str, Any]) -> dict[str, Any]:
    d = {k: v for k, v in d.items() if k not in ("type_vocab_size", "layer_norm_eps")}
    return {**_DISTIL_OUT(d), "sinusoidal_pos_embds": False, "tie_weights_": True}


def _albert_layer(i: int, config: Any) -> str:
    group, inner = divmod(i, config.inner_group_num)
    return f"albert.encoder.albert_layer_groups.{group}.albert_layers.{inner}"


def _embeddings(prefix: str, token_types: bool = True) -> dict[str, str]:
    names = {"word": "word_embeddings", "position": "position_embeddings", "token_type": "token_type_embeddings",
             "norm": "LayerNorm"}
    if not token_types:
        del names["token_type"]
    return {k: f"{prefix}embeddings.{v}" for k, v in names.items()}


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family(
        "bert", "BertForMaskedLM", "bert.", ("cls.",), _embeddings("bert."), _BERT_LAYER,
        lambda i, c: f"bert.encoder.layer.{i}",
        {"dense": "cls.predictions.transform.dense", "norm": "cls.predictions.transform.LayerNorm",
         "bias": "cls.predictions.bias"}, "cls.predictions.decoder",
        Tokenization("wordpiece", ""), ignored_prefixes=("bert.pooler.", "cls.seq_relationship.")),
    Family(
        "roberta", "RobertaForMaskedLM", "roberta.", ("lm_head.",), _embeddings("roberta."), _BERT_LAYER,
        lambda i, c: f"roberta.encoder.layer.{i}",
        {"dense": "lm_head.dense", "norm": "lm_head.layer_norm", "bias": "lm_head.bias"}, "lm_head.decoder",
        Tokenization("bpe", "Ġ", stereoset_leading_space=True), padding_positions=True, head_act="gelu",
        ignored_prefixes=("roberta.pooler.",)),
    Family(
        "distilbert", "DistilBertForMaskedLM", "distilbert.", ("vocab_",), _embeddings("distilbert.", False),
        dict(zip(LAYER_MODULES, ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
                                 "sa_layer_norm", "ffn.lin1", "ffn.lin2", "output_layer_norm"))),
        lambda i, c: f"distilbert.transformer.layer.{i}",
        {"dense": "vocab_transform", "norm": "vocab_layer_norm", "bias": "vocab_projector.bias"}, "vocab_projector",
        Tokenization("wordpiece", ""), token_types=False, config_in=_distil_in, config_out=_distil_out),
    Family(
        "albert", "AlbertForMaskedLM", "albert.", ("predictions.",),
        {**_embeddings("albert."), "project": "albert.encoder.embedding_hidden_mapping_in"},
        dict(zip(LAYER_MODULES, ("attention.query", "attention.key", "attention.value", "attention.dense",
                                 "attention.LayerNorm", "ffn", "ffn_output", "full_layer_layer_norm"))),
        _albert_layer,
        {"dense": "predictions.dense", "norm": "predictions.LayerNorm", "bias": "predictions.bias"},
        "predictions.decoder", Tokenization("unigram", "▁"), factorised=True,
        ignored_prefixes=("albert.pooler.", "sop_classifier.")),
)}

MODEL_TYPES = tuple(FAMILIES)


def get(model_type: str) -> Family:
    """The family of a `model_type`; ValueError naming the supported ones otherwise."""
    if model_type not in FAMILIES:
        raise ValueError(f"config model_type is {model_type!r}; ncjax loads {', '.join(MODEL_TYPES)} checkpoints: "
                         "use a checkpoint of one of these families.")
    return FAMILIES[model_type]


# ----------------------------------------------------------------------------- the name map

def _identity(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    """A [out, in] PyTorch Linear weight <-> a [in, out] Flax kernel."""
    return np.ascontiguousarray(x.T)


def _module_rows(path: tuple[Any, ...], hf: str) -> list[Row]:
    """Rows of one module: an embedding table, a LayerNorm (names ending in 'norm') or a linear."""
    if path[0] == "embeddings" and path[-1] in ("word", "position", "token_type"):
        return [(path + ("embedding",), hf + ".weight", _identity, _identity)]
    if path[-1].endswith("norm"):
        return [(path + ("scale",), hf + ".weight", _identity, _identity),
                (path + ("bias",), hf + ".bias", _identity, _identity)]
    return [(path + ("kernel",), hf + ".weight", transpose, transpose),
            (path + ("bias",), hf + ".bias", _identity, _identity)]


def num_layer_modules(config: Any) -> int:
    """Distinct encoder layers holding parameters (ALBERT shares them across depth)."""
    if get(config.model_type).factorised:
        return config.num_hidden_groups * config.inner_group_num
    return config.num_hidden_layers


def layer_schedule(config: Any) -> list[int]:
    """The parameter layer applied at each depth: range(L) for BERT; ALBERT runs group
    int(i / (L / groups)) at depth i, each group being inner_group_num layers in turn."""
    if not get(config.model_type).factorised:
        return list(range(config.num_hidden_layers))
    n, groups, inner = config.num_hidden_layers, config.num_hidden_groups, config.inner_group_num
    return [int(i / (n / groups)) * inner + j for i in range(n) for j in range(inner)]


def name_map(config: Any) -> list[Row]:
    """Rows (ncjax state path, HF key, HF->ncjax hook, ncjax->HF hook) for every parameter."""
    fam = get(config.model_type)
    rows: list[Row] = []
    for name, hf in fam.embeddings.items():
        rows += _module_rows(("embeddings", name), hf)
    for i in range(num_layer_modules(config)):
        for name, hf in fam.layer_modules.items():
            rows += _module_rows(("layers", i, name), f"{fam.layer_prefix(i, config)}.{hf}")
    rows += _module_rows(("head", "dense"), fam.head["dense"])
    rows += _module_rows(("head", "norm"), fam.head["norm"])
    rows.append((("head", "bias"), fam.head["bias"], _identity, _identity))
    return rows


def sinusoidal_positions(num_positions: int, dim: int) -> np.ndarray:
    """[num_positions, dim] float32: DistilBERT's fixed position table (`sinusoidal_pos_embds`), as
    transformers builds it: angle p / 10000^(2 * (j // 2) / dim), sine in even columns, cosine in odd."""
    pos = np.arange(num_positions)[:, None] / np.power(10000, 2 * (np.arange(dim) // 2) / dim)[None, :]
    out = np.empty((num_positions, dim), np.float32)
    out[:, 0::2], out[:, 1::2] = np.sin(pos[:, 0::2]), np.cos(pos[:, 1::2])
    return out


# ----------------------------------------------------------------------------- config.json

# config.json fields checked before a model is built: name -> (kind, smallest value, bound above
# (excluded)); layer_norm_eps's None: any positive number
_CONFIG_FIELDS = {
    **{k: ("int", 1, None) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                     "intermediate_size", "max_position_embeddings", "type_vocab_size")},
    "pad_token_id": ("int", 0, None),
    "hidden_dropout_prob": ("number", 0.0, 1.0),
    "attention_probs_dropout_prob": ("number", 0.0, 1.0),
    "layer_norm_eps": ("number", None, None),
    "initializer_range": ("number", 0.0, None),
    "hidden_act": ("str", None, None),
    "model_type": ("str", None, None),
}


def check_config(d: Any, file: Any) -> dict[str, Any]:
    """Raises ValueError (one sentence naming `file` and the field) unless `d`, read from
    `file`, is a JSON object whose known fields have the right types and ranges and whose
    `model_type` (default bert) is one of MODEL_TYPES; returns `d`."""
    if not isinstance(d, dict):
        raise ValueError(f"{file} holds a JSON {type(d).__name__}, not an object; a model config.json is an object.")
    for name, (kind, low, high) in _CONFIG_FIELDS.items():
        value = d.get(name)
        if value is None:
            continue
        if kind == "str":
            ok = isinstance(value, str)
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            need = {"str": "a string", "int": "a whole number", "number": "a number"}[kind]
            raise ValueError(f"{file}: field {name} is {value!r}, not {need}; fix config.json.")
        if kind == "str":
            continue
        if not ((value > 0 if low is None else value >= low) and (high is None or value < high)):
            rng = f"in [{low}, {high})" if high is not None else f"at least {low}" if low is not None else "positive"
            raise ValueError(f"{file}: field {name} is {value!r}; it must be {rng}. Fix config.json.")
    model_type = d.get("model_type", "bert")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{file}: model_type {model_type!r} is not one ncjax loads ({', '.join(MODEL_TYPES)}).")
    return d
