r"""Dropout + NC3: dropout debiasing as continued MLM pre-training, plus NC3.

Source: bias-bench (github:McGill-NLP/bias-bench, experiments/run_mlm.py with --dropout_debias;
Meade et al., ACL 2022), after Webster et al. (2020): the same continued pre-training as CDA but
without augmentation and with hidden dropout 0.20 and attention dropout 0.15 (instead of 0.1);
bert-base-uncased, MLM (15 %), 2000 steps of batch 512 (32 per device x 16 accumulation steps),
lr 5e-5 with linear decay, sequences of up to 512 tokens. The export's config.json carries the
raised dropout, as bias-bench's saved model does. NC3 as in the BEC recipe (`reference` mode,
GN-GloVe ids, alpha 100); the paper ran no Dropout + NC3.

Data and differences: as configs/cda_nc3.py (offline: bundled WikiText-2 validation + test and
GAP paragraphs; a Wikipedia text file or hub dataset otherwise).

    python launch/train.py --config configs/dropout_nc3.py --workdir runs/dropout_nc3

Variants: :no_nc3 (Dropout alone), :minilm (offline CPU demo), :tiny (test fixture, seconds):
    python launch/train.py --config configs/dropout_nc3.py:tiny --workdir /tmp/dropout_tiny
"""

from __future__ import annotations

import ml_collections

from configs import cda_nc3, common


def paper() -> ml_collections.ConfigDict:
    c = cda_nc3.paper()
    c.data.cda = "none"
    c.model.hidden_dropout = 0.20
    c.model.attention_dropout = 0.15
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/dropout_nc3.py[:no_nc3|minilm|tiny]."""
    return common.recipe("dropout_nc3.py", arg, paper)
