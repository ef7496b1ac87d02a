"""The fine-tuning core: the sequence head equals transformers' BertForSequenceClassification on the
same weights, 1 and 8 devices give the same fine-tune losses, and an interrupted run resumes to the
same parameters."""

import json

import jax
import numpy as np
import pytest

from ncjax import parallel
from ncjax.bench import finetune as ft
from ncjax.bench.heads import SequenceHead, SpanPairHead, span_means
from ncjax.convert import load_model, load_pooler


def _encoded(n: int, vocab: int, seed: int, num_labels: int) -> ft.Encoded:
    rng = np.random.default_rng(seed)
    ids, types = [], []
    for _ in range(n):
        length = int(rng.integers(4, 20))
        x = rng.integers(5, vocab, length).astype(np.int32)
        x[0], x[-1] = 2, 3
        ids.append(x)
        types.append((np.arange(length) >= length // 2).astype(np.int32))
    labels = rng.normal(size=n).astype(np.float32) if num_labels == 1 else rng.integers(0, num_labels, n)
    return ft.Encoded(ids, types, {"labels": labels})


@pytest.fixture(scope="module")
def tiny_model(tiny_bert_dir):
    model, _ = load_model(tiny_bert_dir, init_missing_head=True)
    return ft.split_encoder(model)


@pytest.mark.torch
@pytest.mark.parametrize("num_labels", [3, 1])
def test_sequence_head_matches_transformers(tiny_bert_dir, tmp_path, num_labels):
    import torch
    from safetensors.torch import save_file
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    ref = BertForSequenceClassification.from_pretrained(str(tiny_bert_dir), num_labels=num_labels).eval()
    # The encoder + pooler as a checkpoint ncjax reads (the classifier is copied in directly).
    sd = {k: v.contiguous() for k, v in ref.state_dict().items() if k.startswith("bert.") and "position_ids" not in k}
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((tiny_bert_dir / "config.json").read_text())
    model, _ = load_model(tmp_path, init_missing_head=True)
    pooler = load_pooler(tmp_path)
    assert pooler is not None and np.array_equal(pooler["kernel"], sd["bert.pooler.dense.weight"].numpy().T)
    m = ft.split_encoder(model)
    head = SequenceHead(num_labels)
    params = {"encoder": m.encoder, "head": head.init(jax.random.key(0), m.hidden, pooler)}
    params["head"]["classifier"] = {"kernel": ref.classifier.weight.detach().numpy().T,
                                    "bias": ref.classifier.bias.detach().numpy()}
    data = _encoded(7, 54, 1, num_labels)
    batch = ft.make_batch(data, np.arange(7), 8, 64, 0)
    logits = ft.predict(m, head, params, data, max_length=64, batch_size=8, mesh=parallel.make_mesh(1))
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(batch["input_ids"][:7], dtype=torch.long),
                  attention_mask=torch.tensor(batch["attention_mask"][:7], dtype=torch.long),
                  token_type_ids=torch.tensor(batch["token_type_ids"][:7], dtype=torch.long),
                  labels=torch.tensor(data.fields["labels"]))
    np.testing.assert_allclose(logits, out.logits.numpy(), rtol=0, atol=1e-5)
    if num_labels > 1:
        assert (logits.argmax(-1) == out.logits.numpy().argmax(-1)).all()
    per = head.loss(jax.numpy.asarray(logits), {k: jax.numpy.asarray(v) for k, v in data.fields.items()})
    np.testing.assert_allclose(float(per.mean()), float(out.loss), rtol=0, atol=1e-5)


def test_one_and_eight_devices_give_the_same_losses(tiny_model):
    data = _encoded(40, 54, 2, 2)
    hp = ft.Hparams(learning_rate=1e-3, batch_size=16, epochs=2, seed=3, warmup_ratio=0.2)
    runs = {}
    for n in (1, 8):
        mesh = parallel.make_mesh(n)
        params, losses = ft.finetune(tiny_model, SequenceHead(2), data, hp, max_length=64, mesh=mesh)
        runs[n] = (losses, ft.predict(tiny_model, SequenceHead(2), params, data, max_length=64, mesh=mesh))
    assert len(runs[1][0]) == 6  # 3 batches (the last one padded with weight-0 rows) x 2 epochs
    np.testing.assert_allclose(runs[1][0], runs[8][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs[1][1], runs[8][1], rtol=1e-4, atol=1e-5)
    assert runs[1][0][-1] < runs[1][0][0]


def test_interrupted_run_resumes_to_the_same_parameters(tiny_model, tmp_path, monkeypatch):
    data = _encoded(24, 54, 4, 3)
    hp = ft.Hparams(learning_rate=1e-3, batch_size=8, epochs=2, seed=5, checkpoint_every=2)
    mesh = parallel.make_mesh(2)
    head = SequenceHead(3)
    full, full_losses = ft.finetune(tiny_model, head, data, hp, max_length=64, mesh=mesh)
    real = ft.make_batch
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated preemption")
        return real(*a, **k)

    monkeypatch.setattr(ft, "make_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(tiny_model, head, data, hp, max_length=64, mesh=mesh, run_dir=tmp_path / "run", spec={"task": "x"})
    monkeypatch.setattr(ft, "make_batch", real)
    resumed, losses = ft.finetune(tiny_model, head, data, hp, max_length=64, mesh=mesh, run_dir=tmp_path / "run",
                                  spec={"task": "x"})
    assert losses == full_losses
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match=r"run directory .*run was made with other settings \(task\)"):
        ft.finetune(tiny_model, head, data, hp, max_length=64, mesh=mesh, run_dir=tmp_path / "run",
                    spec={"task": "y"})
    assert json.loads((tmp_path / "run" / "spec.json").read_text())["task"] == "x"


def test_span_means_and_pair_logits_by_hand():
    h = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    spans = np.array([[[1, 2], [2, 4], [0, 5]], [[4, 5], [0, 1], [1, 3]]], np.int32)
    got = np.asarray(span_means(h, spans))
    for b in range(2):
        for s in range(3):
            np.testing.assert_allclose(got[b, s], h[b, spans[b, s, 0]:spans[b, s, 1]].mean(0), rtol=1e-6)
    head = SpanPairHead(width=4)
    p = head.init(jax.random.key(0), 3)
    logits = np.asarray(head.logits(p, h, {"spans": spans}, None))
    assert logits.shape == (2, 3) and (logits[:, 2] == 0).all()
    x = np.concatenate([got[0, 0], got[0, 1], got[0, 0] * got[0, 1]])
    hid = np.asarray(jax.nn.gelu(x @ np.asarray(p["hidden"]["kernel"]) + np.asarray(p["hidden"]["bias"]),
                                 approximate=False))
    expect = hid @ np.asarray(p["score"]["kernel"])[:, 0] + float(p["score"]["bias"][0])
    np.testing.assert_allclose(logits[0, 0], expect, rtol=1e-5)
