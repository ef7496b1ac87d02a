"""Run identity: a work directory trains one config.

`workdir/config.json` records the config that created the directory. Once the directory holds a
checkpoint, a run with a different config is refused in one line naming the differing fields
(dotted keys, old -> new), because resuming would mix two trainings in one trajectory. A few
fields leave the model, data and objective alone (how long, how often to save or log, what to
export); they may change on resume when the caller names them (`allow`: dotted keys or `block.*` patterns, `--allow_config_change` in
launch/train.py):

    train.num_steps, train.log_every_steps, checkpoint.every_steps, checkpoint.max_to_keep,
    checkpoint.async_save, data.cache_dir, log.*, export.*

An allowed change is logged and written into config.json; nothing else ever rewrites it. The
`parallel.*` fields (device count, process layout, coordinator address) are never compared: they
differ between the processes of one run and between launches, and a run resumes on any device
count by design. A directory without a checkpoint holds no training yet: a new config replaces
the recorded one (logged). When config.json is missing, the config recorded in the newest
checkpoint's metadata is the reference (and config.json is written again from it).
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ncjax import files

log = logging.getLogger(__name__)

CHANGEABLE = ("train.num_steps", "train.log_every_steps", "checkpoint.every_steps", "checkpoint.max_to_keep",
              "checkpoint.async_save", "data.cache_dir", "log.*", "export.*")
IGNORED = ("parallel.*",)
_SHOWN = 4  # differing fields named in a refusal before "and N more"


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} (lists and scalars are leaves)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


_ABSENT = object()


def differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every compared field that differs, sorted by key;
    a field only one side has shows the other as absent."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in a.keys() | b.keys() if not _matches(k, IGNORED))
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in keys if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def describe(diffs: Sequence[tuple[str, Any, Any]], shown: int = _SHOWN) -> str:
    """'a.b 1 -> 2, c "x" -> "y" and 3 more'."""
    parts = [f"{k} {_show(o)} -> {_show(n)}" for k, o, n in diffs[:shown]]
    more = f" and {len(diffs) - shown} more" if len(diffs) > shown else ""
    return ", ".join(parts) + more


def parse_allow(allow: str | Sequence[str] | None, config: dict) -> tuple[str, ...]:
    """'a.b, log.*' or a sequence of patterns -> the patterns; raises ValueError (one sentence)
    for a pattern that matches no field of `config` or a field outside CHANGEABLE."""
    if not allow:
        return ()
    items = allow.split(",") if isinstance(allow, str) else list(allow)
    patterns = tuple(p.strip() for p in items if p.strip())
    keys = sorted(flatten(config))
    for p in patterns:
        matched = [k for k in keys if fnmatch.fnmatchcase(k, p)]
        if not matched:
            raise ValueError(f"--allow_config_change names {p}, which matches no config field; give dotted "
                             f"fields such as {CHANGEABLE[0]}.")
        unsafe = [k for k in matched if not _matches(k, CHANGEABLE)]
        if unsafe:
            raise ValueError(f"--allow_config_change names {unsafe[0]}, which changes what a run trains; only "
                             f"{', '.join(CHANGEABLE)} may change when resuming (use a new --workdir for the rest).")
    return patterns


def has_checkpoint(workdir: Path) -> bool:
    """Whether workdir/checkpoints holds any step directory (complete, damaged or moved aside)."""
    ckpts = Path(workdir) / "checkpoints"
    return ckpts.is_dir() and any(p.name.split(".")[0].isdigit() for p in ckpts.iterdir())


def recorded_config(workdir: str | Path) -> dict | None:
    """The config in the metadata of the newest readable checkpoint of `workdir` (every checkpoint
    records the config that wrote it), or None."""
    from ncjax.checkpoint import Checkpointer

    with Checkpointer(Path(workdir) / "checkpoints") as checkpointer:
        for step in reversed(checkpointer.steps_on_disk()):
            try:
                config = checkpointer.read_meta(step).get("config")
            except Exception:  # noqa: BLE001 - an unreadable checkpoint records nothing; try the previous
                continue
            if isinstance(config, dict):
                return config
    return None


def check_identity(config: dict, workdir: str | Path, allow: str | Sequence[str] | None = None, *,
                   write: bool = True) -> list[tuple[str, Any, Any]]:
    """Compares `config` (the run's config as a JSON object) with workdir/config.json (or, when
    that file is missing, with the config recorded in the newest checkpoint).

    Records it when the directory has none (or has no checkpoint yet); refuses a different config
    once a checkpoint exists (ValueError, one line naming the differing fields) unless every
    difference matches a pattern of `allow` (see CHANGEABLE), in which case config.json takes the
    allowed new values and the change is logged. `write`: False on every process but 0 (they only
    check). Returns the allowed differences."""
    workdir = Path(workdir)
    path = workdir / "config.json"
    patterns = parse_allow(allow, config)
    trained = has_checkpoint(workdir)
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path} is not valid JSON; restore it (every checkpoint's meta records the config) "
                             "or use a new --workdir.") from None
        if not isinstance(stored, dict):
            raise ValueError(f"{path} holds no JSON object; restore it (every checkpoint's meta records the "
                             "config) or use a new --workdir.")
        source = str(path)
    else:
        stored = recorded_config(workdir) if trained else None
        source = f"{workdir / 'checkpoints'} (config.json is missing)"
    if stored is None:
        if write:
            files.write_json(path, config, sort_keys=True)
        return []
    diffs = differences(stored, config)
    if diffs and not trained:
        log.warning("%s has no checkpoint yet: its config.json is replaced (%s)", workdir, describe(diffs))
        if write:
            files.write_json(path, config, sort_keys=True)
        return []
    refused = [d for d in diffs if not _matches(d[0], patterns)]
    if refused:
        changeable = [d for d in refused if _matches(d[0], CHANGEABLE)]
        hint = (f"; --allow_config_change={','.join(d[0] for d in changeable)} allows "
                f"{'that change' if len(changeable) == 1 else 'those changes'}" if changeable == refused else "")
        raise ValueError(f"{workdir} holds a run of a different config ({describe(refused)}); rerun with the config "
                         f"recorded in {source} or use a new --workdir{hint}.")
    if diffs:
        log.warning("config changed on resume (allowed): %s; %s updated", describe(diffs, len(diffs)), path)
    if write and (diffs or not path.is_file()):
        updated = flatten(stored)
        for key, _, new in diffs:
            updated[key] = new
        files.write_json(path, _unflatten({k: v for k, v in updated.items() if v is not _ABSENT}), sort_keys=True)
    return diffs


def _unflatten(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
