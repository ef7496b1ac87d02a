r"""Mabel + NC3: MABEL's entailment-based debiasing (contrastive + alignment + MLM) plus NC3.

Source: MABEL (github:princeton-nlp/MABEL, training/model.py, train.py, run.sh,
convert_to_hf.py) and its copy in Fairness-NC (github:Xujxyang/Fairness-NC-main, mabel/), which
adds NC3 with weight 10 and runs on 4 GPUs with 24 examples each (MABEL's own run.sh: 1 GPU x 32):

    loss = InfoNCE + 0.05 * alignment + 0.1 * MLM + 10 * NC3

- data.schema='mabel': each example is four views (original premise, original hypothesis,
  gender-swapped premise, gender-swapped hypothesis), [CLS] text [SEP] padded to 128 tokens.
- InfoNCE (`ncjax/terms/contrastive.py`): z = dense2(tanh(dense1(h_L[CLS]))), Mabel's own head,
  trained with the model and left out of the export; cosine / 0.05 from [orig premise; aug
  premise] to [orig hyp; aug hyp], cross-entropy on the diagonal, mean over the 2B rows.
- alignment (`ncjax/terms/alignment.py`): mean over rows of the squared row norm of the
  difference of the original and augmented premise-hypothesis similarity matrices (cos / 0.05);
  weight 0.05 (MABEL's `align_temp`, a weight, not a temperature).
- MLM at 0.1: 15 % dynamic masking over all 4B sequences, one mean over their masked tokens,
  with an untied decoder initialised from the pretrained (tied) MLM head
  (model.untie_decoder=True); the export ties it back as MABEL's convert_to_hf.py did, keeping
  the trained decoder matrix as the word embeddings.
- NC3 at 10 over all four views (the MLM's masked forward), `reference` mode, GN-GloVe
  first-piece ids; its W[c] are rows of the untied decoder.
bert-base-uncased, global batch 96, 2 epochs, AdamW lr 5e-5 eps 1e-8, no weight decay, linear
decay, clipping 1.0, seed 21 (the release trains in fp16; ncjax in float32 unless
model.dtype='bfloat16').

Multi-GPU note: the original all-gathers the embeddings across its 4 GPUs, so its forward
contrastive and alignment losses equal the full-batch ones, but the gradient they send to the
parameters is 1/4 of the full-batch gradient (each GPU differentiates only through its own
rows, then gradients are averaged); the MLM and NC3 gradients are not scaled. ncjax
differentiates the global-batch loss on any device count; to reproduce the original's scaling,
divide both weights by the original GPU count:
    --config.contrastive.weight=0.25 --config.alignment.weight=0.0125

Data: MABEL's entailment_data.csv (gender-augmented SNLI + MNLI entailment pairs, columns
orig_sent0, orig_sent1, aug_sent0, aug_sent1) when data.path names it (a local csv or a hub
dataset id). Offline default (bundled:glue_pairs): the GLUE RTE training pairs labelled
entailment and the MRPC training-file paraphrase pairs (quality 1; the MSR file also holds the
pairs of GLUE's MRPC dev split) that contain a gender word, 1,356 pairs, each augmented by
swapping bias-bench's gender attribute words two-sidedly. The bundled pairs are ~1/100 of
MABEL's data and of another domain: a run on them demonstrates the recipe, it does not
reproduce the paper's model.

    python launch/train.py --config configs/mabel_nc3.py --workdir runs/mabel_nc3 \
        --config.data.path=/path/to/entailment_data.csv

Variants: :no_nc3 (Mabel alone), :minilm (offline CPU demo), :tiny (seconds):
    python launch/train.py --config configs/mabel_nc3.py:tiny --workdir /tmp/mabel_tiny
"""

from __future__ import annotations

import ml_collections

from configs import common


def paper() -> ml_collections.ConfigDict:
    c = common.base()
    c.seed = 21
    c.loss.terms = ("contrastive", "alignment", "mlm", "nc3")
    c.model.untie_decoder = True
    c.data.schema = "mabel"
    c.data.path = "bundled:glue_pairs"
    c.data.max_length = 128
    c.mlm.weight = 0.1
    c.contrastive.weight = 1.0
    c.contrastive.temperature = 0.05
    c.alignment.weight = 0.05
    c.penalty.alpha = 10.0
    c.optim.learning_rate = 5e-5
    c.train.batch_size = 96
    c.train.num_epochs = 2
    c.checkpoint.every_steps = 125
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/mabel_nc3.py[:no_nc3|minilm|tiny]."""
    return common.recipe("mabel_nc3.py", arg, paper)
