"""Synthetic data (true entropy) and the sweep launcher (a failing run, a relaunch that runs only what is missing)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.datasets import synthetic as sy
from lrm.training.exit_codes import PREEMPTED
from scaling_studies import launch_sweep
from scaling_studies.sweeps import LRRule, Sweep, budgets_geometric

REPO = Path(__file__).resolve().parents[1]


def test_synthetic_is_deterministic_and_streamed_in_any_chunking():
    cfg = sy.SyntheticConfig(num_users=50, num_items=40, num_topics=4, num_personas=3, seed=7)
    whole = sy.generate(cfg)
    parts = list(sy.iter_sequences(cfg, start=10, stop=50, chunk_users=7))
    assert np.array_equal(np.concatenate([p.item_ids for p in parts]), whole.item_ids[whole.offsets[10]:])
    assert np.array_equal(sy.generate(cfg).item_ids, whole.item_ids)
    assert not np.array_equal(sy.generate(sy.SyntheticConfig(**{**cfg.__dict__, "seed": 8})).item_ids[:50],
                              whole.item_ids[:50])
    assert whole.lengths.min() >= cfg.min_len and whole.lengths.max() <= cfg.max_len


def test_a_larger_draw_starts_with_the_smaller_draws_users():
    # The 1e14 runs train on a 6M-user draw and are scored on its first users; their validation events, and so
    # the true entropy of what was measured, are the fitted runs' only if a user's history does not depend on
    # how many users are drawn.
    small = sy.SyntheticConfig(num_users=60, num_items=203, num_topics=7, num_personas=64, persona_zipf=1.3, seed=5)
    large = sy.SyntheticConfig(**{**small.__dict__, "num_users": 150, "name": "synthetic-large"})
    a, b = sy.generate(small), sy.generate(large)
    assert np.array_equal(b.offsets[:61], a.offsets)
    assert np.array_equal(b.item_ids[:a.offsets[-1]], a.item_ids)
    assert sy.true_cross_entropy(small, users=40, max_len=20) == sy.true_cross_entropy(large, users=40, max_len=20)


def test_uniform_persona_data_is_unchanged_by_the_zipf_option():
    # The committed hstu_synthetic study was generated before `persona_zipf` existed: its data must not move.
    cfg = sy.SyntheticConfig(num_users=300, seed=5)
    g = sy.generate(cfg)
    assert hashlib.sha256(g.item_ids.tobytes() + g.offsets.tobytes()).hexdigest()[:16] == "3f4f71cc9dd570be"


def test_zipf_persona_data_is_unchanged_by_the_batched_generator():
    # Pinned with the per-user generator of d987e0c (before generate_users): the committed hstu_synthetic_zipf
    # study's data must not move. Topics of unequal size (203 items in 7 topics) exercise the padded tables.
    cfg = sy.SyntheticConfig(num_users=300, num_items=203, num_topics=7, num_personas=64, persona_zipf=1.3, seed=5)
    g = sy.generate(cfg)
    assert hashlib.sha256(g.item_ids.tobytes() + g.offsets.tobytes()).hexdigest()[:16] == "b533919d0217f8bb"


@pytest.mark.parametrize("kw", [
    dict(num_items=43, num_topics=4, num_personas=3, fanout=2, seed=11),
    dict(num_items=203, num_topics=7, num_personas=50, persona_zipf=1.1, mean_len=30, len_sigma=1.0, seed=2),
    dict(num_items=9, num_topics=1, num_personas=2, fanout=1, min_len=4, max_len=4, seed=0),
])
def test_batched_generator_equals_the_plain_one(kw):
    cfg = sy.SyntheticConfig(num_users=400, **kw)
    proc = sy.build_process(cfg)
    users = [399, 3, 150, 0, 77, 3]  # any order, repeats
    got = sy.generate_users(cfg, proc, users)
    assert len(got) == len(users) and sy.generate_users(cfg, proc, []) == []
    for u, items in zip(users, got):
        assert items.dtype == np.int32 and np.array_equal(items, sy.generate_user(cfg, proc, u)), u
    whole = sy.generate(cfg)
    split = sy.generate(cfg, workers=3, chunk_users=37)  # forked workers, ragged last chunk
    for k in ("offsets", "item_ids", "user_ids", "timestamps"):
        assert np.array_equal(getattr(split, k), getattr(whole, k)), k
    assert np.array_equal(whole.item_ids[whole.offsets[399]:], sy.generate_user(cfg, proc, 399))
    with pytest.raises(ValueError, match="workers"):
        sy.generate(cfg, workers=0)


def test_stationary_laws_are_stationary_up_to_the_averaging_error():
    # The Cesaro mean of N = 2000 steps telescopes: ||pi M - pi||_1 = ||p_N+1 - p_1||_1 / N <= 2 / N (the data of
    # the committed studies was drawn with exactly this law; the Bayes predictive uses the same one).
    cfg = sy.SyntheticConfig(num_users=10, num_items=60, num_topics=6, num_personas=9, fanout=2, seed=4)
    proc = sy.build_process(cfg)
    for k in range(cfg.num_personas):
        pi, m = proc.stationary_PxT[k], proc.trans_PxTxT[k]
        assert abs(pi.sum() - 1) < 1e-12 and np.all(pi >= 0)
        assert np.abs(pi @ m - pi).sum() <= 2 / 2000
        limit = np.full(len(pi), 1 / len(pi)) @ np.linalg.matrix_power(m, 1 << 20)  # aperiodic: stay_prob > 0
        assert np.abs(limit @ m - limit).sum() < 1e-9
        assert np.abs(pi - limit).sum() < 5e-3  # measured at most 2.7e-3 over these 9 chains: the 1/N bias


def test_zipf_personas_are_drawn_from_their_prior_and_inferred_with_it():
    # E[P(k | history)] = P(k): averaging the exact posterior (re-derived here) over users recovers the prior
    # only if users are generated with that prior AND the posterior uses it.
    cfg = sy.SyntheticConfig(num_users=3000, num_items=60, num_topics=6, num_personas=3, fanout=2,
                             persona_zipf=2.0, seed=3)
    proc = sy.build_process(cfg)
    want = np.array([1.0, 1 / 4, 1 / 9]) / (1 + 1 / 4 + 1 / 9)
    assert np.allclose(proc.persona_prior_P, want)
    seqs = sy.generate(cfg)
    post_UxP = []
    for u in range(seqs.num_users):
        z = proc.topic_of_item[seqs.item_ids[seqs.offsets[u]:seqs.offsets[u + 1]]]
        w = want * proc.stationary_PxT[:, z[0]] * np.prod(proc.trans_PxTxT[:, z[:-1], z[1:]], axis=1)
        post_UxP.append(w / w.sum())
    post_UxP = np.array(post_UxP)
    se = post_UxP.std(0) / np.sqrt(len(post_UxP))
    assert np.all(np.abs(post_UxP.mean(0) - want) < 4 * se), (post_UxP.mean(0), want, se)
    # A prior concentrated on persona 0 is the one-persona process (its matrix is drawn first either way).
    one = sy.SyntheticConfig(num_users=1500, num_items=60, num_topics=6, num_personas=1, fanout=2, seed=3)
    peaked = sy.SyntheticConfig(**{**one.__dict__, "num_personas": 3, "persona_zipf": 60.0})
    assert abs(sy.oracle_entropy_rate(peaked) - sy.oracle_entropy_rate(one)) < 1e-9
    exact = sy.true_cross_entropy(peaked)
    assert abs(exact["ce"] - sy.oracle_entropy_rate(one)) < 4 * exact["stderr"], exact
    with pytest.raises(ValueError, match="persona_zipf"):
        sy.SyntheticConfig(persona_zipf=-1.0)


def test_true_entropy_matches_analytic_and_empirical_estimates():
    # One persona: the item process is first-order Markov in topics, the entropy rate is analytic, and the
    # exact per-step CE averaged over users must agree with it within Monte-Carlo error (4 standard errors).
    one = sy.SyntheticConfig(num_users=3000, num_items=60, num_topics=6, num_personas=1, seed=1)
    exact = sy.true_cross_entropy(one)
    analytic = sy.oracle_entropy_rate(one)
    assert abs(exact["ce"] - analytic) < 4 * exact["stderr"], (exact, analytic)
    # Empirical plug-in estimate of H(x_{t+1} | z_t) from counts over all generated transitions.
    seqs = sy.generate(one)
    proc = sy.build_process(one)
    prev, nxt = [], []
    for u in range(seqs.num_users):
        s = seqs.item_ids[seqs.offsets[u]:seqs.offsets[u + 1]]
        prev.append(proc.topic_of_item[s[:-1]]), nxt.append(s[1:])
    prev, nxt = np.concatenate(prev), np.concatenate(nxt)
    joint = np.zeros((one.num_topics, one.num_items + 1))
    np.add.at(joint, (prev, nxt), 1.0)
    cond = joint / joint.sum(1, keepdims=True)
    plug_in = -np.sum(joint * np.log(np.where(joint > 0, cond, 1.0))) / joint.sum()
    assert abs(plug_in - analytic) < 0.03, (plug_in, analytic)
    # Several personas: the Bayes CE lies between the persona-known oracle and the first-order predictor.
    many = sy.SyntheticConfig(num_users=1500, num_items=60, num_topics=6, num_personas=5, fanout=2, seed=2)
    bayes = sy.true_cross_entropy(many)["ce"]
    assert sy.oracle_entropy_rate(many) < bayes
    short = sy.true_cross_entropy(many, max_len=1)["ce"]  # the last event only: less information, higher CE
    assert bayes < short


def _tiny_sweep(tmp_path) -> Sweep:
    syn = sy.SyntheticConfig(num_users=64, num_items=30, num_topics=3, num_personas=2, fanout=2, mean_len=8, max_len=12,
                             name="synthetic-sweep")
    base = {"data.dataset": syn.name, "data.store_root": str(tmp_path / "stores"), "data.max_len": 10,
            "model.max_seq_len": 11, "train.batch_size": 16, "train.num_steps": 3, "train.log_every_steps": 3,
            "train.tensorboard": False, "loss.num_negatives": 8, "checkpoint.every_steps": 0, "eval.batch_size": 64}
    # embed_dim -1 is rejected by the model config: that run must fail without stopping the sweep.
    return Sweep(name="tiny", config_file="configs/tiny.py", overrides=base, axes={"model.embed_dim": [16, -1, 8]},
                 synthetic=syn)


def test_sweep_survives_a_failure_and_relaunch_runs_only_what_is_missing(tmp_path, capsys):
    sweep, out = _tiny_sweep(tmp_path), tmp_path / "sweep"
    first = launch_sweep.run_local(sweep, out, parallel=2, env={"JAX_PLATFORMS": "cpu"})
    assert first == {"done": 2, "failed": 1, "preempted": 0, "skipped": 0}
    rows = launch_sweep.read_results(out / "results.jsonl")
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(done) == 2 and len(failed) == 1 and failed[0]["overrides"]["model.embed_dim"] == -1
    assert "embed_dim" in failed[0]["error"]
    for r in done:
        assert r["flops"] > 0 and r["tokens"] > 0 and r["params_total"] > r["params_non_embedding"] > 0
        assert np.isfinite(r["valid_ce"]) and 0 <= r["valid_hr@10"] <= 1 and "valid_ndcg@10" in r
        _check_flops_agree(r, out / "runs" / f"{r['name']}-{r['config_hash']}")
    _check_true_entropy(sweep, out, done)
    assert "[sweep] 3/3 done" not in capsys.readouterr().out  # one failed: never reported as all done
    second = launch_sweep.run_local(sweep, out, parallel=2, env={"JAX_PLATFORMS": "cpu"})
    assert second == {"done": 0, "failed": 1, "preempted": 0, "skipped": 2}
    assert len(launch_sweep.read_results(out / "results.jsonl")) == 4
    assert "2 done, 1 failed" in launch_sweep.status(sweep, out)
    script = launch_sweep.write_submission(sweep, out, "slurm")
    assert "#SBATCH --array=0-0" in script.read_text()
    assert "model.embed_dim=-1" in (out / "submit" / "commands.txt").read_text()


def test_sigterm_to_the_launcher_preempts_its_runs_and_a_relaunch_resumes_them(tmp_path, capsys):
    # One long tiny run; SIGTERM reaches the launcher (an allocation ending) while the trainer is mid-run.
    sweep_file = tmp_path / "long_sweep.py"
    sweep_file.write_text(
        "from data_pipeline.datasets.synthetic import SyntheticConfig\n"
        "from scaling_studies.sweeps import Sweep\n"
        "SYN = SyntheticConfig(num_users=64, num_items=30, num_topics=3, num_personas=2, fanout=2, mean_len=8, "
        "max_len=12, name='synthetic-sweep')\n"
        f"BASE = {{'data.dataset': SYN.name, 'data.store_root': {str(tmp_path / 'stores')!r}, 'data.max_len': 10, "
        "'model.max_seq_len': 11, 'train.batch_size': 16, 'train.num_steps': 400, 'train.log_every_steps': 10, "
        "'train.tensorboard': False, 'loss.num_negatives': 8, 'checkpoint.every_steps': 0, 'eval.batch_size': 64}\n"
        "SWEEP = Sweep(name='long', config_file='configs/tiny.py', overrides=BASE, axes={'model.embed_dim': [8]}, "
        "synthetic=SYN)\n")
    out = tmp_path / "sweep"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    launcher = subprocess.Popen([sys.executable, "-m", "scaling_studies.launch_sweep", str(sweep_file), "--out",
                                 str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        logs = []
        while time.time() < deadline and launcher.poll() is None:
            logs = list(out.glob("runs/*/launch.log"))
            if logs and re.search(r"step [1-9]\d+/400", logs[0].read_text()):
                break
            time.sleep(0.2)
        assert launcher.poll() is None and logs, "the run never got going (or finished before the signal)"
        row = _status_row(launch_sweep.load_sweep(sweep_file), out)
        assert row[1] == "running" and re.fullmatch(r"[1-9]\d*/400", row[2]), row
        launcher.send_signal(signal.SIGTERM)
        output, _ = launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == PREEMPTED, output[-3000:]
    assert "1 run(s) saved a checkpoint" in output
    rows = launch_sweep.read_results(out / "results.jsonl")
    assert [r["status"] for r in rows] == ["preempted"], rows
    assert rows[0]["resumed_from_step"] is None  # its first launch started from scratch
    sweep = launch_sweep.load_sweep(sweep_file)
    assert "0 done, 0 failed, 1 preempted, 0 not run" in launch_sweep.status(sweep, out)
    workdir = logs[0].parent
    stopped_at = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert stopped_at and 0 < stopped_at[-1] < 400, stopped_at  # saved mid-run
    logged = stopped_at[-1] // 10 * 10  # train rows every 10 steps; the checkpoint is of the step it stopped at
    assert _status_row(sweep, out)[1:4] == ["preempted", f"{logged}/400", str(stopped_at[-1])]
    capsys.readouterr()
    assert rows[0]["cpus"] is None  # launched without --cpus_per_run: not pinned
    # The resume is held to one core of its own: the trainer itself reports the cores it could run on.
    again = launch_sweep.run_local(sweep, out, cpus_per_run=1, env={"JAX_PLATFORMS": "cpu"})
    assert again == {"done": 1, "failed": 0, "preempted": 0, "skipped": 0}
    last = launch_sweep.read_results(out / "results.jsonl")[-1]
    assert last["resumed_from_step"] == stopped_at[-1]
    first_core = min(os.sched_getaffinity(0))
    assert last["cpus"] == [first_core]
    assert json.loads((workdir / "results.json").read_text())["cpu_affinity"] == [first_core]
    # The resumed run's wall covers only its last part: no ETA is made from it.
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[sweep] 1/1 done")]
    assert line.endswith("0 queued, ETA unknown (see --status)"), line
    log = logs[0].read_text()
    assert f"resumed from {workdir / 'checkpoints'} at step {stopped_at[-1]}" in log  # not from scratch
    assert json.loads((workdir / "results.json").read_text())["steps_run"] == 400
    assert "1 done, 0 failed, 0 preempted, 0 not run" in launch_sweep.status(sweep, out)
    assert _status_row(sweep, out)[1:3] == ["done", "400/400"]


def test_cpu_slots_are_disjoint_and_refuse_more_cores_than_there_are():
    assert launch_sweep.cpu_slots(2, 1, [0, 1]) == [(0,), (1,)]
    assert launch_sweep.cpu_slots(2, 2, [7, 1, 5, 3, 9]) == [(1, 3), (5, 7)]  # in core order; 9 left over
    with pytest.raises(ValueError, match=r"--parallel 3 x --cpus_per_run 1 needs 3 cores; this process may use 2"):
        launch_sweep.cpu_slots(3, 1, [0, 1])
    with pytest.raises(ValueError, match="must be >= 1"):
        launch_sweep.cpu_slots(2, -1, [0, 1])
    with pytest.raises(SystemExit):
        launch_sweep.main(["scaling_studies/sweeps/hstu_large_ml1m_tune.py", "--out", "unused", "--status",
                           "--cpus_per_run", "1"])
    last_core = max(os.sched_getaffinity(0))
    shown = subprocess.run(launch_sweep.pinned([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                                               [last_core]), capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == f"[{last_core}]"


def _status_row(sweep: Sweep, out: Path) -> list[str]:
    """The cells of the status table's one run row."""
    (line,) = launch_sweep.status_table(sweep, out).splitlines()[2:]
    return [cell.strip() for cell in line.strip("| ").split(" | ")]


