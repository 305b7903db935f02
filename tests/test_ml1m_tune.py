"""The two-step ML-1M HSTU-large tuning: step 2 takes step 1's choice by its written rule, and nothing else."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import ml1m_tune
from bench.published import PUBLISHED
from bench.quality import COLUMNS
from scaling_studies import launch_sweep
from scaling_studies.sweeps.hstu_large_ml1m_tune import SWEEP as TUNE
from scaling_studies.sweeps.hstu_large_ml1m_tune import reference_sweep

REPO = Path(__file__).resolve().parents[1]


def _finish_step1(out, ndcg_by_run: list[float]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"status": "done", "name": r.name, "config_hash": r.config_hash, "overrides": r.overrides,
             "valid_ndcg@10": v} for r, v in zip(TUNE.expand(), ndcg_by_run)]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for k, (run, v) in enumerate(zip(TUNE.expand(), ndcg_by_run)):
        work = launch_sweep.run_workdir(out, run)
        work.mkdir(parents=True, exist_ok=True)
        test = {c: v + 0.0001 * k for c in COLUMNS}
        (work / "results.json").write_text(json.dumps({"protocol": "loo-val", "best_step": 100 * (k + 1),
                                                       "test": test}))


def test_step2_is_the_tuned_recipe_at_step1s_choice_with_three_seeds(tmp_path):
    out = tmp_path / "tune"
    runs = TUNE.expand()
    assert len(runs) == 9
    ndcg = [0.15] * 9
    ndcg[5] = 0.17  # the choice: dropout 0.2, LR 2e-3 in grid order
    _finish_step1(out, ndcg[:8])
    with pytest.raises(ValueError, match=rf"{runs[8].name}: not run"):  # no choice on a partial grid
        reference_sweep(out)
    _finish_step1(out, ndcg)
    sweep = reference_sweep(out)
    assert sweep.config_file == "configs/hstu_large_ml1m_tuned.py" and sweep.seeds == [42, 1, 2]
    assert sweep.overrides == {"data.store_root": "stores", "train.tensorboard": False,
                               "model.dropout": 0.2, "optim.learning_rate": 2e-3}
    assert "data.protocol" not in sweep.overrides  # the tuned recipe's own: reference
    assert [r.name for r in sweep.expand()] == ["base-s42", "base-s1", "base-s2"]
    assert launch_sweep.chosen_values(TUNE, out, "valid_ndcg@10") == {"model.dropout": 0.2,
                                                                      "optim.learning_rate": 2e-3}


def test_the_step2_sweep_file_reads_step1_where_it_is_told(tmp_path, monkeypatch):
    out = tmp_path / "elsewhere"
    _finish_step1(out, [0.2] + [0.1] * 8)
    monkeypatch.setenv("LRM_ML1M_TUNE_OUT", str(out))
    loaded = launch_sweep.load_sweep(REPO / "scaling_studies" / "sweeps" / "hstu_large_ml1m_tune_reference.py")
    assert [r.config_hash for r in loaded.expand()] == [r.config_hash for r in reference_sweep(out).expand()]
    assert loaded.overrides["model.dropout"] == 0.1 and loaded.overrides["optim.learning_rate"] == 5e-4
    monkeypatch.setenv("LRM_ML1M_TUNE_OUT", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not run"):
        launch_sweep.load_sweep(REPO / "scaling_studies" / "sweeps" / "hstu_large_ml1m_tune_reference.py")


def test_the_tables_report_each_seed_their_mean_and_the_gap(tmp_path, capsys):
    tune, ref = tmp_path / "tune", tmp_path / "ref"
    assert ml1m_tune.main(["--tune", str(tune), "--reference", str(ref)]) == 1  # step 1 not run: its progress
    printed = capsys.readouterr().out
    assert "step 1 is not complete" in printed and "the finished runs on the test split" not in printed
    _finish_step1(tune, [0.15, 0.16])  # two runs finished: their test readings follow the progress table
    assert ml1m_tune.main(["--tune", str(tune), "--reference", str(ref)]) == 1
    printed = capsys.readouterr().out
    assert "step 1 is not complete" in printed and printed.count("test at the best valid step") == 2
    _finish_step1(tune, [0.15 + 0.001 * i for i in range(9)])  # the last point is chosen
    runs = reference_sweep(tune).expand()
    published = PUBLISHED[("ml-1m", "hstu_large")][0][1]
    for k, run in enumerate(runs):
        work = ref / "runs" / f"{run.name}-{run.config_hash}"
        work.mkdir(parents=True)
        test = {c: (0.9 + 0.05 * k) * published.get(c, 0.1) for c in COLUMNS}  # 0.90, 0.95, 1.00 of published
        (work / "results.json").write_text(json.dumps({"protocol": "reference", "best_step": 4646, "test": test}))
        code = ml1m_tune.main(["--tune", str(tune), "--reference", str(ref)])
        printed = capsys.readouterr().out
        assert code == (0 if k == 2 else 1) and f"{k + 1} of 3 seeds finished" in printed
    assert "dropout 0.3, learning_rate 0.002, seed 2, step 4646" in printed
    # Step 1's test reading: every run at its own best validation step, beside the published.
    step1_test = printed.split("## step 1 on the test split")[1].split("## step 2")[0]
    assert step1_test.count("test at the best valid step") == 9
    assert "| ml-1m | loo-val | hstu_large | lrm (position bias only), dropout 0.1, learning_rate 0.0005, test at " \
           "the best valid step 100 | 0.1500 |" in step1_test
    assert "dropout 0.3, learning_rate 0.002, test at the best valid step 900 | 0.1588 |" in step1_test
    assert "generative-recommenders" in step1_test
    assert "mean of the 3 seeds above" in printed
    assert "HR@10 -5.0%, NDCG@10 -5.0%, HR@50 -5.0%, HR@200 -5.0%" in printed


def _write_metrics(work: Path, valid: dict[int, tuple[float, float]], total_steps: int = 4646) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps({"train": {"num_epochs": 101}}))
    rows = [{"step": 50, "split": "train", "loss": 7.0, "total_steps": float(total_steps)}]
    rows += [{"step": s, "split": "valid", "hr@10": hr, "ndcg@10": nd} for s, (hr, nd) in valid.items()]
    (work / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_validation_curves_line_up_the_started_runs_by_step(tmp_path):
    out = tmp_path / "tune"
    runs = TUNE.expand()
    assert ml1m_tune.validation_curves(out) == "no step-1 run has evaluated yet"
    _write_metrics(launch_sweep.run_workdir(out, runs[0]), {230: (0.1733, 0.0915), 460: (0.2475, 0.13124)})
    _write_metrics(launch_sweep.run_workdir(out, runs[4]), {230: (0.2651, 0.1425)})
    lines = ml1m_tune.validation_curves(out).splitlines()
    assert lines[0] == ("| epoch (step) | dropout 0.1, learning_rate 0.0005 | dropout 0.2, learning_rate 0.001 |")
    assert lines[2] == "| 5 (230) | .1733/.0915 | .2651/.1425 |"
    assert lines[3] == "| 10 (460) | .2475/.1312 | – |"  # runs[4] had not evaluated at 460
    assert len(lines) == 4
    (launch_sweep.run_workdir(out, runs[0]) / "metrics.jsonl").write_text('{"step": 230, "split": "valid"\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:1: not a JSON line"):
        ml1m_tune.validation_curves(out)
