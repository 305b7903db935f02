"""Quality benchmark: trains SASRec, HSTU and HSTU-large and prints HR/NDCG beside published numbers.

  python -m bench.quality --datasets ml-1m,beauty,sports --models sasrec,hstu,hstu_large --out runs/quality

ML-1M runs under the reference protocol (train on all but the last event, test on the last: the protocol of
the published table); Amazon Beauty/Sports under loo-val (last = test, second-to-last = validation: the
S3Rec/TIGER protocol). Each run is an ordinary `lrm-train` run in <out>/<model>_<dataset>/; a finished run
(results.json present) is not trained again, so the benchmark can be stopped and resumed.

To end a run early with a result: SIGTERM it (it saves a checkpoint and exits), then run the same command
with `--set train.num_epochs=E`, E at most the epochs done: the run resumes with no steps left and tests the
checkpoint chosen on validation (`train` is not among the config sections a resume must keep unchanged).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bench.published import PUBLISHED
from configs.recipes import MODELS, PROTOCOL, recipe
from lrm.training.exit_codes import PREEMPTED

COLUMNS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200")


def apply_overrides(config, overrides: dict[str, str]) -> None:
    """`--set KEY=VALUE` overrides, each parsed as the type of the value it replaces; an unknown key is an error."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"unknown config key {key!r}")
        node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else value in ("1", "true", "True")


def build_config(model: str, dataset: str, overrides: dict[str, str]):
    """The recipe of (model, dataset) under the dataset's protocol, with `--set KEY=VALUE` overrides applied."""
    config = recipe(model, dataset)
    config.data.protocol = PROTOCOL[dataset]
    apply_overrides(config, overrides)
    return config


def run_one(model: str, dataset: str, out: Path, overrides: dict) -> dict:
    workdir = out / f"{model}_{dataset}"
    if (workdir / "results.json").exists():
        return json.loads((workdir / "results.json").read_text())
    from lrm.training.train import train_and_evaluate

    res = train_and_evaluate(build_config(model, dataset, overrides), workdir)
    if res.get("preempted"):  # SIGTERM: the trainer saved a checkpoint; the same command resumes from it
        print(f"{workdir}: stopped by SIGTERM at step {res['steps_run']} (checkpoint saved); run the same command "
              "again to resume", file=sys.stderr)
        raise SystemExit(PREEMPTED)
    return res


def format_table(rows: list[tuple[str, str, str, str, dict]]) -> str:
    """rows: (dataset, protocol, model, source, metrics). Markdown, one line per row.

    The protocol is per row: a run with `--set data.protocol=loo-val` sits beside published numbers measured
    under the dataset's own protocol, and the table must not present them as comparable."""
    head = "| dataset | protocol | model | source | " + " | ".join(c.upper() for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (4 + len(COLUMNS))]
    for dataset, protocol, model, source, metrics in rows:
        cells = [f"{metrics[c]:.4f}" if metrics.get(c) is not None else "–" for c in COLUMNS]
        lines.append(f"| {dataset} | {protocol} | {model} | {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="ml-1m,beauty,sports")
    p.add_argument("--models", default="sasrec,hstu,hstu_large")
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, e.g. --set data.pack=True --set train.num_epochs=50")
    args = p.parse_args(argv)
    logging.getLogger().setLevel(logging.INFO)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    rows = []
    for dataset in args.datasets.split(","):
        for model in args.models.split(","):
            res = run_one(model, dataset, Path(args.out), overrides)
            note = "" if res["time_bias"] or model == "sasrec" else " (no time bias)"
            rows.append((dataset, res["protocol"], model, f"lrm{note}, step {res['best_step']}", res["test"]))
            for source, metrics in PUBLISHED.get((dataset, model), []):
                rows.append((dataset, PROTOCOL[dataset], model, source, metrics))
        for (ds, other), published in PUBLISHED.items():  # published models lrm does not train (TIGER, BSARec)
            if ds == dataset and other not in MODELS:
                rows.extend((dataset, PROTOCOL[dataset], other, source, metrics) for source, metrics in published)
    print(format_table(rows))


if __name__ == "__main__":
    main()