def test_progress_line_eta_comes_from_finished_runs_only():
    counts = {"done": 1, "failed": 0, "preempted": 0, "skipped": 2}
    assert launch_sweep.progress_line(9, counts, 2, 4, [100.0, 300.0], 2).endswith("3/9 done (2 from before), 2 running, "
                                                                                 "0 failed, 0 preempted, 4 queued, ETA 600s")
    assert launch_sweep.progress_line(9, counts, 2, 4, [], 2).endswith("ETA unknown (see --status)")


def test_status_table_follows_each_run_before_it_ends(tmp_path):
    sweep = Sweep(name="grid", config_file="configs/tiny.py", axes={"model.dropout": [0.1, 0.2, 0.3]})
    first, second, third = sweep.expand()
    out = tmp_path / "grid"
    work = out / "runs" / f"{first.name}-{first.config_hash}"
    (work / "checkpoints" / "40").mkdir(parents=True)
    (work / "checkpoints" / "20").mkdir()
    # 10 steps an hour, with one interval stretched by an evaluation and one by a resume a day later
    times = [0.0, 3600.0, 7200.0, 12600.0, 16200.0, 19800.0, 106200.0, 109800.0]
    rows = [{"step": 10 * k, "split": "train", "time": t, "loss": 5.0, "total_steps": 100}
            for k, t in enumerate(times, 1)]
    rows.insert(2, {"step": 20, "split": "valid", "time": 3601.0, "hr@10": 0.2, "ndcg@10": 0.1})
    rows.append({"step": 100, "split": "test", "time": 200000.0, "hr@10": 0.9, "ndcg@10": 0.8, "final": True})
    (work / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "results.jsonl").write_text(json.dumps({"status": "preempted", "name": first.name,
                                                   "config_hash": first.config_hash}) + "\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (work / launch_sweep.RUNNING_MARKER).write_text(f"{dead.pid}\n")  # a launcher killed outright left it
    work2 = out / "runs" / f"{second.name}-{second.config_hash}"
    work2.mkdir(parents=True)
    (work2 / "metrics.jsonl").write_text(json.dumps({"step": 10, "split": "train", "time": 0.0}) + "\n")
    (work2 / launch_sweep.RUNNING_MARKER).write_text(f"{os.getpid()}\n")

    lines = launch_sweep.status_table(sweep, out).splitlines()
    cells = [[c.strip() for c in line.strip("| ").split(" | ")] for line in lines[2:]]
    # the newest train row, not the end-of-run test row; the newest checkpoint; the newest evaluation
    assert cells[0] == [first.name, "preempted", "80/100", "40", "valid @20", "0.2000", "0.1000", "1970-01-02 06:30",
                        "2.0"]  # 20 steps left at the median rate, 10 an hour
    assert cells[1][:4] == [second.name, "running", "10", "–"]  # a row from before total_steps was logged
    assert cells[1][-1] == "–"
    assert cells[2] == [third.name, "not run"] + ["–"] * 7

    (work2 / launch_sweep.RUNNING_MARKER).unlink()
    assert launch_sweep.status_table(sweep, out).splitlines()[3].split(" | ")[1] == "started"  # logged, no result
    (work2 / launch_sweep.RUNNING_MARKER).write_text("")
    with pytest.raises(ValueError, match="running.pid: expected the process id"):
        launch_sweep.status_table(sweep, out)
    (work2 / launch_sweep.RUNNING_MARKER).unlink()
    (work2 / "metrics.jsonl").write_text('{"step": 10, "split": "train", "time": 0.0}\n{"step": 2\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        launch_sweep.status_table(sweep, out)


def _check_true_entropy(sweep: Sweep, out, done: list[dict]) -> None:
    """The report's true CE is the generator's, on the split, max_len and users the runs were evaluated on;
    no trained model can beat it beyond sampling noise."""
    pytest.importorskip("matplotlib", reason="the report draws figures with matplotlib (pip install -e '.[scaling]')")
    from scaling_studies import report
    from scaling_studies.study import load_study

    got = report.true_entropy_of(sweep, load_study(out))
    want = sy.true_cross_entropy(sweep.synthetic, split="valid", max_len=10)
    assert got == {**want, "split": "valid", "max_len": 10, "sweep": "tiny"} and want["users"] == 64, got
    assert all(r["valid_ce"] > got["ce"] - 3 * got["stderr"] for r in done), (got, [r["valid_ce"] for r in done])
    with pytest.raises(ValueError, match="no synthetic generator"):
        report.true_entropy_of(Sweep(name="real", config_file="configs/tiny.py"), load_study(out))


def _check_flops_agree(row: dict, workdir) -> None:
    """The result line's FLOPs are the trainer's flops_seen, and the store-based count (runs from before the
    trainer counted) gives the same number; metrics.jsonl logs FLOPs and FLOP/s, and no MFU on CPU."""
    from data_pipeline.store import SequenceStore
    from lrm import flops
    from lrm.training.data import store_path

    res = json.loads((workdir / "results.json").read_text())
    assert row["flops"] == res["flops_seen"] and row["n_eff"] == res["flops_accounting"]["n_eff"]
    old_style = {k: v for k, v in res.items() if k not in ("flops_seen", "flops_accounting")}
    (workdir / "results.json").write_text(json.dumps(old_style))
    run = launch_sweep.Run(row["name"], "configs/tiny.py", row["overrides"], row["meta"])
    assert launch_sweep.result_line(run, workdir, 1.0)["flops"] == res["flops_seen"]
    (workdir / "results.json").write_text(json.dumps(res))
    cfg = res["config"]
    store = SequenceStore.open(store_path(launch_sweep._Attr(cfg["data"])))
    n_eff = flops.train_n_eff(store.lengths, store.protocol, cfg["data"]["max_len"])
    assert res["flops_seen"] == flops.train_flops(cfg["model"], cfg["loss"], store.num_items, tokens=res["tokens_seen"],
                                                  n_eff=n_eff)
    logged = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in logged if m["split"] == "train"]
    assert train and train[-1]["flops_seen"] == res["flops_seen"]  # the last step (3) is logged
    assert all(m["model_flops_per_s"] > 0 and "mfu" not in m for m in train)
    assert res["mfu"] is None and res["model_flops_per_s"] > 0 and res["flops_accounting"]["peak_flops_per_s"] is None


def test_isoflop_runs_spend_their_budget(tmp_path):
    sizes = [{"model.embed_dim": d, "model.num_blocks": b} for d, b in ((16, 1), (32, 2), (64, 2))]
    sweep = Sweep(name="iso", config_file="configs/tiny.py", overrides={"loss.num_negatives": 64},
                  budgets=budgets_geometric(1e12, 1e13, 3.0), sizes=sizes, tokens_per_step=640.0, n_eff=5.5,
                  num_items=1000, seeds_at_budgets={1e12: [0, 1, 2]}, lr_rule=LRRule())
    runs = sweep.expand()
    assert len(runs) == 3 * 3 + 2 * 3  # 3 budgets (1e12, 3e12, 9e12), seeds ×3 at 1e12
    for r in runs:
        assert abs(r.meta["planned_flops"] / r.meta["budget"] - 1) < 0.05 or r.meta["steps"] < 20
        assert r.overrides["optim.learning_rate"] == 1e-3 * 64 / r.overrides["model.embed_dim"]
    assert len({r.config_hash for r in runs}) == len(runs)


def test_best_run_ranks_a_finished_grid_and_refuses_a_partial_one(tmp_path, capsys):
    sweep = Sweep(name="grid", config_file="configs/tiny.py",
                  axes={"model.dropout": [0.1, 0.2], "optim.learning_rate": [1e-3, 2e-3]})
    runs = sweep.expand()
    out = tmp_path / "grid"
    out.mkdir()
    metric = [0.30, 0.32, 0.32, 0.31]  # runs 1 and 2 tie: the earlier in grid order is chosen

    def write(rows):
        (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    rows = [{"status": "done", "name": r.name, "config_hash": r.config_hash, "overrides": r.overrides,
             "valid_ndcg@10": m} for r, m in zip(runs, metric)]
    write(list(reversed(rows)))  # finishing order does not matter
    best, table = launch_sweep.best_run(sweep, out, "valid_ndcg@10")
    assert best["name"] == runs[1].name
    assert [line.split(" | ")[0][2:] for line in table.splitlines()[2:]] == [runs[i].name for i in (1, 2, 3, 0)]
    assert launch_sweep.main([str(_write_sweep_file(tmp_path)), "--out", str(out), "--best", "valid_ndcg@10"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == runs[1].overrides

    failed = {**rows[3], "status": "failed", "error": "exit code 1"}
    write(rows[:3] + [failed])
    with pytest.raises(ValueError, match=rf"{runs[3].name}: failed"):
        launch_sweep.best_run(sweep, out, "valid_ndcg@10")
    write(rows[:3] + [failed, rows[3]])  # retried and done: its last line counts
    assert launch_sweep.best_run(sweep, out, "valid_ndcg@10")[0]["name"] == runs[1].name
    write(rows[:3])
    with pytest.raises(ValueError, match=rf"{runs[3].name}: not run"):
        launch_sweep.best_run(sweep, out, "valid_ndcg@10")
    write(rows[:3] + [{**rows[3], "valid_ndcg@10": float("nan")}])
    with pytest.raises(ValueError, match="valid_ndcg@10 is nan"):
        launch_sweep.best_run(sweep, out, "valid_ndcg@10")


def _write_sweep_file(tmp_path):
    path = tmp_path / "grid_sweep.py"
    path.write_text("from scaling_studies.sweeps import Sweep\n"
                    "SWEEP = Sweep(name='grid', config_file='configs/tiny.py',\n"
                    "              axes={'model.dropout': [0.1, 0.2], 'optim.learning_rate': [1e-3, 2e-3]})\n")
    return path


def test_a_run_the_launcher_stopped_is_preempted_even_if_sigterm_killed_it(tmp_path):
    # SIGTERM that reaches a trainer outside its train loop (start-up, the final test evaluation) kills it before it
    # can save: that is the launcher stopping it, to be resumed, not a failure of the run.
    run = Sweep(name="one", config_file="configs/tiny.py").expand()[0]
    (tmp_path / "launch.log").write_text("Traceback: boom\n")
    killed = -signal.SIGTERM
    assert launch_sweep._finished_row(run, killed, tmp_path, 1.0, stopped_by_launcher=True)["status"] == "preempted"
    assert launch_sweep._finished_row(run, PREEMPTED, tmp_path, 1.0, stopped_by_launcher=True)["status"] == "preempted"
    row = launch_sweep._finished_row(run, killed, tmp_path, 1.0)  # killed by someone else: a failure, with its log
    assert row["status"] == "failed" and "boom" in row["error"]
    assert launch_sweep._finished_row(run, 1, tmp_path, 1.0, stopped_by_launcher=True)["status"] == "failed"


def test_committed_zipf_sweeps_still_name_their_committed_runs():
    # Editing a sweep file must not silently orphan a committed study: every result line's config hash is a run
    # the sweep files still expand to, and the 1e14 extension differs from the fitted runs only where its
    # docstring says (a larger draw of the same process, the XLA attention, checkpoints).
    import dataclasses

    from scaling_studies.sweeps import hstu_synthetic_zipf as z
    from scaling_studies.sweeps import hstu_synthetic_zipf_1e14 as z14
    from scaling_studies.sweeps import hstu_synthetic_zipf_posthoc as zp

    expanded = {r.config_hash for s in (z.SWEEP, z.HELD_OUT, zp.SWEEP, zp.SEEDS) for r in s.expand()}
    rows = launch_sweep.read_results(REPO / "scaling_studies/results/hstu_synthetic_zipf_1e14/results.jsonl")
    fitted = [r for r in rows if r["meta"]["budget"] <= 1e13]
    assert len(fitted) == 61 and {r["config_hash"] for r in fitted} <= expanded
    assert {r["config_hash"] for r in rows if r not in fitted} <= {r.config_hash for r in z14.SWEEP.expand()}
    assert dataclasses.replace(z14.SYNTHETIC_ZIPF_6M, num_users=z.SYNTHETIC_ZIPF.num_users,
                               name=z.SYNTHETIC_ZIPF.name) == z.SYNTHETIC_ZIPF
    same_recipe = z.isoflop([z14.BUDGET], [64, 96, 128], {})
    for run, ref in zip(z14.SWEEP.expand(), same_recipe.expand()):
        extra = {k: v for k, v in run.overrides.items() if ref.overrides.get(k) != v}
        assert extra == {"data.dataset": "synthetic-zipf-6m", "model.attention_impl": "xla",
                         "checkpoint.every_steps": 10_000}, extra
    prediction = json.loads((REPO / "scaling_studies/results/hstu_synthetic_zipf_1e14/prediction.json").read_text())
    assert [p["budget"] for p in prediction["predictions"]] == [z14.BUDGET]
