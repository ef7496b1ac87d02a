"""The persistent compilation cache of the command-line tools (`ncjax.cache`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ncjax import cache

REPO = Path(__file__).resolve().parents[1]

# Runs launch/evaluate.py's main() in a fresh process and prints, as its last line, the exit code
# the programs it asked the persistent cache for and how many of them it loaded from there.
_COUNT_HITS = """
import collections, sys
import jax.monitoring
events = collections.Counter()
jax.monitoring.register_event_listener(lambda event, **kw: events.update([event]))
sys.path.insert(0, {launch!r})
import evaluate
rc = evaluate.main(sys.argv[1:])
print(rc, events["/jax/compilation_cache/compile_requests_use_cache"], events["/jax/compilation_cache/cache_hits"])
"""


def test_directory_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert cache.directory(tmp_path / "flag") == tmp_path / "env"  # the environment always wins
    assert cache.directory("off") == tmp_path / "env"
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    assert cache.directory(tmp_path / "flag") == tmp_path / "flag"
    assert cache.directory("off") is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.directory(None) == tmp_path / "xdg" / "ncjax" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.directory(None) == tmp_path / "home" / ".cache" / "ncjax" / "jax"


def test_off_sets_nothing_and_makes_no_directory(monkeypatch, tmp_path):
    import jax

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = jax.config.values["jax_compilation_cache_dir"]
    assert cache.enable("off") is None
    assert jax.config.values["jax_compilation_cache_dir"] == before and not (tmp_path / "xdg").exists()


def test_unwritable_directory_is_one_sentence(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"cannot be created .*JAX_COMPILATION_CACHE_DIR at a writable directory"):
        cache.enable(tmp_path / "file" / "cache")


@pytest.mark.torch
def test_second_evaluation_loads_every_program_and_scores_the_same(tiny_bert_dir, tmp_path):
    from test_bench_backends import write_tiny_data

    data = write_tiny_data(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["PYTHONPATH"] = str(REPO)
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")  # where the default directory would go
    script = _COUNT_HITS.format(launch=str(REPO / "launch"))

    def evaluate(name: str, cache_dir: str) -> tuple[int, int, dict]:
        out = tmp_path / f"{name}.json"
        proc = subprocess.run(
            [sys.executable, "-c", script, "--model", str(tiny_bert_dir), "--benchmarks", "crows,becpro",
             "--batch-size", "8", "--data-dir", str(data), "--output", str(out), "--quiet",
             "--compile-cache", cache_dir],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        rc, requests, hits = proc.stdout.strip().splitlines()[-1].split()
        assert rc == "0"
        res = json.loads(out.read_text())
        res.pop("seconds")
        return int(requests), int(hits), res

    requests, hits, first = evaluate("first", str(tmp_path / "cache"))
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert requests >= 2 and hits == 0 and len(entries) >= 2  # at least the log-prob program at two lengths
    requests, hits, second = evaluate("second", str(tmp_path / "cache"))
    assert hits == requests >= 2 and second == first  # every program loaded, the same scores
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == entries  # nothing compiled anew
    assert not (tmp_path / "xdg").exists()  # --compile-cache DIR: the default directory is not made
