"""Study report on a synthetic results.jsonl drawn from a known law: pre-registration (written once, before the
held-out runs), fits.json, figures and report.md with the constants, noise floor and prediction check."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the report draws figures with matplotlib (pip install -e '.[scaling]')")
from scaling_studies import report  # noqa: E402
from scaling_studies.study import load_study, noise_floor  # noqa: E402

TRUE = {"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28}
NOISE = 0.003  # log-space noise of one run
BUDGETS = [1e16, 10 ** 16.5, 1e17, 10 ** 17.5, 1e18]
HELD_OUT = 1e19
RESAMPLES = 200  # the default is 1000; fewer keeps the test fast


def _loss(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def _rows(budget, rng, seeds=(0,)):
    """Five sizes within ±4x of the law's compute-optimal N at this budget, C = 6·N·D, as launch_sweep writes."""
    a, b = TRUE["alpha"], TRUE["beta"]
    n_opt = (a * TRUE["A"] / (b * TRUE["B"]) * (budget / 6) ** b) ** (1 / (a + b))
    rows = []
    for k, n in enumerate(n_opt * np.logspace(-0.6, 0.6, 5)):
        d = budget / (6 * n)
        for s in seeds:
            ce = _loss(n, d) * float(np.exp(rng.normal(0, NOISE)))
            name = f"C{budget:.0e}-size{k}-s{s}"
            rows.append({"status": "done", "name": name, "config_hash": f"{hash((budget, k, s)) & 0xffffffffff:010x}",
                         "meta": {"budget": budget, "size": f"size{k}", "seed": s},
                         "overrides": {"optim.learning_rate": 1e-3 * 2 ** -k}, "params_total": int(n),
                         "params_non_embedding": int(n // 3), "tokens": d, "flops": budget * (1 + 0.01 * k),
                         "valid_ce": ce, "config": {"data": {"dataset": "synthetic-test", "max_len": 50},
                                                    "model": {"name": "hstu"}, "loss": {"kind": "full_softmax"}}})
    return rows


def _write(path, rows, mode="w"):
    with open(path, mode) as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.fixture()
def study(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for b in BUDGETS:
        rows += _rows(b, rng, seeds=(0, 1, 2) if b in BUDGETS[:2] else (0,))
    rows.append({"status": "failed", "name": "broken", "config_hash": "f" * 12, "error": "exit code 1"})
    _write(tmp_path / "results.jsonl", rows)
    return tmp_path


def test_preregister_then_report_figures_constants_and_held_out_check(study):
    assert report.main(["--study", str(study), "--predict", f"{HELD_OUT:g}", "--resamples", str(RESAMPLES)]) == 0
    pred_path = study / "prediction.json"
    frozen = pred_path.read_text()
    pred = json.loads(frozen)["predictions"][0]
    true_next = min(_loss(r["params_total"], r["tokens"]) for r in _rows(HELD_OUT, np.random.default_rng(9)))
    assert pred["budget"] == HELD_OUT and pred["lower"] < pred["prediction"] < pred["upper"]
    assert pred["lower"] < true_next < pred["upper"], (pred, true_next)
    with pytest.raises(FileExistsError, match="never redone"):
        report.main(["--study", str(study), "--predict", "1e20", "--resamples", str(RESAMPLES)])
    assert pred_path.read_text() == frozen

    _write(study / "results.jsonl", _rows(HELD_OUT, np.random.default_rng(5)), mode="a")  # the held-out runs
    assert report.main(["--study", str(study), "--true_entropy", str(TRUE["E"]), "--resamples", str(RESAMPLES)]) == 0
    fits = json.loads((study / "fits.json").read_text())
    assert fits["held_out_budgets"] == [HELD_OUT] and max(fits["compute_law"]["frontier"]["C"]) < HELD_OUT
    assert fits["num_runs"] == 5 * 5 + 2 * 5 * 2  # held-out and failed runs not fitted
    for name in ("loss_vs_compute", "isoflop", "optima"):
        png = study / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
    md = (study / "report.md").read_text()
    for law in ("compute_law", "chinchilla"):
        for k, v in fits[law]["params"].items():
            lo, hi = fits[law]["intervals_95"][k]
            assert f"| {k} | {v:.4g} [{lo:.4g}, {hi:.4g}] |" in md, (law, k)
    lo, hi = fits["chinchilla"]["intervals_95"]["E"]
    assert f"| L(N, D) | {fits['chinchilla']['params']['E']:.4g} [{lo:.4g}, {hi:.4g}] | " \
           f"{'yes' if lo <= TRUE['E'] <= hi else 'no'} |" in md
    for k in ("p_N", "p_D"):
        assert f"| {k} | {fits['isoflop']['params'][k]:.4g}" in md
    # The pre-registered row: observed = best held-out configuration, error and inside? computed from it.
    held = [r for r in load_study(study).runs if r.budget == HELD_OUT]
    obs = min(r.loss for r in held)
    err = 100 * abs(pred["prediction"] - obs) / obs
    inside = "yes" if pred["lower"] <= obs <= pred["upper"] else "no"
    assert f"| {obs:.4f} | " in md and f"| 5 | {err:.2f}% | {inside} |" in md
    assert "1 failed" in md and "std of CE" in md
    # The E profile: the law generated these runs, so its misfit is about the noise and the true E is kept.
    prof = fits["chinchilla_e_profile"]
    true_row = next(r for r in prof["rows"] if r["E"] == TRUE["E"])
    assert true_row["lr"] <= prof["lr_threshold_95"], true_row
    line = next(x for x in md.splitlines() if x.startswith(f"| {TRUE['E']:.4g} (true entropy) | "))
    assert line.endswith(f"| {true_row['lr']:.2f} | no |"), line
    assert 0.5 < prof["rms_log_residual_free"] / fits["noise_floor"]["sigma_log"] < 2.0, prof
    assert json.loads(pred_path.read_text()) == json.loads(frozen)  # the report never touches the prediction


def test_preregistration_refuses_once_held_out_runs_exist(study):
    _write(study / "results.jsonl", _rows(HELD_OUT, np.random.default_rng(5)), mode="a")
    with pytest.raises(ValueError, match="not a pre-registration"):
        report.preregister(study, [HELD_OUT], resamples=RESAMPLES)
    with pytest.raises(ValueError, match="beyond the fitted compute"):
        report.preregister(study, [5e17], resamples=RESAMPLES)  # inside the fitted range: no test
    assert not (study / "prediction.json").exists()


def test_noise_floor_and_bad_lines(study, tmp_path):
    floor = noise_floor(load_study(study).runs)
    assert [b["budget"] for b in floor["per_budget"]] == BUDGETS[:2] and floor["dof"] == 2 * 5 * 2
    # 20 degrees of freedom: the estimate is within ±40% of the true log noise with probability > 0.99.
    assert 0.6 * NOISE < floor["sigma_log"] < 1.4 * NOISE, floor
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.jsonl").write_text('{"status": "done", "name": "x", "config_hash": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2: not a JSON line"):
        load_study(bad)
    (bad / "results.jsonl").write_text('{"status": "done", "name": "x", "config_hash": "a", "flops": 1}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:1: run 'x' has no"):
        load_study(bad)
    with pytest.raises(FileNotFoundError, match="no results.jsonl"):
        load_study(tmp_path / "missing")
