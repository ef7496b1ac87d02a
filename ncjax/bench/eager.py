"""The transformers/PyTorch scoring backend, batched under `torch.inference_mode`.

`TorchScorer` runs any Hugging Face masked-LM directory through transformers behind the
`ncjax.bench.scorer.Scorer` interface (which does the deduplication, sorting, batching and
padding); the MLM head is applied only at the read positions when the model exposes it (`cls`
for BERT, `lm_head` for RoBERTa-style models), else full logits are gathered. `load` is the
torch branch of `ncjax.bench.scorer.load_scorer`: ncjax checkpoints, and models whose MLM head
is initialised from a seed, are read through ncjax and a temporary Hugging Face export, so both
backends score the very same weights.

torch and transformers are imported when a scorer is built, never on import of this module.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ncjax.bench.scorer import Scorer, load_tokenizer


class TorchScorer(Scorer):
    """Scores with a transformers masked LM (PyTorch), batched, under `torch.inference_mode`, on
    `device` (default: CUDA when available, as bias-bench does; float32 matmuls, no TF32)."""

    backend = "torch"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 64,
        length_multiple: int = 1,
        source: str = "model",
        device: str | None = None,
    ):
        from ncjax.model import BertConfig

        cfg = BertConfig.from_hf_dict(model.config.to_dict())
        super().__init__(
            tokenizer,
            vocab_size=cfg.vocab_size,
            max_length=cfg.max_tokens,
            batch_size=batch_size,
            length_multiple=length_multiple,
            fixed_batch=False,
            source=source,
            model_type=cfg.model_type,
        )
        import torch

        self._torch = torch
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._model = model.eval().to(self._device)
        self._head: Callable | None = getattr(model, "cls", None) or getattr(model, "lm_head", None)

    def _inputs(self, ids, mask):
        torch = self._torch
        t_ids = torch.from_numpy(ids.astype(np.int64)).to(self._device)
        out = dict(input_ids=t_ids, attention_mask=torch.from_numpy(mask.astype(np.int64)).to(self._device))
        if self.family.token_types:  # DistilBERT's forward takes none
            out["token_type_ids"] = torch.zeros_like(t_ids)
        return out

    def _log_probs_batch(self, ids, mask, positions, targets):
        torch = self._torch
        rows = torch.arange(ids.shape[0], device=self._device)
        pos = torch.from_numpy(positions.astype(np.int64)).to(self._device)
        with torch.inference_mode():
            if self._head is not None:
                hidden = self._model.base_model(**self._inputs(ids, mask)).last_hidden_state
                logits = self._head(hidden[rows, pos])  # [B, V]
            else:
                logits = self._model(**self._inputs(ids, mask)).logits[rows, pos]
            logp = torch.log_softmax(logits.float(), dim=-1)
            out = torch.gather(logp, 1, torch.from_numpy(targets.astype(np.int64)).to(self._device))
        return out.cpu().numpy()

    def _mean_hidden_batch(self, ids, mask):
        torch = self._torch
        with torch.inference_mode():
            h = self._model.base_model(**self._inputs(ids, mask)).last_hidden_state.float()
            w = torch.from_numpy(mask.astype(np.float32)).to(self._device)[..., None]
            return ((h * w).sum(dim=1) / w.sum(dim=1)).cpu().numpy()


def load(
    model: str | Path,
    batch_size: int = 64,
    length_multiple: int = 1,
    init_missing_head: bool = False,
    seed: int = 0,
) -> TorchScorer:
    """A TorchScorer of `model` (as `ncjax.bench.scorer.load_scorer` documents its arguments);
    ncjax checkpoints and `init_missing_head` go through ncjax and a temporary Hugging Face export."""
    try:
        import torch  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "The torch backend needs PyTorch: pip install torch==2.13.0 && pip install -e '.[torch]'."
        ) from e
    from ncjax.convert import load_model
    from ncjax.weights import NCJAX_MARKER, resolve_source

    path = resolve_source(model)
    if init_missing_head or (path.is_dir() and (path / NCJAX_MARKER).is_file()):
        from ncjax.convert import save_hf

        m, config = load_model(path, init_missing_head=init_missing_head, seed=seed)
        with tempfile.TemporaryDirectory(prefix="ncjax-bench-") as tmp:
            save_hf(m, config, Path(tmp) / "hf", tokenizer_src=path)
            return _load_torch(Path(tmp) / "hf", batch_size, length_multiple, source=str(model))
    return _load_torch(path, batch_size, length_multiple, source=str(model))


def _load_torch(path: Path, batch_size: int, length_multiple: int, source: str) -> TorchScorer:
    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(str(path), output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise ValueError(
            f"{source} lacks weights for {', '.join(sorted(missing)[:4])}"
            f"{' ...' if len(missing) > 4 else ''}; pass a masked-LM checkpoint, or init_missing_head=True "
            "(--init-missing-head) to initialise a missing MLM head."
        )
    tokenizer = load_tokenizer(path)
    return TorchScorer(model.float(), tokenizer, batch_size=batch_size, length_multiple=length_multiple, source=source)
