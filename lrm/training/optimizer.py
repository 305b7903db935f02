"""AdamW with the reference defaults, plus the schedules scaling studies need."""
from __future__ import annotations

import optax


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    """constant (the reference), warmup_cosine, or wsd: warmup, constant, then a linear cooldown."""
    lr, warmup = float(cfg.learning_rate), int(cfg.warmup_steps)
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup < total_steps:
        raise ValueError(f"optim.warmup_steps={warmup} must lie in [0, {total_steps})")
    warm = optax.linear_schedule(0.0, lr, warmup) if warmup else None
    end_lr = lr * float(cfg.min_lr_ratio)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif cfg.schedule == "warmup_cosine":
        main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1), alpha=float(cfg.min_lr_ratio))
    elif cfg.schedule == "wsd":
        if not 0.0 < cfg.decay_fraction <= 1.0:
            raise ValueError(f"optim.decay_fraction must be in (0, 1], got {cfg.decay_fraction}")
        decay = max(int(round(cfg.decay_fraction * total_steps)), 1)
        stable = max(total_steps - warmup - decay, 0)
        main = optax.join_schedules(
            [optax.constant_schedule(lr), optax.linear_schedule(lr, end_lr, decay)], [stable])
    else:
        raise ValueError(f"unknown optim.schedule {cfg.schedule!r}; known: constant, warmup_cosine, wsd")
    return optax.join_schedules([warm, main], [warmup]) if warm is not None else main


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(cfg, total_steps)
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw), schedule
    return adamw, schedule
