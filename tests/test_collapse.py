"""NC statistics and metrics against plain-numpy formulas, streaming, blocking, 1 vs 8 devices."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import BertTokenizer

from ncjax import collapse, measure, penalty

EPS32 = np.finfo(np.float32).eps


def _nrm(a):
    return a / (np.linalg.norm(a, axis=-1, keepdims=True) + EPS32)


def numpy_metrics(x, y, class_ids, w_full, min_count=1):
    """Every metric of docs/collapse.md from samples x [N, H], y [N], written out plainly."""
    x = np.asarray(x, np.float64)
    cls = [g for g in class_ids if (y == g).sum() >= min_count]
    mu = np.stack([x[y == g].mean(0) for g in cls])
    w = np.asarray(w_full, np.float64)[cls]
    var = np.array([np.mean(np.sum((x[y == g] - mu[i]) ** 2, 1)) for i, g in enumerate(cls)])
    var_w = np.array([np.mean(np.sum((x[y == g] - w[i]) ** 2, 1)) for i, g in enumerate(cls)])
    m = mu - mu.mean(0)
    v = w - w.mean(0)

    def pairs(p, var):
        cd, cd4, cos, lk = [], [], [], []
        for i in range(len(p)):
            for j in range(i + 1, len(p)):
                d = np.linalg.norm(p[i] - p[j])
                cd.append((var[i] + var[j]) / (2 * d**2))
                cd4.append((var[i] + var[j]) / (2 * d**4))
                cos.append(_nrm(p[i]) @ _nrm(p[j]))
                lk.append(np.log(1.0 / np.linalg.norm(_nrm(p[i]) - _nrm(p[j]))))
        return np.mean(cd), np.mean(cd4), np.std(cos, ddof=1), np.mean(lk)

    def cov(a):
        return np.std(a, ddof=1) / abs(np.mean(a))

    sel = np.isin(y, cls)
    xs = x[sel]
    lin = np.argmax(xs @ w.T, axis=1)
    ncc = np.argmin(np.linalg.norm(xs[:, None] - mu[None], axis=-1), axis=1)
    ncw = np.argmin(np.linalg.norm(xs[:, None] - w[None], axis=-1), axis=1)
    s = np.sum(_nrm(w) * _nrm(m), 1)
    p, pw = pairs(m, var), pairs(v, var_w)
    return {
        "nc1_cdnv": p[0], "nc1_cdnv_dist4": p[1],
        "nc2_equinorm_cov": cov(np.linalg.norm(m, axis=1)), "nc2_equiangular_std": p[2],
        "gnc2_log_kernel": p[3],
        "nc3_self_duality": np.mean(np.linalg.norm(_nrm(w) - _nrm(m), axis=1)),
        "unc3_cos_std": np.std(s, ddof=1), "unc3_cos_cov": cov(s),
        "nc4_ncc_agreement": np.mean(lin == ncc),
        "nc1_cdnv_calibrated": pw[0], "nc1_cdnv_dist4_calibrated": pw[1],
        "nc2_equinorm_cov_calibrated": cov(np.linalg.norm(v, axis=1)),
        "nc2_equiangular_std_calibrated": pw[2], "gnc2_log_kernel_calibrated": pw[3],
        "nc4_ncc_agreement_calibrated": np.mean(lin == ncw),
        "num_classes": len(cls), "num_class_tokens": int(sel.sum()),
    }


def assert_metrics_close(got, want, rtol=1e-4):
    for key, val in want.items():
        assert got[key] == pytest.approx(val, rel=rtol, abs=1e-6), key


V, H = 30, 5
G = [2, 4, 7, 11, 12, 15, 19, 23, 29]  # 29 never drawn (absent); 23 drawn rarely


def _data(seed, b=6, length=9, dtype=np.float32):
    rng = np.random.default_rng(seed)
    y = rng.choice([2, 4, 7, 11, 12, 15, 19, 0, 1, 5], size=(b, length))
    y[0, 0] = 23
    w = (rng.random((b, length)) > 0.15).astype(np.float32)  # "padding" / special positions
    # class-dependent offsets so the metrics are not degenerate
    centres = np.random.default_rng(100).normal(size=(V, H)) * 2
    x = centres[y] + rng.normal(size=(b, length, H))
    return jnp.asarray(x, dtype), y.astype(np.int32), w


@pytest.fixture(scope="module")
def w_full():
    return np.random.default_rng(7).normal(size=(V, H)).astype(np.float32)


def _stream(batches, table, w_g, k, min_count, block):
    acc1 = jax.jit(collapse.accumulate_means)
    acc2 = jax.jit(collapse.accumulate_second, static_argnames="block")
    stats = collapse.init_stats(k, H)
    for x, y, w in batches:
        stats = acc1(stats, x, y, w, table)
    means = collapse.class_means(stats)
    included = stats["counts"] >= min_count
    for x, y, w in batches:
        stats = acc2(stats, x, y, w, table, means, w_g, included, block=block)
    return stats


@pytest.mark.parametrize("dtype,min_count,block", [(np.float32, 1, 4), (jnp.bfloat16, 4, 64)])
def test_streaming_metrics_equal_numpy(w_full, dtype, min_count, block):
    batches = [_data(s, dtype=dtype) for s in (0, 1, 2)]
    table = penalty.make_slot_table(G, V)
    w_g = jnp.asarray(w_full[G])
    stats = _stream(batches, table, w_g, len(G), min_count, block)
    got = collapse.metrics(jax.tree.map(np.asarray, stats), w_g, min_count=min_count, block=3)
    x = np.concatenate([np.asarray(b[0].astype(jnp.float32)).reshape(-1, H) for b in batches])
    y = np.concatenate([b[1].reshape(-1) for b in batches])
    keep = np.concatenate([b[2].reshape(-1) for b in batches]) > 0
    want = numpy_metrics(x[keep], y[keep], G, w_full, min_count)
    assert_metrics_close(got, want)
    assert got["num_classes_below_min_count"] == len(G) - want["num_classes"]
    if min_count == 4:
        assert want["num_classes"] < len(G) - 1  # the rare class 23 was excluded too


def test_segment_sum_path_for_large_class_sets(w_full, monkeypatch):
    monkeypatch.setattr(collapse, "_ONE_HOT_MAX_CLASSES", 0)
    batches = [_data(s) for s in (3, 4)]
    table = penalty.make_slot_table(G, V)
    w_g = jnp.asarray(w_full[G])
    stats = _stream(batches, table, w_g, len(G), 1, 2)
    got = collapse.metrics(jax.tree.map(np.asarray, stats), w_g, block=2)
    x = np.concatenate([np.asarray(b[0]).reshape(-1, H) for b in batches])
    y = np.concatenate([b[1].reshape(-1) for b in batches])
    keep = np.concatenate([b[2].reshape(-1) for b in batches]) > 0
    assert_metrics_close(got, numpy_metrics(x[keep], y[keep], G, w_full))


def test_pair_statistics_blocked_and_near_coincident_classes():
    """Blocked pair sums equal numpy, also when two classes are far closer than their norms
    (where the Gram expansion of squared distances alone loses precision in float32)."""
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(37, 6)) * 10
    pts[5] = pts[4] + 0.1 * rng.normal(size=6)  # distance ~1e-2 of the norms
    var = rng.random(37)
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    n = _nrm(pts)
    cos = n @ n.T
    iu = np.triu_indices(37, 1)
    vv = (var[:, None] + var[None, :])[iu]
    want = {
        "cdnv": np.mean(vv / (2 * d[iu] ** 2)),
        "cdnv_dist4": np.mean(vv / (2 * d[iu] ** 4)),
        "cos_std": np.std(cos[iu], ddof=1),
        "log_kernel": np.mean(-np.log(np.linalg.norm(n[:, None] - n[None], axis=-1)[iu])),
    }
    for block in (5, 64):
        got = collapse.pair_statistics(pts, var, block=block)
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=2e-5), (block, key)


def test_metrics_errors_with_fewer_than_two_classes(w_full):
    stats = collapse.init_stats(3, H)
    stats["counts"] = jnp.asarray([4.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="need 2"):
        collapse.metrics(stats, w_full[:3], min_count=2)


def test_class_subset_specs():
    seen = np.array([5, 9, 3, 3, 12, 40, 7])
    assert list(collapse.class_subset("all", seen_ids=seen).ids) == [3, 5, 7, 9, 12, 40]
    r1 = collapse.class_subset("random:3", seen_ids=seen, seed=1).ids
    r2 = collapse.class_subset("random:3", seen_ids=seen, seed=1).ids
    assert list(r1) == list(r2) and len(r1) == 3 and set(r1) <= set(seen) and list(r1) == sorted(r1)
    with pytest.raises(ValueError, match="unknown class spec"):
        collapse.class_subset("gender", seen_ids=seen)
    with pytest.raises(ValueError, match="between 2 and the 6"):
        collapse.class_subset("random:7", seen_ids=seen)
    with pytest.raises(ValueError, match="integer K"):
        collapse.class_subset("random:x", seen_ids=seen)


# ----------------------------------------------------------------------------- measure()

# Sentences in the tiny fixture vocabulary, dense in gendered words.
LINES = (Path(__file__).parent / "fixtures" / "gender_lines.txt").read_text().splitlines()


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    from ncjax.convert import load_model

    model, _ = load_model(tiny_bert_dir)
    tok = BertTokenizer(vocab=str(tiny_bert_dir / "vocab.txt"))
    return model, tok


def _direct(model, tok, lines, class_ids, features, label_shift):
    """Features of each line alone (no batching, no sorting) at its non-special positions."""
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, ids, mask):
        out = nnx.merge(graphdef, state)(ids, mask, None, with_logits=False)
        return out.mlm_hidden if features == "mlm_transform" else out.last_hidden

    xs, ys = [], []
    for line in lines:
        enc = tok(line, return_special_tokens_mask=True)
        ids = np.asarray(enc["input_ids"])[None]
        n = ids.shape[1]
        # alone in its batch, padded to one length (one compilation), sliced back to n
        padded, mask = np.zeros((1, 32), np.int32), np.zeros((1, 32), np.int32)
        padded[0, :n], mask[0, :n] = ids[0], 1
        f = np.asarray(forward(state, jnp.asarray(padded), jnp.asarray(mask)))[0, :n]
        counted = 1 - np.asarray(enc["special_tokens_mask"])
        if label_shift == 0:
            keep, labels = counted > 0, ids[0]
        else:
            keep = np.concatenate([counted[1:], [0]]) > 0
            labels = np.concatenate([ids[0, 1:], [0]])
        xs.append(f[keep])
        ys.append(labels[keep])
    x, y = np.concatenate(xs), np.concatenate(ys)
    sel = np.isin(y, class_ids)
    return x, y, sel


@pytest.mark.parametrize("features,label_shift", [("mlm_transform", 0), ("last_hidden", 1)])
def test_measure_equals_numpy_on_per_line_features(tiny, features, label_shift):
    model, tok = tiny
    res = measure.measure(
        model, tok, LINES, classes="gender-adept", features=features, label_shift=label_shift,
        batch_size=4, block=4,
    )
    from ncjax import words

    ids = list(words.resolve(words.bundled("gender-adept"), tok).ids)
    x, y, sel = _direct(model, tok, LINES, ids, features, label_shift)
    want = numpy_metrics(x, y, ids, np.asarray(model.word_embeddings()))
    assert_metrics_close(res, want, rtol=2e-4)
    assert res["num_tokens"] == len(y)
    assert res["num_classes_requested"] == len(ids) == want["num_classes"]
    assert res["features"] == features and res["label_shift"] == label_shift


def test_measure_one_vs_eight_devices_and_max_tokens(tiny):
    from ncjax import parallel

    model, tok = tiny
    one = measure.measure(model, tok, LINES, classes="all", batch_size=8, block=16)
    eight = measure.measure(model, tok, LINES, classes="all", batch_size=8, block=16, mesh=parallel.make_mesh())
    for key in collapse.METRIC_KEYS:
        assert one[key] == pytest.approx(eight[key], rel=1e-5, abs=1e-7), key
    capped = measure.measure(model, tok, LINES, classes="all", batch_size=8, max_tokens=20)
    assert capped["num_tokens"] == 20


def test_measure_errors(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="corpus is empty"):
        measure.measure(model, tok, ["", "  "])
    with pytest.raises(ValueError, match="no token of the class set"):
        measure.measure(model, tok, ["the nurse worked at the hospital ."])
    with pytest.raises(ValueError, match="unknown class spec"):
        measure.measure(model, tok, LINES, classes="race")
    with pytest.raises(ValueError, match="need 2"):
        measure.measure(model, tok, ["he worked ."])


def test_read_corpus_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one line\n\nsecond line\n")
    (tmp_path / "a.tsv").write_text("ID\tText\tx\n1\tfirst text\t0\n2\tsecond\t1\n")
    (tmp_path / "a.jsonl").write_text('{"text": "j one"}\n\n{"text": "j two", "y": 1}\n')
    assert measure.read_corpus(tmp_path / "a.txt") == ["one line", "second line"]
    assert measure.read_corpus(tmp_path / "a.tsv") == ["first text", "second"]
    assert measure.read_corpus(tmp_path / "a.tsv", column="ID") == ["1", "2"]
    assert measure.read_corpus(tmp_path / "a.jsonl") == ["j one", "j two"]
    with pytest.raises(ValueError, match="no field 'body'"):
        measure.read_corpus(tmp_path / "a.jsonl", field="body")
    with pytest.raises(ValueError, match="no column 'txt'"):
        measure.read_corpus(tmp_path / "a.tsv", column="txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        measure.read_corpus(tmp_path / "missing.txt")
