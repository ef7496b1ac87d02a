"""Model FLOPs of the MLM train step, device peak FLOP/s, and model FLOPs utilisation (MFU).

What is counted (multiply-adds count 2 FLOPs; only matrix products, as MFU is conventionally
defined; embedding gathers, LayerNorm, softmax, GELU, dropout, the loss, the NC3 statistics and
the optimiser are left out, together well under 1 % of a BERT step):
  - encoder, per token and layer: the Q, K, V and attention-output projections 4 * 2 * H^2 and the
    feed-forward pair 2 * 2 * H * I;
  - attention, per token and layer: scores and context 2 * 2 * L * H (every position attends to
    the L positions of its padded row);
  - MLM head only at the P predicted positions a sequence carries (the step gathers them before the
    head): the transform 2 * H * E and the decoder 2 * E * V per position;
  - ALBERT (`ncjax.families`): embeddings of width E (`embedding_size`) projected to H, 2 * E * H
    per token; a layer is counted at every depth that runs it (shared parameters do the work
    again), inner_group_num layers per depth. E = H for every other family: DistilBERT and
    RoBERTa run BERT's products (they differ in embedding gathers, which are not counted);
  - training: forward + backward = 3 x forward (the backward computes two products per forward
    product). Recomputation under remat is not model work and is not counted.
Positions are the padded [batch, length] the step computes, so padding counts as work.

Peaks are dense (no sparsity) per-chip figures from the vendors' datasheets: bfloat16 tensor-core
peaks, and for float32 compute the TF32 peak on NVIDIA GPUs (XLA's default float32 matmul
precision there) and the bfloat16 peak on TPUs (whose default float32 matmuls run bfloat16 passes).
A device that is not in the table (every CPU) has no known peak: MFU is then reported only when
the peak is given (config `log.peak_tflops`).
"""

from __future__ import annotations

from typing import Any

from ncjax import families

# device_kind substring -> (bfloat16 TFLOP/s, float32 TFLOP/s); first match wins, so more specific
# names come first.
PEAK_TFLOPS: tuple[tuple[str, tuple[float, float]], ...] = (
    ("B200", (2250.0, 1100.0)),
    ("H200", (989.0, 494.0)),
    ("H100 PCIe", (756.0, 378.0)),
    ("H100", (989.0, 494.0)),
    ("A100", (312.0, 156.0)),
    ("L40S", (362.0, 183.0)),
    ("L4", (121.0, 60.0)),
    ("A10", (125.0, 62.5)),
    ("TPU v6 lite", (918.0, 918.0)),
    ("TPU v5 lite", (197.0, 197.0)),
    ("TPU v5", (459.0, 459.0)),
    ("TPU v4", (275.0, 275.0)),
    ("TPU v3", (123.0, 123.0)),
)


def forward_flops(config: Any, batch: int, length: int, predictions: int) -> float:
    """Forward-pass model FLOPs of `BertForMaskedLM` (any family) on [batch, length] inputs with the
    MLM head at `predictions` positions per sequence (length for logits everywhere). `config`: a
    BertConfig."""
    h, i, v, e = config.hidden_size, config.intermediate_size, config.vocab_size, config.head_size
    n = len(families.layer_schedule(config))  # layers run, ALBERT's shared ones once per use
    per_token_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * length * h
    project = 2 * e * h if families.get(config.model_type).factorised else 0
    head = 2 * (h * e + e * v)
    return float(batch * length * (n * per_token_layer + project) + batch * predictions * head)


def train_step_flops(config: Any, batch: int, length: int, predictions: int) -> float:
    """Model FLOPs of one train step (forward + backward = 3 x forward) on a global batch."""
    return 3.0 * forward_flops(config, batch, length, predictions)


def peak_flops(device_kind: str, dtype: str, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device for compute `dtype` ('float32' or 'bfloat16'): the override when
    > 0, else the table's entry for the first name contained in `device_kind`, else None."""
    if override_tflops > 0:
        return override_tflops * 1e12
    for name, (bf16, f32) in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return (bf16 if dtype == "bfloat16" else f32) * 1e12
    return None


def mfu(step_flops: float, steps_per_s: float, peak: float | None, num_devices: int) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' summed peak (None if no peak)."""
    if not peak:
        return None
    return step_flops * steps_per_s / (peak * num_devices)
