"""The small interface every bias benchmark scores through, with a `jax` and a `torch` backend.

Benchmarks never call a model directly. They build `MaskedQuery` rows (a token sequence, the
one position whose prediction is read, and the vocabulary ids whose log-probabilities are
wanted) and token sequences for sentence embeddings, and hand them to a `Scorer`:

    scorer.masked_log_probs(queries)      -> one float64 array [len(query.targets)] per query
    scorer.sentence_embeddings(sequences) -> float32 [n_sequences, hidden]

The base class does what makes scoring fast and is shared by both backends: identical inputs
are run once (StereoSet's first-piece inputs are the same for all three candidates, WinoBias's
pro and anti sentences are the same once the pronoun is masked, BEC-Pro repeats each masked
sentence for every person word with the same determiner), rows are sorted by length and cut
into batches, and each batch is padded with attention mask 0 to its longest row rounded up to a
multiple of `length_multiple`, or, when that is None, to the next length of `LENGTH_LADDER` (so
padding never changes a score beyond float rounding). Backends only implement two batch
functions over padded int arrays. Every token a query gives is attended; padding added here
never is.

Backends:
- `JaxScorer`: an ncjax `BertForMaskedLM`; jitted functions of (state, inputs) with fixed batch
  rows, lengths on `LENGTH_LADDER` and the target axis rounded to 4, so a whole evaluation
  compiles a handful of times (about six shapes per function for the bundled data); MLM logits
  are computed only at the read positions; float32 matmuls (no TF32) to match the reference.
- `TorchScorer` (`ncjax.bench.eager`, importable from here too): any Hugging Face masked-LM
  directory through transformers, batched under `torch.inference_mode`. Importing this module
  imports neither torch nor transformers.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from ncjax import families

logger = logging.getLogger(__name__)

BACKENDS = ("jax", "torch")


def __getattr__(name: str) -> Any:
    # TorchScorer lives in ncjax.bench.eager, which subclasses Scorer from here; importing it on
    # first use keeps `from ncjax.bench.scorer import TorchScorer` working without an import cycle.
    if name == "TorchScorer":
        from ncjax.bench.eager import TorchScorer

        return TorchScorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass(frozen=True)
class MaskedQuery:
    """One masked-LM read: log p(target | token_ids) at `position`, for each target.

    token_ids: the full input, special tokens included; every token is attended.
    position: index into token_ids whose output distribution is read.
    targets: vocabulary ids whose log-probabilities are returned, in this order.
    """

    token_ids: tuple[int, ...]
    position: int
    targets: tuple[int, ...]


class Progress(Protocol):
    """What the scorer needs from a progress bar (tqdm satisfies it)."""

    total: int | float | None

    def update(self, n: int = 1) -> Any: ...

    def refresh(self) -> Any: ...


# Padded lengths for fixed-shape backends: fine steps where benchmark sentences are (8-40 tokens),
# coarse above, so padding stays near 25 % of the tokens while few shapes are compiled.
LENGTH_LADDER = (8, 16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 448, 512)


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def padded_length(n: int, multiple: int | None, max_length: int) -> int:
    """n rounded up to a multiple of `multiple`, or to the next LENGTH_LADDER entry (None)."""
    if multiple is None:
        up = next((x for x in LENGTH_LADDER if x >= n), _round_up(n, 64))
    else:
        up = _round_up(n, multiple)
    return max(n, min(up, max_length))


class Scorer:
    """Backend-agnostic batching; subclasses implement `_log_probs_batch` and `_mean_hidden_batch`.

    Args:
      tokenizer: a transformers tokenizer (fast BERT tokenizer for ncjax models).
      vocab_size: rows of the model's decoder; at least len(tokenizer) (a padded vocabulary is fine).
      max_length: the model's max_position_embeddings; longer inputs are an error.
      batch_size: rows per forward pass.
      length_multiple: padded lengths are rounded up to this multiple; None: to LENGTH_LADDER.
      fixed_batch: pad every batch to exactly batch_size rows (fixed shapes for jit).
      source: shown in error messages (the model directory).
      model_type: the model's family (`ncjax.families`), for its tokenizer conventions.
    """

    backend = "base"

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        max_length: int,
        batch_size: int = 64,
        length_multiple: int | None = None,
        fixed_batch: bool = False,
        source: str = "model",
        model_type: str = "bert",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        from ncjax.convert import check_tokenizer

        check_tokenizer(tokenizer, vocab_size, source)
        if tokenizer.mask_token_id is None:
            raise ValueError(f"The tokenizer of {source} has no mask token; a masked LM tokenizer is needed.")
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.length_multiple = length_multiple
        self.fixed_batch = fixed_batch
        self.source = source
        self.family = families.get(model_type)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # -- backend hooks ---------------------------------------------------------------------------
    def _log_probs_batch(
        self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, targets: np.ndarray
    ) -> np.ndarray:
        """ids, mask [B, L] int32; positions [B] int32; targets [B, T] int32 -> log-probs [B, T] float32
        (any array numpy can read; it may still be computing)."""
        raise NotImplementedError

    def _mean_hidden_batch(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask [B, L] int32 -> mean of the last encoder layer over attended tokens [B, H] float32."""
        raise NotImplementedError

    def check_inputs(self, seqs: Sequence[Sequence[int]]) -> None:
        """Raises ValueError, as scoring would, on a sequence that is empty, longer than the
        model's positions or holds an id outside the vocabulary; checked before any compute."""
        for seq in seqs:
            self._check_length(seq)
            bad = [t for t in seq if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"Token id {bad[0]} is outside the vocabulary of size {self.vocab_size} "
                                 f"({self.source}); use the tokenizer saved with this model.")

    # -- batching --------------------------------------------------------------------------------
    def _check_length(self, seq: Sequence[int]) -> None:
        if len(seq) > self.max_length:
            raise ValueError(
                f"An input of {len(seq)} tokens is longer than the model's max_position_embeddings "
                f"{self.max_length} ({self.source}); shorten the benchmark sentence."
            )
        if len(seq) == 0:
            raise ValueError("An empty token sequence was given to the scorer; every input needs tokens.")

    def _batches(self, lengths: Sequence[int]) -> Iterable[tuple[np.ndarray, int]]:
        """Yields (row indices, padded length) with rows sorted by length (stable)."""
        order = np.argsort(np.asarray(lengths), kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            longest = max(lengths[i] for i in rows)
            yield rows, padded_length(longest, self.length_multiple, self.max_length)

    def _pack(self, seqs: Sequence[Sequence[int]], rows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.batch_size if self.fixed_batch else len(rows)
        ids = np.full((n, length), self.pad_id, dtype=np.int32)
        mask = np.zeros((n, length), dtype=np.int32)
        mask[:, 0] = 1  # filler rows attend to one token so no row is fully masked
        for r, i in enumerate(rows):
            s = seqs[i]
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1
        return ids, mask

    @staticmethod
    def _start_progress(progress: Progress | None, n: int) -> None:
        if progress is not None:
            progress.total = (progress.total or 0) + n
            progress.refresh()

    def masked_log_probs(
        self, queries: Sequence[MaskedQuery], progress: Progress | None = None
    ) -> list[np.ndarray]:
        """Log-softmax values at each query's position for its targets.

        Returns one float64 array [len(q.targets)] per query (values computed in float32).
        Identical (token_ids, position) pairs share one model row.
        """
        row_of: dict[tuple[tuple[int, ...], int], int] = {}
        row_seqs: list[tuple[int, ...]] = []
        row_pos: list[int] = []
        row_targets: list[dict[int, int]] = []
        slots: list[list[int]] = []
        for q in queries:
            if not 0 <= q.position < len(q.token_ids):
                raise ValueError(f"Query position {q.position} is outside its {len(q.token_ids)} tokens.")
            for t in q.targets:
                if not 0 <= t < self.vocab_size:
                    raise ValueError(f"Target id {t} is outside the vocabulary of size {self.vocab_size}.")
            key = (tuple(q.token_ids), int(q.position))
            r = row_of.get(key)
            if r is None:
                self._check_length(q.token_ids)
                r = row_of[key] = len(row_seqs)
                row_seqs.append(key[0])
                row_pos.append(key[1])
                row_targets.append({})
            tmap = row_targets[r]
            slots.append([tmap.setdefault(int(t), len(tmap)) for t in q.targets])
        n_targets = _round_up(max((len(t) for t in row_targets), default=1), 4)
        values = [np.zeros(len(t), dtype=np.float32) for t in row_targets]
        self._start_progress(progress, len(row_seqs))

        def store(rows: np.ndarray, out: Any) -> None:
            out = np.asarray(out)
            for r, i in enumerate(rows):
                values[i] = out[r, : len(row_targets[i])]
            if progress is not None:
                progress.update(len(rows))

        pending: collections.deque = collections.deque()
        for rows, length in self._batches([len(s) for s in row_seqs]):
            ids, mask = self._pack(row_seqs, rows, length)
            pos = np.zeros(ids.shape[0], dtype=np.int32)
            tgt = np.zeros((ids.shape[0], n_targets), dtype=np.int32)
            for r, i in enumerate(rows):
                pos[r] = row_pos[i]
                tids = list(row_targets[i])
                tgt[r, : len(tids)] = tids
            # asynchronous backends compute batch k while batch k+1 is being packed
            pending.append((rows, self._log_probs_batch(ids, mask, pos, tgt)))
            if len(pending) > 1:
                store(*pending.popleft())
        while pending:
            store(*pending.popleft())
        result = []
        for q, s in zip(queries, slots):
            r = row_of[(tuple(q.token_ids), int(q.position))]
            result.append(values[r][s].astype(np.float64))
        return result

    def sentence_embeddings(
        self, sequences: Sequence[Sequence[int]], progress: Progress | None = None
    ) -> np.ndarray:
        """Mean of the last encoder layer over all tokens of each sequence (special tokens included).

        sequences: token ids with special tokens. Returns float32 [n, hidden]; identical
        sequences share one model row.
        """
        row_of: dict[tuple[int, ...], int] = {}
        uniq: list[tuple[int, ...]] = []
        for s in sequences:
            key = tuple(int(t) for t in s)
            if key not in row_of:
                self._check_length(key)
                row_of[key] = len(uniq)
                uniq.append(key)
        self._start_progress(progress, len(uniq))
        parts: list[tuple[np.ndarray, Any]] = []
        for rows, length in self._batches([len(s) for s in uniq]):
            ids, mask = self._pack(uniq, rows, length)
            parts.append((rows, self._mean_hidden_batch(ids, mask)))  # asynchronous for jax
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        out: np.ndarray | None = None
        for rows, h in parts:
            h = np.asarray(h, dtype=np.float32)
            if out is None:
                out = np.zeros((len(uniq), h.shape[1]), dtype=np.float32)
            out[rows] = h[: len(rows)]
            if progress is not None:
                progress.update(len(rows))
        return out[[row_of[tuple(int(t) for t in s)] for s in sequences]]


class JaxScorer(Scorer):
    """Scores with an ncjax `BertForMaskedLM` through two jitted pure functions of its state."""

    backend = "jax"

    def __init__(
        self,
        model: Any,
        config: Any,
        tokenizer: Any,
        batch_size: int = 64,
        length_multiple: int | None = None,
        source: str = "model",
    ):
        super().__init__(
            tokenizer,
            vocab_size=config.vocab_size,
            max_length=config.max_tokens,
            batch_size=batch_size,
            length_multiple=length_multiple,
            fixed_batch=True,
            source=source,
            model_type=config.model_type,
        )
        import jax
        import jax.numpy as jnp
        from flax import nnx

        graphdef, state = nnx.split(model)
        self._state = state

        # Reference scores come from full-float32 PyTorch matmuls; XLA's default float32 matmul on
        # GPUs is TF32, which moves scores by ~1e-3 and flips CrowS-Pairs' 3-decimal ties. Pin it.
        def log_probs(state, ids, mask, positions, targets):
            with jax.default_matmul_precision("float32"):
                m = nnx.merge(graphdef, state)
                out = m(ids, mask, None, positions=positions[:, None])
                logp = jax.nn.log_softmax(out.logits[:, 0, :].astype(jnp.float32), axis=-1)  # [B, V]
                return jnp.take_along_axis(logp, targets, axis=1)  # [B, T]

        def mean_hidden(state, ids, mask):
            with jax.default_matmul_precision("float32"):
                m = nnx.merge(graphdef, state)
                h = m(ids, mask, None, with_logits=False).last_hidden.astype(jnp.float32)  # [B, L, H]
                w = mask[..., None].astype(jnp.float32)
                return (h * w).sum(axis=1) / w.sum(axis=1)  # [B, H]

        self._log_probs_fn = jax.jit(log_probs)
        self._mean_hidden_fn = jax.jit(mean_hidden)

    def _log_probs_batch(self, ids, mask, positions, targets):
        return self._log_probs_fn(self._state, ids, mask, positions, targets)  # a device array

    def _mean_hidden_batch(self, ids, mask):
        return self._mean_hidden_fn(self._state, ids, mask)


def load_scorer(
    model: str | Path,
    backend: str = "jax",
    batch_size: int = 64,
    length_multiple: int | None = None,
    init_missing_head: bool = False,
    seed: int = 0,
) -> Scorer:
    """Loads a model as a Scorer of the given backend.

    model: a Hugging Face BERT masked-LM directory, an ncjax checkpoint directory, `minilm`, or a
      hub id (resolved as `ncjax.convert.load_model` resolves it).
    init_missing_head: initialise a missing MLM head from `seed` (e.g. a sentence encoder). The
      torch backend reads such models, and ncjax checkpoints, through ncjax and a temporary
      Hugging Face export, so both backends score the very same weights.
    length_multiple: padded lengths are rounded up to a multiple of this (default: LENGTH_LADDER
      for jax, the longest row of each batch for torch).
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    if backend == "jax":
        from ncjax.convert import load_model

        m, config = load_model(model, init_missing_head=init_missing_head, seed=seed)
        return JaxScorer(
            m, config, load_tokenizer(model), batch_size=batch_size,
            length_multiple=length_multiple, source=str(model),
        )
    from ncjax.bench import eager

    return eager.load(model, batch_size, length_multiple or 1, init_missing_head=init_missing_head, seed=seed)


def load_tokenizer(model: str | Path) -> Any:
    """The model's tokenizer, loaded as ncjax loads it (`ncjax.convert.load_tokenizer`: the
    directory's tokenizer files, or a bare vocab.txt), for both backends."""
    from ncjax.convert import load_tokenizer as _load

    return _load(model)
