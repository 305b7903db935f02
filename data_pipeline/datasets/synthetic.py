"""Synthetic user histories from a latent-persona, topic-Markov process whose true next-item CE is known.

The process (all parameters drawn once from `seed`):
- items are split into `num_topics` disjoint topics (item j belongs to topic (j - 1) mod T), and within a topic
  an item is drawn from a Zipf law over a random permutation of the topic's items;
- each user has a hidden persona k, uniform over `num_personas`, or with `persona_zipf` = s > 0 drawn with
  P(k) ∝ (k + 1)^−s; persona k moves between topics with its own sparse Markov matrix M_k (stay with prob
  `stay_prob`, else jump to one of `fanout` topics of its own);
- the first topic is drawn from M_k's stationary law, so the process is stationary and a window of the last
  `max_len` events is as informative as the process allows for that window.
Because an item reveals its topic, the Bayes predictive is exact and cheap:
  p(x_{t+1} | x_{≤t}) = q(x_{t+1} | z_{t+1}) · Σ_k P(k | z_{≤t}) · M_k[z_t, z_{t+1}],
so `true_cross_entropy` gives the irreducible full-catalogue CE of the validation (or test) targets — the E a
scaling fit must not go below. Users are generated independently from (seed, user index): deterministic,
streamable in any order and chunk size, never held whole unless asked.

Why Zipf personas: with a few equally likely personas the structure to learn is finite and small, so a model's
loss falls onto the floor faster than any power law once it has learned them all (the hstu_synthetic study:
its L(C) refitted up to 1e13 FLOPs predicts below the Bayes floor at 1e14). Many personas of power-law frequency
give a long tail of rarer and rarer structure to learn (each persona's transitions), the mechanism usually
offered for power-law scaling, while the Bayes predictive stays exact.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np

from data_pipeline.datasets.events import Sequences, from_user_lists


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    num_users: int = 20_000
    num_items: int = 2_000
    num_topics: int = 40
    num_personas: int = 8
    fanout: int = 4  # topics a persona can jump to from each topic
    stay_prob: float = 0.5
    zipf_exponent: float = 1.0
    persona_zipf: float = 0.0  # 0: personas uniform; s > 0: P(persona k) ∝ (k + 1)^-s
    mean_len: float = 20.0  # lognormal event count: exp(N(log mean_len, len_sigma)), clipped to [min_len, max_len]
    len_sigma: float = 0.5
    min_len: int = 5
    max_len: int = 200
    seed: int = 0
    name: str = "synthetic"

    def __post_init__(self):
        for k in ("num_users", "num_items", "num_topics", "num_personas", "fanout", "min_len", "max_len"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"synthetic config: {k} must be >= 1, got {getattr(self, k)}")
        if self.num_items < self.num_topics:
            raise ValueError(f"synthetic config: num_items={self.num_items} < num_topics={self.num_topics}")
        if self.fanout > self.num_topics:
            raise ValueError(f"synthetic config: fanout={self.fanout} > num_topics={self.num_topics}")
        if not (np.isfinite(self.persona_zipf) and self.persona_zipf >= 0.0):
            raise ValueError(f"synthetic config: persona_zipf must be finite and >= 0, got {self.persona_zipf}")
        if not 0.0 <= self.stay_prob < 1.0:
            raise ValueError(f"synthetic config: stay_prob must be in [0, 1), got {self.stay_prob}")
        if self.min_len > self.max_len or self.min_len < 3:
            raise ValueError(f"synthetic config: need 3 <= min_len <= max_len, got {self.min_len}, {self.max_len} "
                             "(loo-val needs 2 train events plus a validation and a test target)")


@dataclasses.dataclass(frozen=True)
class Process:
    """The drawn parameters: topic of each item, within-topic item log-probs, per-persona Markov matrices."""

    topic_of_item: np.ndarray  # int64 [V+1], -1 for padding id 0
    item_logq: np.ndarray  # float64 [V+1], log q(item | its topic)
    items_by_topic: list[np.ndarray]
    probs_by_topic: list[np.ndarray]
    cum_probs_by_topic: list[np.ndarray]
    trans_PxTxT: np.ndarray  # M_k[z, z']
    stationary_PxT: np.ndarray
    persona_prior_P: np.ndarray  # P(k)
    log_trans_PxTxT: np.ndarray  # log M_k (log 0 floored at -690)


def build_process(cfg: SyntheticConfig) -> Process:
    rng = np.random.default_rng([cfg.seed, 0xC0FFEE])
    V, T, P = cfg.num_items, cfg.num_topics, cfg.num_personas
    topic_of_item = np.full(V + 1, -1, np.int64)
    topic_of_item[1:] = (np.arange(1, V + 1) - 1) % T
    item_logq = np.zeros(V + 1)
    items_by_topic, probs_by_topic = [], []
    for z in range(T):
        items = np.flatnonzero(topic_of_item == z)
        w = 1.0 / np.arange(1, len(items) + 1) ** cfg.zipf_exponent
        w = w[rng.permutation(len(items))] / w.sum()
        item_logq[items] = np.log(w)
        items_by_topic.append(items)
        probs_by_topic.append(w)
    trans = np.zeros((P, T, T))
    for k in range(P):
        for z in range(T):
            others = rng.choice(np.delete(np.arange(T), z), size=min(cfg.fanout, T - 1), replace=False) if T > 1 else []
            trans[k, z, z] += cfg.stay_prob if T > 1 else 1.0
            if T > 1:
                trans[k, z, others] += (1.0 - cfg.stay_prob) * rng.dirichlet(np.ones(len(others)))
    stationary = _stationary(trans)
    prior = np.arange(1, P + 1, dtype=np.float64) ** -cfg.persona_zipf
    return Process(topic_of_item, item_logq, items_by_topic, probs_by_topic,
                   [np.cumsum(p) for p in probs_by_topic], trans, stationary, prior / prior.sum(),
                   np.log(np.maximum(trans, 1e-300)))


def _stationary(m_PxTxT: np.ndarray) -> np.ndarray:
    """Stationary law of each Markov matrix by the mean of 2,000 power-iteration steps from uniform (converges
    for periodic or reducible chains too; a fixed point up to 2/2000 in L1, which is the law both the generator
    and the Bayes predictive use), all matrices stepped together."""
    P, T, _ = m_PxTxT.shape
    pi_Px1xT = np.full((P, 1, T), 1.0 / T)
    acc_Px1xT = np.zeros((P, 1, T))
    for _ in range(2000):
        pi_Px1xT = pi_Px1xT @ m_PxTxT
        acc_Px1xT += pi_Px1xT
    return acc_Px1xT[:, 0] / acc_Px1xT[:, 0].sum(axis=1, keepdims=True)


def _user_draws(cfg: SyntheticConfig, cum_prior_P: np.ndarray, user: int) -> tuple[int, np.ndarray]:
    """User `user`'s persona and uniforms (row t: the topic and item draws of event t; row n: the first topic).

    The one place that consumes the user's random stream, so the scalar and batched generators agree.
    """
    rng = np.random.default_rng([cfg.seed, 1, user])
    n = min(max(int(round(np.exp(rng.normal(np.log(cfg.mean_len), cfg.len_sigma)))), cfg.min_len), cfg.max_len)
    if cfg.persona_zipf == 0.0:
        k = int(rng.integers(cfg.num_personas))  # the uniform draw of configs made before persona_zipf existed
    else:
        k = _draw(cum_prior_P, rng.random())
    return k, rng.random((n + 1, 2))


def generate_user(cfg: SyntheticConfig, proc: Process, user: int) -> np.ndarray:
    """Item ids of user `user` (a pure function of cfg.seed and the index): the process written out plainly."""
    k, u_Nx2 = _user_draws(cfg, np.cumsum(proc.persona_prior_P), user)
    n = len(u_Nx2) - 1
    cum_trans = np.cumsum(proc.trans_PxTxT[k], axis=1)
    z = _draw(np.cumsum(proc.stationary_PxT[k]), u_Nx2[n, 0])
    items = np.empty(n, np.int32)
    for t in range(n):
        if t:
            z = _draw(cum_trans[z], u_Nx2[t, 0])
        items[t] = proc.items_by_topic[z][_draw(proc.cum_probs_by_topic[z], u_Nx2[t, 1])]
    return items


def generate_users(cfg: SyntheticConfig, proc: Process, users: list[int]) -> list[np.ndarray]:
    """`[generate_user(cfg, proc, u) for u in users]`, bit for bit, with all users' chains stepped together.

    The per-event Python loop of `generate_user` is what made million-user stores take minutes; here each
    step is a few array operations over every user still generating (users sorted by length, longest first).
    """
    if not users:
        return []
    cum_prior_P = np.cumsum(proc.persona_prior_P)
    draws = [_user_draws(cfg, cum_prior_P, u) for u in users]
    n_B = np.array([len(u) - 1 for _, u in draws])
    order_B = np.argsort(-n_B, kind="stable")
    n_B, k_B = n_B[order_B], np.array([draws[b][0] for b in order_B])
    u_BxNx2 = np.zeros((len(users), n_B[0] + 1, 2))
    for row, b in enumerate(order_B):
        u_BxNx2[row, :n_B[row] + 1] = draws[b][1]
    B = len(users)
    cum_stat_PxT = np.cumsum(proc.stationary_PxT, axis=1)
    cum_trans_PxTxT = np.cumsum(proc.trans_PxTxT, axis=2)
    size_T = np.array([len(x) for x in proc.items_by_topic])
    items_TxS = np.zeros((len(size_T), size_T.max()), np.int32)
    cum_q_TxS = np.full(items_TxS.shape, np.inf)  # +inf past a topic's end: never counted as <= u
    for z, (its, cq) in enumerate(zip(proc.items_by_topic, proc.cum_probs_by_topic)):
        items_TxS[z, :len(its)], cum_q_TxS[z, :len(cq)] = its, cq
    z_B = _draw_rows(cum_stat_PxT[k_B], u_BxNx2[np.arange(B), n_B, 0], cum_stat_PxT.shape[1])
    out_BxN = np.zeros((B, n_B[0]), np.int32)
    for t in range(n_B[0]):
        m = int(np.count_nonzero(n_B > t))  # users still generating: a prefix, as they are sorted by length
        z = z_B[:m]
        if t:
            z = _draw_rows(cum_trans_PxTxT[k_B[:m], z], u_BxNx2[:m, t, 0], cum_trans_PxTxT.shape[2])
            z_B[:m] = z
        s = _draw_rows(cum_q_TxS[z], u_BxNx2[:m, t, 1], size_T[z])
        out_BxN[:m, t] = items_TxS[z, s]
    result: list[np.ndarray] = [np.empty(0, np.int32)] * B
    for row, b in enumerate(order_B):
        result[b] = out_BxN[row, :n_B[row]].copy()
    return result


def _draw_rows(cdf_BxS: np.ndarray, u_B: np.ndarray, size) -> np.ndarray:
    """`_draw` for each row: searchsorted(side="right") is the count of cdf entries <= u·cdf[-1]."""
    last_B = np.take_along_axis(cdf_BxS, (np.broadcast_to(size, u_B.shape) - 1)[:, None], axis=1)[:, 0]
    return np.minimum((cdf_BxS <= (u_B * last_B)[:, None]).sum(axis=1), np.asarray(size) - 1)


def _draw(cdf: np.ndarray, u: float) -> int:
    """Inverse-CDF draw (the clip guards against cdf[-1] rounding below u)."""
    return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(cdf) - 1)


def iter_sequences(cfg: SyntheticConfig, *, start: int = 0, stop: int | None = None,
                   chunk_users: int = 10_000) -> Iterator[Sequences]:
    """Users [start, stop) as `Sequences` chunks of at most `chunk_users` users (ids are the user indices)."""
    stop = cfg.num_users if stop is None else stop
    if not 0 <= start <= stop <= cfg.num_users or chunk_users < 1:
        raise ValueError(f"synthetic: bad user range [{start}, {stop}) of {cfg.num_users} / chunk {chunk_users}")
    proc = build_process(cfg)
    for lo in range(start, stop, chunk_users):
        users = list(range(lo, min(lo + chunk_users, stop)))
        yield from_user_lists(cfg.name, users, generate_users(cfg, proc, users), None, None,
                              num_items=cfg.num_items, item_raw_ids=None, source_files={})


_FORKED: tuple[SyntheticConfig, Process] | None = None  # set in the parent just before its workers fork


def _generate_range(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and concatenated items of users [lo, hi), in a forked worker (the process is inherited, not
    rebuilt: drawing its parameters takes longer than generating a chunk)."""
    cfg, proc = _FORKED
    seqs = generate_users(cfg, proc, list(range(*bounds)))
    return np.array([len(x) for x in seqs], np.int64), np.concatenate(seqs)


