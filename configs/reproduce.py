r"""The paper's experiment as one grid: each recipe with and without NC3, over seeds, every cell
trained from the same base model, then evaluated, measured and reported (ncjax.grid,
ncjax.summary).

    python launch/reproduce.py --config configs/reproduce.py:tiny --workdir runs/grid_tiny

Variants:

  :tiny           BEC and CDA on the 2-layer test fixture, 2 arms x 2 seeds, 12 steps each, the
                  bias benchmarks on their first 4 examples: the whole pipeline in minutes.
  :minilm_quick   BEC +- NC3 x 3 seeds on the warmed-up MiniLM masked LM (configs/mlm_warmup.py,
                  model 'minilm-mlm'), a shortened schedule, the intrinsic bias benchmarks and the
                  NC metrics (gender, all, random words): under an hour on a 2-core CPU.
  :minilm         every recipe (BEC, MLM, CDA, Dropout, ASE, Mabel) +- NC3 x 3 seeds on the
                  warmed-up MiniLM with each recipe's :minilm schedule, the intrinsic and the
                  fine-tuning benchmarks (GLUE, coreference, Bias-in-Bios): hours on a CPU.
  :bert_base      the paper's grid: every recipe as released (bert-base-uncased from the hub,
                  the released schedules and NC3 weights) +- NC3 x 3 seeds, every benchmark: for
                  a GPU or TPU host per cell (--cell K).

The MiniLM grids start from the warmed-up masked LM; make it once (about half an hour on a CPU):
    python launch/train.py --config configs/mlm_warmup.py --workdir runs/mlm_warmup

A grid is a list of recipes (`recipes`, names from the `recipe` table, each a training config
`configs/x.py[:variant]` optionally followed by `;field=value` overrides), the arms to run
(`arms.run`; the baseline arm differs from +NC3 only by `arms.baseline_overrides`), the seeds,
overrides shared by every cell (`train_overrides`, `;`-separated), the base model (`base_model`;
'' = each recipe's own `model.path`), the benchmarks (`evaluate`) and the NC measurement
(`measure`). Lists are comma-separated strings so they can be overridden on the command line
(--config.seeds=0,1,2,3,4).
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("tiny", "minilm_quick", "minilm", "bert_base")
RECIPES = ("bec", "mlm", "cda", "dropout", "ase", "mabel")
EXTRINSIC = "glue,coref,bios"


def base() -> ml_collections.ConfigDict:
    """Every field of a grid config."""
    c = ml_collections.ConfigDict()
    c.recipe = ml_collections.ConfigDict()  # name -> configs/x.py[:variant][;field=value...]
    c.recipe.bec = "configs/bert_nc3.py"
    c.recipe.mlm = "configs/mlm_nc3.py"
    c.recipe.cda = "configs/cda_nc3.py"
    c.recipe.dropout = "configs/dropout_nc3.py"
    c.recipe.ase = "configs/ase_nc3.py"
    c.recipe.mabel = "configs/mabel_nc3.py"
    c.recipes = "bec"
    c.seeds = "0,1,2"
    c.arms = ml_collections.ConfigDict()
    c.arms.run = "baseline,nc3"
    c.arms.baseline_overrides = "penalty.alpha=0"  # what turns a recipe's +NC3 config into its baseline
    c.train_overrides = ""  # e.g. 'train.num_steps=100;checkpoint.every_steps=50'
    c.base_model = ""  # '' = each recipe's model.path; else every cell starts from this model
    c.base_init_missing_head = False  # base_model has no MLM head: give it a fresh, seeded one
    c.notes = ""  # a paragraph for the top of the report (what was cut relative to the paper)

    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.benchmarks = "stereoset,crows,seat,becpro,winobias-probe"  # + glue, coref, bios (fine-tuning)
    c.evaluate.backend = "jax"
    c.evaluate.seed = 0  # SEAT permutations (0 as bias-bench) and the fine-tuning benchmarks
    c.evaluate.batch_size = 64
    c.evaluate.limit = 0  # first N examples per file (0 = all); for smoke runs only

    c.measure = ml_collections.ConfigDict()
    c.measure.corpus = "bundled:gap_flipped"  # bundled:NAME or a .txt/.tsv/.jsonl file
    c.measure.column = ""  # text column of a .tsv corpus ('' = 'Text'/'text')
    c.measure.class_sets = "gender-adept,all,random:300"  # the first one fills the report's NC columns
    c.measure.policy = "first_piece"
    c.measure.features = "mlm_transform"
    c.measure.label_shift = 0
    c.measure.min_count = 1
    c.measure.max_tokens = 50000
    c.measure.batch_size = 32
    c.measure.seed = 0
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The grid of `configs/reproduce.py[:variant]`; see the module docstring."""
    variant = arg or "minilm_quick"
    if variant not in VARIANTS:
        raise ValueError(f"configs/reproduce.py has no variant {variant!r}; use one of {', '.join(VARIANTS)}.")
    c = base()
    if variant == "tiny":
        c.recipe.bec = "configs/bert_nc3.py:tiny"
        c.recipe.cda = "configs/cda_nc3.py:tiny"
        c.recipes = "bec,cda"
        c.seeds = "0,1"
        c.train_overrides = "train.num_steps=12;checkpoint.every_steps=6;log.tensorboard=false"
        c.evaluate.limit = 4
        c.evaluate.batch_size = 16
        c.measure.corpus = "tests/fixtures/gender_lines.txt"
        c.measure.class_sets = "gender-adept,all,random:8"
        c.measure.max_tokens = 0
        c.measure.batch_size = 8
        c.notes = "The 2-layer test fixture: a check of the pipeline, not a result."
    elif variant == "minilm_quick":
        c.recipe.bec = "configs/bert_nc3.py:minilm"
        c.base_model = "minilm-mlm"
        c.train_overrides = ("train.num_steps=150;checkpoint.every_steps=75;optim.learning_rate=5e-5;"
                             "log.tensorboard=false")
        c.evaluate.benchmarks = "stereoset,crows,seat,becpro,winobias-probe"
        c.notes = ("Cut relative to the paper's BEC + NC3 recipe so that the grid runs in under an hour on a "
                   "2-core CPU: the model is all-MiniLM-L6-v2 (6 layers, hidden 384) with an MLM head trained "
                   "by configs/mlm_warmup.py, not bert-base-uncased; each cell trains 150 steps of batch 16 "
                   "on sentences of at most 64 tokens (0.18 epochs of GAP-flipped) instead of 3 epochs at "
                   "the power-of-two length, at learning rate 5e-5 instead of 2e-5 so the short run moves; "
                   "NC3 keeps the paper's weight (alpha 100) and mode; 3 seeds; only the intrinsic "
                   "benchmarks (no GLUE, coreference or Bias-in-Bios fine-tuning).")
    elif variant == "minilm":
        for name in RECIPES:
            c.recipe[name] = c.recipe[name] + ":minilm"
        c.recipes = ",".join(RECIPES)
        c.base_model = "minilm-mlm"
        c.train_overrides = "log.tensorboard=false"
        c.evaluate.benchmarks += "," + EXTRINSIC
        c.notes = ("The all-MiniLM-L6-v2 masked LM of configs/mlm_warmup.py instead of bert-base-uncased; every "
                   "recipe runs its :minilm schedule (120 steps of batch 16, 64-token sequences), not the "
                   "paper's epochs; NC3 weights as released.")
    elif variant == "bert_base":
        c.recipes = ",".join(RECIPES)
        c.evaluate.benchmarks += "," + EXTRINSIC
        c.notes = "The paper's recipes as released on bert-base-uncased, NC3 weights as released."
    return c
