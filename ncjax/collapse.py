"""Neural-collapse statistics over a vocabulary subset and the NC metrics (docs/collapse.md).

Classes are token ids (a word set, every id seen in the corpus, or K random seen ids); a sample
is a feature h [hidden] at a counted position paired with the class at the same position
(label_shift 0) or the next one (label_shift 1). Streaming in two passes over a corpus:

- pass 1 (`accumulate_means`): per-class counts and sums of h;
- pass 2 (`accumulate_second`): per-class sums of ||h - mu_c||^2 and ||h - W[c]||^2, and the
  NC4 decisions (linear argmax_c <h, W[c]> vs nearest class mean argmin_c ||h - mu_c||, and vs
  nearest word embedding argmin_c ||h - W[c]||), over the included classes, in class blocks.

Both are sums over every position of the batch, so with the batch sharded over a ('data',)
mesh the compiler all-reduces them; means are formed on the host after the reduction.

Metrics (`metrics`), over the C included classes (count >= min_count), with mu_c the class
means, mu_G their unweighted mean, m_c = mu_c - mu_G, var_c = mean ||h - mu_c||^2,
cos(a, b) = <a / (||a|| + eps), b / (||b|| + eps)> (eps = float32 epsilon, as the reference
code), std with ddof = 1, CoV = std / |mean|:

    nc1_cdnv                mean over c < c' of (var_c + var_c') / (2 ||mu_c - mu_c'||^2)
    nc1_cdnv_dist4          same with ||mu_c - mu_c'||^4 (the Linguistic Collapse code's form)
    nc2_equinorm_cov        CoV of ||m_c||
    nc2_equiangular_std     std over c < c' of cos(m_c, m_c')
    gnc2_log_kernel         mean over c < c' of log(1 / ||n_c - n_c'||), n_c = m_c / (||m_c|| + eps)
    nc3_self_duality        mean over c of ||W[c] / (||W[c]|| + eps) - n_c||
    unc3_cos_std, unc3_cos_cov   std and CoV of s_c = cos(W[c], m_c)
    nc4_ncc_agreement       fraction of the included classes' samples whose linear decision
                            equals the nearest-class-mean decision

Calibrated variants (suffix `_calibrated`) put the word embedding W[c] where the class mean
mu_c stood (and the mean of the W[c] where mu_G stood): NC1 with var_c = mean ||h - W[c]||^2
and distances between W rows, NC2 and GNC2 on W[c] - mean W, and NC4 against the
nearest-W[c] decision. NC3 and UNC3 already compare the two and have no calibrated form.

Pair statistics are O(C^2 hidden): they run block x block classes at a time, so the full
30522-class vocabulary fits in memory; block sums are added on the host in float64. Squared
distances use the Gram expansion, except in blocks where it would lose precision (two classes
much closer than their norms), which use exact differences.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ncjax import classes
from ncjax.classes import EPS, normalize

log = logging.getLogger(__name__)

_HIGHEST = jax.lax.Precision.HIGHEST
# Above this many classes a tokens x K one-hot costs more than a scatter-add.
_ONE_HOT_MAX_CLASSES = 2048

METRIC_KEYS = (
    "nc1_cdnv",
    "nc1_cdnv_dist4",
    "nc2_equinorm_cov",
    "nc2_equiangular_std",
    "gnc2_log_kernel",
    "nc3_self_duality",
    "unc3_cos_std",
    "unc3_cos_cov",
    "nc4_ncc_agreement",
    "nc1_cdnv_calibrated",
    "nc1_cdnv_dist4_calibrated",
    "nc2_equinorm_cov_calibrated",
    "nc2_equiangular_std_calibrated",
    "gnc2_log_kernel_calibrated",
    "nc4_ncc_agreement_calibrated",
)


# ----------------------------------------------------------------------------- class subsets

@dataclasses.dataclass(frozen=True)
class ClassSubset:
    """spec: as given; ids: sorted unique token ids [K]; resolution: the word-set report, if any."""

    spec: str
    ids: np.ndarray
    resolution: Any = None


def class_subset(
    spec: str,
    tokenizer: Any = None,
    *,
    policy: str = "first_piece",
    seen_ids: np.ndarray | None = None,
    seed: int = 0,
) -> ClassSubset:
    """Resolve a class spec to token ids.

    spec: 'gender-adept' | 'gender-gnglove' | 'words:PATH' (a word list, see ncjax.words; these
    need `tokenizer` and use `policy`) | 'all' (every id in `seen_ids`) | 'random:K' (K ids drawn
    without replacement from `seen_ids` with `seed`). seen_ids: the token ids that occur at
    counted positions of the corpus.
    """
    from ncjax import words

    if spec in words.bundled_names() or spec.startswith("words:"):
        if tokenizer is None:
            raise ValueError(f"class spec {spec!r} needs a tokenizer to resolve its words.")
        word_set = words.load_word_set(spec[len("words:"):] if spec.startswith("words:") else spec)
        res = words.resolve(word_set, tokenizer, policy)
        return ClassSubset(spec, np.asarray(res.ids, np.int64), res)
    if spec == "all" or spec.startswith("random:"):
        if seen_ids is None:
            raise ValueError(f"class spec {spec!r} needs the ids seen in the corpus.")
        seen = np.unique(np.asarray(seen_ids, np.int64))
        if spec == "all":
            ids = seen
        else:
            try:
                k = int(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"class spec {spec!r}: write random:K with an integer K, e.g. random:300.") from None
            if k < 2 or k > seen.size:
                raise ValueError(
                    f"class spec {spec!r}: K must be between 2 and the {seen.size} distinct ids seen in the corpus."
                )
            ids = np.sort(np.random.default_rng(seed).choice(seen, size=k, replace=False))
        if ids.size < 2:
            raise ValueError(f"class spec {spec!r} gives {ids.size} class(es); the corpus needs at least 2 distinct tokens.")
        return ClassSubset(spec, ids)
    raise ValueError(
        f"unknown class spec {spec!r}; use gender-adept, gender-gnglove, all, random:K or words:PATH."
    )


# ----------------------------------------------------------------------------- accumulators

def init_stats(num_classes: int, hidden: int) -> dict[str, jnp.ndarray]:
    """Pass-1 and pass-2 accumulators, all zero:
    counts [K], sums [K, hidden], var_sums [K], var_sums_w [K] float32;
    nc4_agree, nc4_agree_w, nc4_total: scalar float32."""
    def z(*shape):
        return jnp.zeros(shape, jnp.float32)

    return {
        "counts": z(num_classes), "sums": z(num_classes, hidden), "var_sums": z(num_classes),
        "var_sums_w": z(num_classes), "nc4_agree": z(), "nc4_agree_w": z(), "nc4_total": z(),
    }


def accumulate_means(
    stats: dict, features: jnp.ndarray, labels: jnp.ndarray, weights: jnp.ndarray, slot_table: jnp.ndarray
) -> dict:
    """Pass 1. features [batch, length, hidden] (any float dtype, summed in float32); labels
    [batch, length] token ids; weights [batch, length] 0/1; slot_table [vocab] (slot K = not a
    class). Adds to stats['counts'] and stats['sums']. Nothing is differentiated."""
    k = stats["counts"].shape[0]
    fn = classes.class_sums if k <= _ONE_HOT_MAX_CLASSES else classes.class_sums_segment
    sums, counts = fn(features, labels, weights, slot_table, k)
    return {**stats, "counts": stats["counts"] + counts, "sums": stats["sums"] + sums}


def _padded_blocks(x: jnp.ndarray, block: int, fill: float) -> jnp.ndarray:
    k = x.shape[0]
    nb = -(-k // block)
    pad = nb * block - k
    x = jnp.concatenate([x, jnp.full((pad,) + x.shape[1:], fill, x.dtype)]) if pad else x
    return x.reshape((nb, block) + x.shape[1:])


def accumulate_second(
    stats: dict,
    features: jnp.ndarray,
    labels: jnp.ndarray,
    weights: jnp.ndarray,
    slot_table: jnp.ndarray,
    means: jnp.ndarray,
    class_weights: jnp.ndarray,
    included: jnp.ndarray,
    *,
    block: int = 1024,
) -> dict:
    """Pass 2. features, labels, weights, slot_table as in pass 1; means: pass-1 class means
    [K, hidden]; class_weights: W[G] [K, hidden]; included: [K] bool (count >= min_count).
    Adds within-class squared deviations (from mu_c and from W[c]) for every class, and the NC4
    agreements over samples of included classes, the argmax/argmin running over included
    classes only, in blocks of `block` classes. Nothing is differentiated."""
    k, hidden = means.shape
    x = features.reshape(-1, hidden).astype(jnp.float32)
    slots = slot_table[labels.reshape(-1)]
    w = weights.reshape(-1).astype(jnp.float32)
    is_class = slots < k
    safe = jnp.where(is_class, slots, 0)
    means = means.astype(jnp.float32)
    wc = class_weights.astype(jnp.float32)
    dev = jnp.sum((x - means[safe]) ** 2, axis=-1) * w * is_class
    dev_w = jnp.sum((x - wc[safe]) ** 2, axis=-1) * w * is_class
    var_sums = stats["var_sums"] + jax.ops.segment_sum(dev, safe, num_segments=k)
    var_sums_w = stats["var_sums_w"] + jax.ops.segment_sum(dev_w, safe, num_segments=k)

    # Decisions, scanned over class blocks so an [tokens, K] score matrix is never built.
    mb = _padded_blocks(means, block, 0.0)
    wb = _padded_blocks(wc, block, 0.0)
    ib = _padded_blocks(included, block, False)
    offsets = jnp.arange(mb.shape[0]) * block
    n = x.shape[0]
    init = (
        jnp.full((n,), -jnp.inf), jnp.zeros((n,), jnp.int32),
        jnp.full((n,), jnp.inf), jnp.zeros((n,), jnp.int32),
        jnp.full((n,), jnp.inf), jnp.zeros((n,), jnp.int32),
    )

    def body(carry, blk):
        m, wr, inc, off = blk
        idx = off + jnp.arange(block, dtype=jnp.int32)
        lin = jnp.where(inc, jnp.dot(x, wr.T, precision=_HIGHEST), -jnp.inf)
        ncc = jnp.where(inc, jnp.sum(m * m, -1) - 2.0 * jnp.dot(x, m.T, precision=_HIGHEST), jnp.inf)
        ncw = jnp.where(inc, jnp.sum(wr * wr, -1) - 2.0 * jnp.dot(x, wr.T, precision=_HIGHEST), jnp.inf)
        out = []
        for (best, arg), score, better in zip(
            ((carry[0], carry[1]), (carry[2], carry[3]), (carry[4], carry[5])),
            (lin, ncc, ncw), (jnp.argmax, jnp.argmin, jnp.argmin),
        ):
            j = better(score, axis=-1)
            val = jnp.take_along_axis(score, j[:, None], axis=-1)[:, 0]
            # strict comparison keeps the earliest index on ties, as numpy's argmax does
            take = val > best if better is jnp.argmax else val < best
            out += [jnp.where(take, val, best), jnp.where(take, idx[j], arg)]
        return tuple(out), None

    (_, lin_arg, _, ncc_arg, _, ncw_arg), _ = jax.lax.scan(body, init, (mb, wb, ib, offsets))
    counted = w * is_class * included[safe]
    return {
        **stats,
        "var_sums": var_sums,
        "var_sums_w": var_sums_w,
        "nc4_agree": stats["nc4_agree"] + jnp.sum(counted * (lin_arg == ncc_arg)),
        "nc4_agree_w": stats["nc4_agree_w"] + jnp.sum(counted * (lin_arg == ncw_arg)),
        "nc4_total": stats["nc4_total"] + jnp.sum(counted),
    }


def class_means(stats: dict) -> jnp.ndarray:
    """[K, hidden] pass-1 means (zero for classes never seen)."""
    c = stats["counts"]
    return stats["sums"] / jnp.where(c > 0, c, 1.0)[:, None]


# ----------------------------------------------------------------------------- metrics

# ||a - b||^2 = ||a||^2 + ||b||^2 - 2<a, b> loses about eps * (||a||^2 + ||b||^2) / ||a - b||^2 of
# relative precision; blocks holding a pair closer than this ratio use exact differences.
_ILL_CONDITIONED = 0.05


def _sq_dists(a, b, mask):
    """[r, c] squared distances between rows of a [r, D] and b [c, D] (pairs in mask matter)."""
    na, nb = jnp.sum(a * a, -1)[:, None], jnp.sum(b * b, -1)[None, :]
    d2 = na + nb - 2.0 * jnp.dot(a, b.T, precision=_HIGHEST)
    ill = jnp.any(mask & (d2 < _ILL_CONDITIONED * (na + nb)))
    d2 = jax.lax.cond(ill, lambda: jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, -1), lambda: d2)
    return jnp.maximum(d2, jnp.finfo(jnp.float32).tiny)


@jax.jit
def _pair_row_block(rows, row_var, row_idx, cols_b, var_b, idx_b, shift):
    """For one row block [r, D] against column blocks [nb, c, D]: per column block, sums over
    pairs (i, j) with j > i (padding has index -1) of
    [cdnv, cdnv_dist4, cos - shift, (cos - shift)^2, log kernel] -> [nb, 5]."""
    nrows = normalize(rows)

    def one(args):
        cols, cvar, cidx = args
        mask = (cidx[None, :] > row_idx[:, None]) & (row_idx[:, None] >= 0)

        def compute():
            d2 = _sq_dists(rows, cols, mask)
            ncols = normalize(cols)
            k2 = _sq_dists(nrows, ncols, mask)
            c = jnp.dot(nrows, ncols.T, precision=_HIGHEST) - shift
            var = row_var[:, None] + cvar[None, :]
            vals = jnp.stack([var / (2 * d2), var / (2 * d2 * d2), c, c * c, -0.5 * jnp.log(k2)])
            return jnp.sum(jnp.where(mask[None], vals, 0.0), axis=(1, 2))

        # blocks wholly on or below the diagonal hold no pair
        return jax.lax.cond(jnp.any(mask), compute, lambda: jnp.zeros((5,), jnp.float32))

    return jax.lax.map(one, (cols_b, var_b, idx_b))


def pair_statistics(points: np.ndarray, variances: np.ndarray, *, block: int = 128) -> dict[str, float]:
    """Means over pairs c < c' of the CDNV (both conventions) and the log kernel, and the
    unbiased std of cos, for points [C, hidden] (already centred) with variances [C].
    Pairwise quantities are built `block` x `block` classes at a time; block sums are added in
    float64 on the host."""
    c = points.shape[0]
    nb = -(-c // block)
    pad = nb * block - c
    pts = np.concatenate([np.asarray(points, np.float32), np.zeros((pad, points.shape[1]), np.float32)])
    var = np.concatenate([np.asarray(variances, np.float32), np.zeros((pad,), np.float32)])
    idx = np.where(np.arange(nb * block) < c, np.arange(nb * block), -1).astype(np.int32)
    pts_b = jnp.asarray(pts.reshape(nb, block, -1))
    var_b = jnp.asarray(var.reshape(nb, block))
    idx_b = jnp.asarray(idx.reshape(nb, block))
    shift = np.float32(-1.0 / (c - 1))  # cos of a simplex ETF: keeps the sum of squares well conditioned
    total = np.zeros(5, np.float64)
    for b in range(nb):
        out = _pair_row_block(pts_b[b], var_b[b], idx_b[b], pts_b, var_b, idx_b, shift)
        total += np.asarray(out, np.float64).sum(0)
    n = c * (c - 1) / 2
    cos_mean = total[2] / n
    cos_var = (total[3] - n * cos_mean**2) / (n - 1) if n > 1 else float("nan")
    return {
        "cdnv": float(total[0] / n),
        "cdnv_dist4": float(total[1] / n),
        "cos_std": float(np.sqrt(max(cos_var, 0.0))),
        "log_kernel": float(total[4] / n),
    }


def _std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if x.size > 1 else float("nan")


def _cov(x: np.ndarray) -> float:
    return _std(x) / abs(float(np.mean(x)))


def metrics(stats: dict, class_weights: jnp.ndarray, *, min_count: int = 1, block: int = 128) -> dict[str, Any]:
    """All NC metrics (module docstring) from pass-1 and pass-2 accumulators of `init_stats`
    and W[G] [K, hidden]. Raises ValueError when fewer than 2 classes have min_count samples."""
    counts = np.asarray(stats["counts"], np.float64)
    inc = counts >= max(min_count, 1)
    c = int(inc.sum())
    if c < 2:
        raise ValueError(
            f"only {c} class(es) occur at least {max(min_count, 1)} time(s) in the corpus; NC metrics need 2: "
            "use a larger corpus, another class set or a lower --min-count."
        )
    mu = np.asarray(class_means(stats), np.float64)[inc]
    w = np.asarray(class_weights, np.float64)[inc]
    var = np.asarray(stats["var_sums"], np.float64)[inc] / counts[inc]
    var_w = np.asarray(stats["var_sums_w"], np.float64)[inc] / counts[inc]
    m = mu - mu.mean(0)
    v = w - w.mean(0)
    norm = lambda a: a / (np.linalg.norm(a, axis=-1, keepdims=True) + EPS)  # noqa: E731
    s = np.sum(norm(w) * norm(m), axis=-1)
    pairs = pair_statistics(m, var, block=block)
    pairs_w = pair_statistics(v, var_w, block=block)
    total = float(stats["nc4_total"])
    return {
        "nc1_cdnv": pairs["cdnv"],
        "nc1_cdnv_dist4": pairs["cdnv_dist4"],
        "nc2_equinorm_cov": _cov(np.linalg.norm(m, axis=-1)),
        "nc2_equiangular_std": pairs["cos_std"],
        "gnc2_log_kernel": pairs["log_kernel"],
        "nc3_self_duality": float(np.mean(np.linalg.norm(norm(w) - norm(m), axis=-1))),
        "unc3_cos_std": _std(s),
        "unc3_cos_cov": _cov(s),
        "nc4_ncc_agreement": float(stats["nc4_agree"]) / total if total else float("nan"),
        "nc1_cdnv_calibrated": pairs_w["cdnv"],
        "nc1_cdnv_dist4_calibrated": pairs_w["cdnv_dist4"],
        "nc2_equinorm_cov_calibrated": _cov(np.linalg.norm(v, axis=-1)),
        "nc2_equiangular_std_calibrated": pairs_w["cos_std"],
        "gnc2_log_kernel_calibrated": pairs_w["log_kernel"],
        "nc4_ncc_agreement_calibrated": float(stats["nc4_agree_w"]) / total if total else float("nan"),
        "num_classes": c,
        "num_classes_below_min_count": int((~inc).sum()),
        "num_class_tokens": int(counts[inc].sum()),
    }