def generate(cfg: SyntheticConfig, *, workers: int = 1, chunk_users: int = 10_000) -> Sequences:
    """All users in one `Sequences` (what `write_store` takes), generated by `workers` processes.

    Users are pure functions of (seed, index), so the result is the same for any `workers` and `chunk_users`.
    """
    global _FORKED
    if workers < 1 or chunk_users < 1:
        raise ValueError(f"synthetic: workers and chunk_users must be >= 1, got {workers}, {chunk_users}")
    proc = build_process(cfg)
    bounds = [(lo, min(lo + chunk_users, cfg.num_users)) for lo in range(0, cfg.num_users, chunk_users)]
    _FORKED = (cfg, proc)
    try:
        if workers == 1 or len(bounds) == 1:
            parts = [_generate_range(b) for b in bounds]
        else:
            import concurrent.futures
            import multiprocessing

            # fork: the workers only run numpy on inherited arrays, never jax or threads of the parent.
            with concurrent.futures.ProcessPoolExecutor(
                    min(workers, len(bounds)), mp_context=multiprocessing.get_context("fork")) as pool:
                parts = list(pool.map(_generate_range, bounds))
    finally:
        _FORKED = None
    lengths = np.concatenate([n for n, _ in parts])
    offsets = np.zeros(cfg.num_users + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sequences(dataset=cfg.name, user_ids=np.arange(cfg.num_users), offsets=offsets,
                     item_ids=np.concatenate([x for _, x in parts]), timestamps=np.zeros(offsets[-1], np.int64),
                     ratings=None, num_items=cfg.num_items, has_timestamps=False, item_raw_ids=None,
                     source_files={})


def write_synthetic_store(cfg: SyntheticConfig, store_root: str | Path, *, protocol: str = "loo-val",
                          workers: int = 1) -> Path:
    """Writes `<store_root>/<name>-<protocol>` (the path `lrm.training.data.store_path` expects) once.

    The generator config is kept beside the store (`synthetic_config.json`); an existing store made from a
    different config is an error, never silently reused.
    """
    import json

    from data_pipeline.store import write_store

    out = Path(store_root) / f"{cfg.name}-{protocol}"
    want = dataclasses.asdict(cfg)
    if (out / "metadata.json").exists():
        have_file = out / "synthetic_config.json"
        have = json.loads(have_file.read_text()) if have_file.exists() else None
        if have is not None:
            have = {"persona_zipf": 0.0, **have}  # stores written before the field existed: uniform personas
        if have != want:
            raise ValueError(f"{out} holds synthetic data from generator config {have}, not {want}: "
                             "remove it or give the config another name")
        return out
    write_store(generate(cfg, workers=workers), out, protocol=protocol)
    (out / "synthetic_config.json").write_text(json.dumps(want, indent=2, sort_keys=True))
    return out


def log_predictive(proc: Process, items: np.ndarray) -> np.ndarray:
    """log p(items[t] | items[:t]) under the true process for t = 1..n-1 (a window starting at items[0])."""
    topics = proc.topic_of_item[items]
    if np.any(topics < 0):
        raise ValueError("log_predictive: item id 0 (padding) in a history")
    step_PxN = proc.log_trans_PxTxT[:, topics[:-1], topics[1:]]  # log M_k[z_{t-1}, z_t], t = 1..n-1
    log_w0_P = np.log(np.maximum(proc.persona_prior_P * proc.stationary_PxT[:, topics[0]], 1e-300))
    # Unnormalised log posterior over personas before step t: the prior-weighted start plus the steps so far.
    log_w_PxN = log_w0_P[:, None] + np.concatenate([np.zeros((len(log_w0_P), 1)), np.cumsum(step_PxN, 1)[:, :-1]], 1)
    log_post_PxN = log_w_PxN - np.logaddexp.reduce(log_w_PxN, axis=0)
    return np.logaddexp.reduce(log_post_PxN + step_PxN, axis=0) + proc.item_logq[items[1:]]


def true_cross_entropy(cfg: SyntheticConfig, *, split: str = "valid", max_len: int | None = None,
                       users: int | None = None) -> dict[str, float]:
    """Mean −log p_true(target | history) over the first `users` users' `split` example (loo-val protocol).

    The history is truncated to its last `max_len` events as the model sees it. Returns the mean, its
    standard error, and the number of users.
    """
    drop = {"valid": 2, "test": 1}.get(split)
    if drop is None:
        raise ValueError(f"true_cross_entropy: split must be 'valid' or 'test', got {split!r}")
    proc = build_process(cfg)
    n_users = cfg.num_users if users is None else min(users, cfg.num_users)
    nll = np.empty(n_users)
    for u in range(n_users):
        seq = generate_user(cfg, proc, u)
        history, target = seq[:len(seq) - drop], seq[len(seq) - drop]
        if max_len is not None:
            history = history[-max_len:]
        nll[u] = -log_predictive(proc, np.append(history, target))[-1]
    return {"ce": float(nll.mean()), "stderr": float(nll.std(ddof=1) / np.sqrt(n_users)) if n_users > 1 else 0.0,
            "users": n_users}


def oracle_entropy_rate(cfg: SyntheticConfig) -> float:
    """Entropy rate (nats) for a predictor that KNOWS the persona: a lower bound on the true CE; equal to it
    when num_personas = 1."""
    proc = build_process(cfg)
    h_item_T = np.array([-(p * np.log(p)).sum() for p in proc.probs_by_topic])
    total = 0.0
    for k in range(cfg.num_personas):
        m = proc.trans_PxTxT[k]
        h_trans_T = -(np.where(m > 0, m * np.log(np.maximum(m, 1e-300)), 0.0)).sum(axis=1)
        total += proc.persona_prior_P[k] * (proc.stationary_PxT[k] @ (h_trans_T + m @ h_item_T))
    return float(total)
