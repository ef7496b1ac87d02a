r"""ASE + NC3: BERT-ASE's debiasing (MLM on pronoun-masked sentences + orthogonality + EWC) plus NC3.

Source: BERT-ASE (github:NLPlab-skku/BERT-ASE, finetune_both.py, model.py, train_util.py) and
its copy in Fairness-NC (github:Xujxyang/Fairness-NC-main, ase/), whose "ASE + NC3" script
comments out the orthogonality and EWC terms (that run is configs/mlm_nc3.py); this recipe
restores them:

    loss = MLM + 1.0 * orthogonality + 0.5 * EWC + 100 * NC3

- MLM: the pronoun of each sentence is [MASK] and is the only label (tied head); sentences are
  encoded without [CLS]/[SEP] and padded to 164 tokens (data.schema='ase').
- orthogonality: sum over the batch of |<h_t, g>| at the first occurrence of each neutral word,
  h the live last layer, g the unit gender direction (GN-GloVe male minus female words through
  the starting model), fixed before training.
- EWC: sum F * (theta - theta*)^2 against the starting model, F the diagonal Fisher over the
  formatted WinoBias type-1 *test* sentences (so it touches an evaluation set: WinoBias scores
  of this model are not clean held-out numbers). ewc.fisher='released' (default) reproduces
  the released accumulation without zeroed gradients; 'textbook' is the per-line Fisher.
- NC3 as in the BEC recipe (`reference` mode, GN-GloVe first-piece ids), alpha 100 as in
  Fairness-NC's ASE script.
bert-base-uncased, batch 6, 50 epochs, AdamW lr 2e-5 eps 1e-8, linear decay, clipping 1.0,
seed 42, the last partial batch kept (padded with empty rows).

Data: ASE's own training file (original + gender-flipped WinoBias-derived sentences) is not
public with the code; offline, the four bundled WinoBias dev files (pro/anti, type 1/2) give the
pronoun-masked sentences and each gets its two-sided gender swap (bias-bench's word pairs) with
the opposite pronoun. data.path takes other WinoBias-format files (comma-separated).
Differences: the neutral words default to ASE's no_gender_list (bundled); the released default
(--stereo_only) uses its stereotype_list.tsv, which is not bundled: pass it with
--config.data.neutral_words=/path/stereotype_list.tsv. The Fisher lines replace the bracketed
entity by man/woman as released but skip the released second pass that also replaces every
labour-statistics occupation.

    python launch/train.py --config configs/ase_nc3.py --workdir runs/ase_nc3

Variants: :no_nc3 (ASE alone), :textbook_fisher, :minilm (offline CPU demo), :tiny (seconds):
    python launch/train.py --config configs/ase_nc3.py:tiny --workdir /tmp/ase_tiny
"""

from __future__ import annotations

import ml_collections

from configs import common


def ase_data(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ASE schema on the bundled WinoBias dev sentences, with ASE's optimiser settings."""
    c.data.schema = "ase"
    c.data.path = "bundled:winobias_dev"
    c.data.max_length = 164
    c.data.remainder = "pad"
    c.optim.learning_rate = 2e-5
    c.optim.eps = 1e-8
    c.train.batch_size = 6
    c.train.num_epochs = 50
    return c


def paper() -> ml_collections.ConfigDict:
    c = ase_data(common.base())
    c.loss.terms = ("mlm", "orthogonal", "ewc", "nc3")
    return c


OWN = {"textbook_fisher": lambda c: setattr(c.ewc, "fisher", "textbook")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/ase_nc3.py[:no_nc3|textbook_fisher|minilm|tiny]."""
    return common.recipe("ase_nc3.py", arg, paper, OWN)
