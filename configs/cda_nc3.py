r"""CDA + NC3: two-sided counterfactual data augmentation as continued MLM pre-training, plus NC3.

Source: bias-bench (github:McGill-NLP/bias-bench, experiments/run_mlm.py with
--counterfactual_augmentation gender; Meade et al., ACL 2022), after Webster et al. (2020): every
text is kept and a copy with each gender word of bias-bench's attribute-word list swapped
(bundled bias_attribute_words.json) is added; bert-base-uncased, MLM (15 %), 2000 steps of
batch 512 (bias-bench: 32 per device x 16 accumulation steps), lr 5e-5 (transformers' default)
with linear decay, no warm-up, AdamW without weight decay, sequences of up to 512 tokens.
NC3 as in the BEC recipe (`reference` mode, GN-GloVe ids, alpha 100); the paper ran no CDA + NC3.

Data: offline, the bundled WikiText-2 validation + test and GAP paragraphs (`bundled:wikitext2,
bundled:gap`); bias-bench used 10 % of an English Wikipedia dump: point data.path at such a text
file (one paragraph per line) or a hub dataset (--config.data.path=wikipedia
--config.data.format=hub --config.data.text_field=text). Differences: one paragraph per row
truncated to 512 tokens instead of concatenated 512-token blocks; no gradient accumulation (lower
train.batch_size to fit memory, which changes the recipe).

    python launch/train.py --config configs/cda_nc3.py --workdir runs/cda_nc3

Variants: :no_nc3 (CDA alone), :minilm (offline CPU demo), :tiny (test fixture, seconds):
    python launch/train.py --config configs/cda_nc3.py:tiny --workdir /tmp/cda_tiny
"""

from __future__ import annotations

import ml_collections

from configs import common


def paper() -> ml_collections.ConfigDict:
    c = common.base()
    c.model.path = "bert-base-uncased"
    c.data.path = "bundled:wikitext2,bundled:gap"
    c.data.text_field = "Text"
    c.data.sentence_split = False
    c.data.cda = "two_sided"
    c.data.max_length = 512
    c.data.min_words = 4
    c.optim.learning_rate = 5e-5
    c.optim.clip_norm = 1.0
    c.train.batch_size = 512
    c.train.num_steps = 2000
    c.train.log_every_steps = 10
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/cda_nc3.py[:no_nc3|minilm|tiny]."""
    return common.recipe("cda_nc3.py", arg, paper)
