"""The persistent compilation cache: compiled programs kept on disk and loaded by later runs.

An evaluation compiles about a dozen programs (one per padded length and function), a training
run compiles its step, and each compile takes about a second on a laptop CPU and far longer for
large models on accelerators. With the cache, a second evaluation, a resumed run or another cell
of a grid with the same shapes loads them instead. JAX keys every entry on the program, its
shapes, the devices and the JAX version, so a cached program is the one a fresh compile would
give and results do not change.

Where programs go (`directory`):
- `JAX_COMPILATION_CACHE_DIR`, when set in the environment, always wins;
- otherwise the directory a caller passes (a work directory's `jax_cache`, a `--compile-cache`
  flag), or `default_directory()`: `$XDG_CACHE_HOME/ncjax/jax`, else `~/.cache/ncjax/jax`.

`enable` must run before the first jit compile of the process: JAX reads the setting once.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

OFF = "off"


def default_directory() -> Path:
    """$XDG_CACHE_HOME/ncjax/jax, or ~/.cache/ncjax/jax."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ncjax" / "jax"


def directory(requested: str | Path | None) -> Path | None:
    """Where enable(requested) puts programs: JAX_COMPILATION_CACHE_DIR when set, None for
    'off', else `requested` or the default directory."""
    env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if env:
        return Path(env)
    if requested is not None and str(requested) == OFF:
        return None
    return Path(requested) if requested is not None else default_directory()


def enable(requested: str | Path | None = None) -> Path | None:
    """Turns the persistent compilation cache on (see `directory`) and returns its directory, or
    None for `requested='off'`.

    Every program is cached, however quickly it compiled: JAX's default skips programs compiled in
    under a second, which would leave out most of an evaluation's. JAX_PERSISTENT_CACHE_MIN_*
    environment variables, when set, keep their values.
    """
    path = directory(requested)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"The compilation cache directory {path} cannot be created ({e.strerror}); point "
                         f"JAX_COMPILATION_CACHE_DIR at a writable directory (evaluate and measure_collapse also "
                         f"take --compile-cache DIR or --compile-cache off).") from e
    jax.config.update("jax_compilation_cache_dir", str(path.absolute()))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
