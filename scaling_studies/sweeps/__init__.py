"""Sweeps as code: a base config plus axes (a grid) or IsoFLOP budgets, expanded into runs.

A sweep module under this folder defines `SWEEP = Sweep(...)`. A run is the base config file plus
`--config.key=value` overrides, so every run is one `python -m launch.train` command.

Learning-rate rule (stated once, applied to every size): lr = base_lr · (base_width / embed_dim)^width_exponent;
exponent 1 is the muP-style 1/width rule for Adam on hidden matrices, a smaller one a rule fitted to an LR check
when embedding tables (whose muP LR is width-independent) hold most parameters. Warmup is `warmup_fraction` of the
run's steps (proportional to run length) with a warmup-stable-decay schedule.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from typing import Any

from data_pipeline.datasets.synthetic import SyntheticConfig


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    config_file: str
    overrides: dict[str, Any]
    meta: dict[str, Any]  # budget, size label, ... (for fitting and plots; not passed to the trainer)

    @property
    def config_hash(self) -> str:
        blob = json.dumps({"config_file": self.config_file, "overrides": self.overrides}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class LRRule:
    base_lr: float = 1e-3
    base_width: int = 64
    warmup_fraction: float = 0.05
    width_exponent: float = 1.0

    def apply(self, embed_dim: int, steps: int) -> dict[str, Any]:
        lr = self.base_lr * (self.base_width / embed_dim) ** self.width_exponent
        return {"optim.learning_rate": lr, "optim.schedule": "wsd",
                "optim.warmup_steps": int(self.warmup_fraction * steps)}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """`axes`: a grid {override key: values}; or `budgets` (FLOPs) × `sizes` (dicts of model overrides) with
    steps set so that each run spends its budget: steps = C / (train FLOPs per token × tokens_per_step)."""

    name: str
    config_file: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    axes: dict[str, list] = dataclasses.field(default_factory=dict)
    budgets: list[float] = dataclasses.field(default_factory=list)
    sizes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    seeds_at_budgets: dict[float, list[int]] = dataclasses.field(default_factory=dict)  # noise floor
    tokens_per_step: float = 0.0  # real tokens per step (batch × mean row fill); IsoFLOP only
    n_eff: float = 1.0  # mean keys per query (lrm.flops.causal_n_eff of the train rows); IsoFLOP only
    num_items: int = 0  # catalogue size (loss head FLOPs); IsoFLOP only
    lr_rule: LRRule | None = None
    synthetic: SyntheticConfig | None = None  # build this store before launching

    def expand(self) -> list[Run]:
        runs = []
        if self.budgets:
            runs += self._isoflop_runs()
        if self.axes or not self.budgets:
            keys = list(self.axes)
            for values in itertools.product(*(self.axes[k] for k in keys)) if keys else [()]:
                point = dict(zip(keys, values))
                for seed in self.seeds:
                    ov = {**self.overrides, **point, "seed": seed}
                    label = "-".join(f"{k.split('.')[-1]}{v}" for k, v in point.items()) or "base"
                    runs.append(Run(f"{label}-s{seed}", self.config_file, ov, {"seed": seed, **point}))
        names = [r.name for r in runs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"sweep {self.name}: duplicate run names {sorted(dup)}")
        return runs

    def _isoflop_runs(self) -> list[Run]:
        from lrm import flops  # lazily: expanding a grid sweep needs no model code

        if not (self.tokens_per_step > 0 and self.num_items > 0 and self.sizes):
            raise ValueError(f"sweep {self.name}: IsoFLOP budgets need sizes, tokens_per_step > 0 and num_items > 0")
        runs = []
        for budget in self.budgets:
            for size in self.sizes:
                cfg = load_config(self.config_file, {**self.overrides, **size})
                model_cfg, loss_cfg = cfg.model.to_dict(), cfg.loss.to_dict()
                per_token = flops.per_token(model_cfg, loss_cfg, self.num_items, n_eff=self.n_eff)["total"]
                steps = max(int(round(budget / (per_token * self.tokens_per_step))), 1)
                label = "x".join(f"{k.split('.')[-1]}{v}" for k, v in size.items())
                for seed in self.seeds_at_budgets.get(budget, self.seeds):
                    ov = {**self.overrides, **size, "train.num_steps": steps, "seed": seed}
                    if self.lr_rule is not None:
                        ov.update(self.lr_rule.apply(int(model_cfg["embed_dim"]), steps))
                    meta = {"budget": budget, "size": label, "seed": seed, "steps": steps,
                            "planned_flops": per_token * self.tokens_per_step * steps}
                    runs.append(Run(f"C{budget:.0e}-{label}-s{seed}", self.config_file, ov, meta))
        return runs


def load_config(config_file: str, overrides: dict[str, Any]):
    """The ConfigDict `launch.train` would build from this file and these overrides (unknown keys raise)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_sweep_config", config_file)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"config file {config_file} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    for key, value in overrides.items():
        node, *path = key.split(".")
        target = cfg
        for part in [node, *path][:-1]:
            target = target[part]
        last = ([node, *path])[-1]
        if last not in target:
            raise KeyError(f"config override {key!r}: no such field in {config_file}")
        target[last] = value
    return cfg


def budgets_geometric(low: float, high: float, factor: float = 3.0) -> list[float]:
    """Budgets `factor`× apart from low up to high (inclusive within rounding)."""
    n = int(math.floor(math.log(high / low) / math.log(factor) + 1e-9)) + 1
    return [low * factor ** i for i in range(n)]
