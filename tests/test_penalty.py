"""NC3 penalty against an independent numpy re-derivation of the released algorithm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ncjax import penalty

V, H, B, L = 40, 6, 8, 7
G = [3, 5, 8, 13, 21, 34, 2]  # class ids; 2 is never drawn below, so it stays absent
EPS32 = np.finfo(np.float32).eps


def _batch(seed, vocab_hi=36):
    """Token ids drawn so gender ids occur often, with right padding on some rows."""
    rng = np.random.default_rng(seed)
    pool = np.array([3, 5, 8, 13, 21, 34, 0, 1, 9, 30])
    ids = pool[rng.integers(0, len(pool), (B, L))]
    mask = np.ones((B, L), np.int32)
    for b, n in enumerate([7, 5, 7, 3, 6, 7, 2, 7]):
        mask[b, n:] = 0
        ids[b, n:] = 0
    feats = rng.normal(size=(B, L, H)).astype(np.float32)
    return ids.astype(np.int32), mask, feats


def _normalize(x):
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + EPS32)


class ReleasedNC3:
    """The released algorithm in numpy float64: full-vocabulary one-hot totals accumulated
    over steps, next-token pairing, unweighted mean over present gender ids, ddof=1 std."""

    def __init__(self, vocab, hidden, gender_ids):
        self.counts = np.zeros(vocab)
        self.totals = np.zeros((vocab, hidden))
        self.gender_ids = list(gender_ids)
        self.vocab = vocab

    def collect(self, ids, mask, feats):
        x = (feats.astype(np.float64) * mask[..., None])[:, :-1]
        y = ids[:, 1:]
        keep = mask[:, 1:].astype(bool)
        x, y = x[keep], y[keep]
        onehot = (y[:, None] == np.arange(self.vocab)[None, :]).astype(np.float64)  # N x V
        self.counts += onehot.sum(0)
        self.totals += onehot.T @ x

    def value(self, w_full, counts=None, totals=None):
        counts = self.counts if counts is None else counts
        totals = self.totals if totals is None else totals
        have = [g for g in self.gender_ids if counts[g] != 0]
        if len(have) < 2:
            return 0.0
        means = totals[have] / (counts[have][:, None] + EPS32)
        centred = means - means.mean(0)
        sims = np.sum(_normalize(centred) * _normalize(w_full[have].astype(np.float64)), axis=1)
        return float(np.std(sims, ddof=1))


def _batch_mode_numpy(feats, labels, weights, w_g, gender_ids):
    """Batch-mode R in float64 from the definition (no slot table)."""
    x = feats.reshape(-1, feats.shape[-1]).astype(np.float64)
    y = labels.reshape(-1)
    w = weights.reshape(-1).astype(np.float64)
    sims = []
    mus, rows = [], []
    for k, g in enumerate(gender_ids):
        sel = (y == g) & (w > 0)
        if sel.any():
            mus.append((x[sel] * w[sel, None]).sum(0) / w[sel].sum())
            rows.append(w_g[k])
    if len(mus) < 2:
        return 0.0
    mus = np.array(mus)
    centred = mus - mus.mean(0)
    sims = np.sum(_normalize(centred) * _normalize(np.array(rows, np.float64)), axis=1)
    return float(np.std(sims, ddof=1))


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(123)
    w_full = rng.normal(size=(V, H)).astype(np.float32)
    table = penalty.make_slot_table(G, V)
    return w_full, table


def test_slot_table_and_errors():
    table = np.asarray(penalty.make_slot_table([4, 1, 7], 10))
    assert table.dtype == np.int32
    np.testing.assert_array_equal(table, [3, 1, 3, 3, 0, 3, 3, 2, 3, 3])
    with pytest.raises(ValueError, match="duplicate"):
        penalty.make_slot_table([1, 1], 10)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        penalty.make_slot_table([1, 10], 10)


def test_penalty_targets():
    ids, mask, _ = _batch(0)
    lab0, w0 = penalty.penalty_targets(ids, mask, label_shift=0)
    np.testing.assert_array_equal(lab0, ids)
    np.testing.assert_array_equal(w0, mask)
    lab1, w1 = penalty.penalty_targets(ids, mask, label_shift=1)
    np.testing.assert_array_equal(np.asarray(lab1)[:, :-1], ids[:, 1:])
    np.testing.assert_array_equal(np.asarray(w1)[:, :-1], mask[:, 1:])
    assert np.all(np.asarray(w1)[:, -1] == 0)
    assert w1.dtype == jnp.float32 and lab1.dtype == jnp.int32
    with pytest.raises(ValueError, match="label_shift"):
        penalty.penalty_targets(ids, mask, label_shift=2)


def test_class_sums_match_oracle_and_numpy_bf16(setup):
    _, table = setup
    ids, mask, feats = _batch(1)
    lab, w = penalty.penalty_targets(ids, mask, label_shift=0)
    f16 = jnp.asarray(feats, jnp.bfloat16)
    sums, counts = jax.jit(penalty.class_sums, static_argnums=4)(f16, lab, w, table, len(G))
    o_sums, o_counts = penalty.class_sums_segment(f16, lab, w, table, len(G))
    assert sums.dtype == jnp.float32
    # numpy from the bf16 values, in float64
    x = np.asarray(f16.astype(jnp.float32), np.float64)
    ref_s = np.stack([(x * ((ids == g) & (mask > 0))[..., None]).sum((0, 1)) for g in G])
    ref_c = np.array([((ids == g) & (mask > 0)).sum() for g in G], np.float64)
    np.testing.assert_allclose(sums, ref_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(o_sums, ref_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(counts, ref_c)
    np.testing.assert_array_equal(o_counts, ref_c)
    assert ref_c[G.index(2)] == 0  # an absent class stays at zero


def _reference_step(setup):
    w_full, table = setup

    @jax.jit
    def step(state, ids, mask, feats, w_full):
        lab, w = penalty.penalty_targets(ids, mask, label_shift=1)
        w_g = w_full[jnp.asarray(G)]
        return penalty.nc3_penalty(state, feats, lab, w, w_g, table, mode="reference")

    return step


def test_reference_mode_matches_released_algorithm_step_by_step(setup):
    w_full, table = setup
    step = _reference_step(setup)
    oracle = ReleasedNC3(V, H, G)
    state = penalty.init_state(len(G), H)
    # Step 0 holds a single gender occurrence: fewer than 2 classes -> R = 0, not valid.
    ids = np.zeros((B, L), np.int32)
    ids[0, 1] = 3
    mask = np.ones((B, L), np.int32)
    feats = np.random.default_rng(9).normal(size=(B, L, H)).astype(np.float32)
    batches = [(ids, mask, feats)] + [_batch(s) for s in (2, 3, 4)]
    for t, (ids, mask, feats) in enumerate(batches):
        r, state, metrics = step(state, ids, mask, feats, w_full)
        oracle.collect(ids, mask, feats)
        expected = oracle.value(w_full)
        np.testing.assert_allclose(float(r), expected, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(state["counts"], oracle.counts[G], rtol=0, atol=0)
        np.testing.assert_allclose(state["sums"], oracle.totals[G], rtol=1e-5, atol=1e-5)
        present = int((oracle.counts[G] > 0).sum())
        assert int(metrics["nc3_classes"]) == present
        assert bool(metrics["nc3_valid"]) == (present >= 2)
        if t == 0:
            assert float(r) == 0.0 and not bool(metrics["nc3_valid"])
    assert present >= 4 and expected > 0


def test_reference_gradient_only_on_gender_rows_and_matches_fd(setup):
    w_full, table = setup
    state = penalty.init_state(len(G), H)
    ids, mask, feats = _batch(5)
    state = _reference_step(setup)(state, ids, mask, feats, w_full)[1]
    ids, mask, feats = _batch(6)

    def loss(w_full, feats):
        lab, w = penalty.penalty_targets(ids, mask, label_shift=1)
        return penalty.nc3_penalty(
            state, feats, lab, w, w_full[jnp.asarray(G)], table, mode="reference"
        )[0]

    g_w, g_f = jax.jit(jax.grad(loss, argnums=(0, 1)))(w_full, feats)
    assert np.all(np.asarray(g_f) == 0)
    others = np.setdiff1d(np.arange(V), G)
    assert np.all(np.asarray(g_w)[others] == 0)
    assert np.abs(np.asarray(g_w)[G]).sum() > 0
    # finite differences of the independent float64 oracle, state + this batch
    oracle = ReleasedNC3(V, H, G)
    oracle.collect(*_batch(5))
    oracle.collect(ids, mask, feats)
    w64 = w_full.astype(np.float64)
    fd = np.zeros_like(w64)
    h = 1e-6
    for g in G:
        for j in range(H):
            wp, wm = w64.copy(), w64.copy()
            wp[g, j] += h
            wm[g, j] -= h
            fd[g, j] = (oracle.value(wp) - oracle.value(wm)) / (2 * h)
    np.testing.assert_allclose(np.asarray(g_w), fd, rtol=1e-3, atol=2e-5)


def test_batch_mode_value_and_gradient_fd_x64(setup):
    w_full, table = setup
    ids, mask, feats = _batch(7)
    lab, w = penalty.penalty_targets(ids, mask, label_shift=0)
    lab_np, w_np = np.asarray(lab), np.asarray(w)
    w_g = w_full[G]
    with jax.enable_x64(True):
        state = jax.tree.map(lambda a: a.astype(jnp.float64), penalty.init_state(len(G), H))

        def loss(feats, w_g):
            return penalty.nc3_penalty(state, feats, lab, w, w_g, table, mode="batch")[0]

        f64, wg64 = feats.astype(np.float64), w_g.astype(np.float64)
        r = float(loss(f64, wg64))
        g_f, g_w = jax.grad(loss, argnums=(0, 1))(f64, wg64)
        g_f, g_w = np.asarray(g_f), np.asarray(g_w)
    assert r == pytest.approx(_batch_mode_numpy(f64, lab_np, w_np, wg64, G), rel=1e-10)
    h = 1e-6
    rng = np.random.default_rng(0)
    # features: all entries of a few positions (gender and non-gender, padded)
    for b, t in [(0, 0), (1, 2), (3, 4), (6, 5)]:
        for j in range(H):
            fp, fm = f64.copy(), f64.copy()
            fp[b, t, j] += h
            fm[b, t, j] -= h
            fd = (_batch_mode_numpy(fp, lab_np, w_np, wg64, G) - _batch_mode_numpy(fm, lab_np, w_np, wg64, G)) / (2 * h)
            assert g_f[b, t, j] == pytest.approx(fd, rel=1e-5, abs=1e-8)
    assert np.abs(g_f).sum() > 0
    assert np.all(g_f[mask == 0] == 0)
    for _ in range(10):
        k, j = rng.integers(0, len(G)), rng.integers(0, H)
        wp, wm = wg64.copy(), wg64.copy()
        wp[k, j] += h
        wm[k, j] -= h
        fd = (_batch_mode_numpy(f64, lab_np, w_np, wp, G) - _batch_mode_numpy(f64, lab_np, w_np, wm, G)) / (2 * h)
        assert g_w[k, j] == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_batch_mode_stop_gradient_and_ema(setup):
    w_full, table = setup
    w_g = jnp.asarray(w_full[G])
    ids, mask, feats = _batch(8)
    lab, w = penalty.penalty_targets(ids, mask, label_shift=0)
    state0 = penalty.init_state(len(G), H)
    g = jax.grad(
        lambda f: penalty.nc3_penalty(state0, f, lab, w, w_g, table, mode="batch", stop_gradient_mu=True)[0]
    )(feats)
    assert np.all(np.asarray(g) == 0)
    # EMA: stats = ema * state + (1 - ema) * batch
    _, st1, _ = penalty.nc3_penalty(state0, feats, lab, w, w_g, table, mode="batch")
    ids2, mask2, feats2 = _batch(9)
    lab2, w2 = penalty.penalty_targets(ids2, mask2, label_shift=0)
    r2, st2, _ = penalty.nc3_penalty(st1, feats2, lab2, w2, w_g, table, mode="batch", ema=0.9)
    s_b, c_b = penalty.class_sums_segment(feats2, lab2, w2, table, len(G))
    np.testing.assert_allclose(st2["sums"], 0.9 * np.asarray(st1["sums"]) + 0.1 * np.asarray(s_b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st2["counts"], 0.9 * np.asarray(st1["counts"]) + 0.1 * np.asarray(c_b), rtol=1e-6)
    oracle = ReleasedNC3(V, H, G)
    expected = oracle.value(w_full, counts=_full(st2["counts"]), totals=_full(st2["sums"]))
    # the released code adds eps to the count; irrelevant at these counts
    np.testing.assert_allclose(float(r2), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="mode"):
        penalty.nc3_penalty(state0, feats, lab, w, w_g, table, mode="per_device")
    with pytest.raises(ValueError, match="ema"):
        penalty.nc3_penalty(state0, feats, lab, w, w_g, table, mode="batch", ema=1.0)


def _full(per_class):
    per_class = np.asarray(per_class, np.float64)
    out = np.zeros((V,) + per_class.shape[1:])
    out[G] = per_class
    return out


def test_fewer_than_two_classes_is_zero_with_finite_gradient(setup):
    w_full, table = setup
    ids = np.zeros((B, L), np.int32)
    ids[2, 3] = 5
    ids[4, 1] = 5
    mask = np.ones((B, L), np.int32)
    feats = np.random.default_rng(3).normal(size=(B, L, H)).astype(np.float32)
    lab, w = penalty.penalty_targets(ids, mask, label_shift=0)
    w_g = jnp.asarray(w_full[G])

    def loss(f, w_g):
        r, _, m = penalty.nc3_penalty(penalty.init_state(len(G), H), f, lab, w, w_g, table, mode="batch")
        return r, m

    (r, m), (g_f, g_w) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(feats, w_g)
    assert float(r) == 0.0 and not bool(m["nc3_valid"]) and int(m["nc3_classes"]) == 1
    assert np.all(np.asarray(g_f) == 0) and np.all(np.asarray(g_w) == 0)


def test_one_vs_eight_devices(setup):
    """Sums over the globally sharded batch: the same R, state and gradients as one device."""
    w_full, table = setup
    assert len(jax.devices()) == 8
    ids = np.concatenate([_batch(s)[0] for s in (10, 11)])  # 16 rows, 2 per device
    mask = np.concatenate([_batch(s)[1] for s in (10, 11)])
    feats = np.concatenate([_batch(s)[2] for s in (10, 11)])
    state = penalty.init_state(len(G), H)

    def step(state, ids, mask, feats, w_full, mode):
        lab, w = penalty.penalty_targets(ids, mask, label_shift=1 if mode == "reference" else 0)

        def loss(w_full, feats):
            r, new_state, m = penalty.nc3_penalty(
                state, feats, lab, w, w_full[jnp.asarray(G)], table, mode=mode
            )
            return r, (new_state, m)

        (r, (new_state, m)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(w_full, feats)
        return r, new_state, grads

    mesh8 = Mesh(np.array(jax.devices()), ("data",))
    mesh1 = Mesh(np.array(jax.devices()[:1]), ("data",))
    for mode in ("reference", "batch"):
        results = []
        for mesh in (mesh1, mesh8):
            data = NamedSharding(mesh, PartitionSpec("data"))
            rep = NamedSharding(mesh, PartitionSpec())
            args = (
                jax.device_put(state, rep),
                jax.device_put(ids, data),
                jax.device_put(mask, data),
                jax.device_put(feats, data),
                jax.device_put(w_full, rep),
            )
            fn = jax.jit(step, static_argnums=5)
            out = fn(*args, mode)
            if mesh is mesh8:
                assert len(out[2][1].sharding.device_set) == 8
            results.append(jax.tree.map(np.asarray, out))
        one, eight = results
        np.testing.assert_allclose(one[0], eight[0], rtol=1e-6, atol=1e-7)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one[1], eight[1])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), one[2], eight[2])
        assert one[0] > 0
    # and per-device means would differ: R from one device's shard alone is not the global R
    lab, w = penalty.penalty_targets(ids, mask, label_shift=0)
    r_global = penalty.nc3_penalty(state, feats, lab, w, w_full[G], table, mode="batch")[0]
    r_shard = penalty.nc3_penalty(state, feats[:2], lab[:2], w[:2], w_full[G], table, mode="batch")[0]
    assert abs(float(r_global) - float(r_shard)) > 1e-3
