"""Split protocols: which events of a user are trained on and which are held out (docs/conventions.md).

Everything works on the per-user lengths array alone, so it is vectorised and never touches events.
A user's events in time order are `s[0..n-1]`; a part is described by how many trailing events it drops:
the train part is `s[:n - train_drop]`, an eval example has history `s[:n - drop]` and target `s[n - drop]`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# A train part needs one next-item target; an eval example needs a non-empty history.
MIN_TRAIN_EVENTS = 2
MIN_HISTORY_EVENTS = 1


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    train_drop: int  # train part = s[:n - train_drop]
    eval_drop: dict[str, int]  # split -> events dropped from the end for the history; target = s[n - drop]
    missing: dict[str, str]  # split -> why this protocol has no such split


PROTOCOLS: dict[str, Protocol] = {
    "loo-val": Protocol("loo-val", train_drop=2, eval_drop={"valid": 2, "test": 1}, missing={}),
    "reference": Protocol(
        "reference",
        train_drop=1,
        eval_drop={"test": 1},
        missing={
            "valid": "protocol 'reference' has no 'valid' split: like the reference implementation it trains "
            "on s[:n-1] and evaluates only on s[n-1], so validation would reuse train events; "
            "use protocol 'loo-val' for a validation split"
        },
    ),
}
EVAL_SPLITS = ("valid", "test")


def get_protocol(protocol: str) -> Protocol:
    """The protocol named `protocol`, or an error listing the known ones."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown split protocol {protocol!r}; known protocols: {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def _as_lengths(lengths: np.ndarray) -> np.ndarray:
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be a 1-D integer array, got shape {lengths.shape} dtype {lengths.dtype}")
    if lengths.size and lengths.min() < 0:
        raise ValueError(f"lengths must be >= 0; user row {int(np.argmin(lengths))} has {int(lengths.min())}")
    return lengths.astype(np.int64, copy=False)


def train_lengths(lengths: np.ndarray, protocol: str) -> np.ndarray:
    """int64 [U]: length of each user's train part, or -1 when it has fewer than 2 events."""
    n = _as_lengths(lengths)
    t = n - get_protocol(protocol).train_drop
    return np.where(t >= MIN_TRAIN_EVENTS, t, -1)


def history_lengths(lengths: np.ndarray, protocol: str, split: str) -> np.ndarray:
    """int64 [U]: history length of each user's `split` example (= index of its target), -1 if too short."""
    p = get_protocol(protocol)
    if split not in EVAL_SPLITS:
        raise ValueError(f"unknown eval split {split!r}; known splits: {list(EVAL_SPLITS)}")
    if split in p.missing:
        raise ValueError(p.missing[split])
    h = _as_lengths(lengths) - p.eval_drop[split]
    return np.where(h >= MIN_HISTORY_EVENTS, h, -1)


def split_bounds(lengths: np.ndarray, protocol: str) -> dict[str, np.ndarray]:
    """Per-user bounds of every part the protocol has: `train` and each eval split it defines.

    `train[u]` is the train part's length; `valid[u]`/`test[u]` the history length, which is also the index
    of the target event. Any part a user is too short for is -1.
    """
    p = get_protocol(protocol)
    out = {"train": train_lengths(lengths, protocol)}
    for split in EVAL_SPLITS:
        if split in p.eval_drop:
            out[split] = history_lengths(lengths, protocol, split)
    return out


def split_report(lengths: np.ndarray, protocol: str) -> dict:
    """Users eligible / too short per part, plus the events each part uses; JSON-serialisable."""
    p = get_protocol(protocol)
    n = _as_lengths(lengths)
    parts = {}
    for part, b in split_bounds(n, protocol).items():
        ok = b >= 0
        is_train = part == "train"
        parts[part] = {
            "min_user_events": (MIN_TRAIN_EVENTS + p.train_drop) if is_train
            else (MIN_HISTORY_EVENTS + p.eval_drop[part]),
            "eligible_users": int(ok.sum()),
            "too_short_users": int((~ok).sum()),
            # train: events in eligible train parts; eval: one held-out target per eligible user.
            "events": int(b[ok].sum()) if is_train else int(ok.sum()),
        }
    return {
        "protocol": p.name,
        "users": int(n.size),
        "events": int(n.sum()),
        "parts": parts,
        "missing_parts": dict(p.missing),
    }


def format_split_report(report: dict) -> str:
    """A few human-readable lines for the preprocess CLI."""
    lines = [f"split protocol {report['protocol']}: {report['users']} users, {report['events']} events"]
    for part, r in report["parts"].items():
        lines.append(
            f"  {part:<5} eligible users {r['eligible_users']:>9}  too short {r['too_short_users']:>9} "
            f"(need >= {r['min_user_events']} events)  events {r['events']}"
        )
    for part, why in report["missing_parts"].items():
        lines.append(f"  {part:<5} none: {why}")
    return "\n".join(lines)
