r"""MLM + NC3 on ASE's data: what Fairness-NC's "ASE + NC3" script actually ran.

Source: Fairness-NC (github:Xujxyang/Fairness-NC-main, ase/), whose ASE script has the
orthogonality and EWC terms commented out, leaving

    loss = MLM + 100 * NC3

on BERT-ASE's pronoun-masked sentences (data.schema='ase': the pronoun is [MASK] and the only
label, no [CLS]/[SEP], padded to 164), with BERT-ASE's optimiser (batch 6, 50 epochs, AdamW lr
2e-5, linear decay, clipping 1.0). Data, NC3 settings and differences as configs/ase_nc3.py.

    python launch/train.py --config configs/mlm_nc3.py --workdir runs/mlm_nc3

Variants: :no_nc3 (plain MLM on the same data), :minilm (offline CPU demo), :tiny (seconds):
    python launch/train.py --config configs/mlm_nc3.py:tiny --workdir /tmp/mlm_tiny
"""

from __future__ import annotations

import ml_collections

from configs import ase_nc3, common


def paper() -> ml_collections.ConfigDict:
    return ase_nc3.ase_data(common.base())


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/mlm_nc3.py[:no_nc3|minilm|tiny]."""
    return common.recipe("mlm_nc3.py", arg, paper)
