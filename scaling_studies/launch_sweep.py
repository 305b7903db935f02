"""Run a sweep: `lrm-sweep scaling_studies/sweeps/<name>.py --out DIR [--parallel N] [--dry_run] [--submit slurm|tpu]`
(`--status`: done/failed counts and each run's progress; `--best METRIC`: the runs ranked by a result-line metric and the best's overrides).

Local mode runs N `python -m launch.train` subprocesses at a time, each in DIR/runs/<name>-<hash>/, and appends
one JSON line per finished run to DIR/results.jsonl (status "done", "failed" or "preempted"). A re-launch skips
runs whose config hash already has a "done" line; failed runs are retried, preempted ones resume from their
checkpoint (same workdir); a failed run never stops the sweep. SIGTERM to the launcher (a session or allocation
ending) is passed to the running trainers, which save a checkpoint and exit with `exit_codes.PREEMPTED`; the
launcher records them as preempted, starts nothing new and exits with that code.
`--submit` writes a SLURM array script or one TPU-pod command per run instead of running.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from lrm.training.exit_codes import PREEMPTED
from scaling_studies.sweeps import Run, Sweep

REPO = Path(__file__).resolve().parents[1]
RUNNING_MARKER = "running.pid"  # in a run's workdir while this machine's launcher has its trainer running


def load_sweep(path: str | Path) -> Sweep:
    spec = importlib.util.spec_from_file_location("_sweep", str(path))
    if spec is None or spec.loader is None or not Path(path).is_file():
        raise FileNotFoundError(f"sweep file {path} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, "SWEEP", None), Sweep):
        raise ValueError(f"{path} must define SWEEP = scaling_studies.sweeps.Sweep(...)")
    return module.SWEEP


def _flag_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(str(x) for x in v) + ",)"
    return str(v)


def command(run: Run, workdir: Path) -> list[str]:
    cfg = run.config_file if os.path.isabs(run.config_file) else str(REPO / run.config_file)
    return [sys.executable, "-m", "launch.train", "--config", cfg, "--workdir", str(workdir),
            *(f"--config.{k}={_flag_value(v)}" for k, v in run.overrides.items())]


def run_workdir(out: Path, run: Run) -> Path:
    """Where a run of a sweep in `out` trains: its name and config hash, so a changed config is a new run."""
    return out / "runs" / f"{run.name}-{run.config_hash}"


def read_results(path: Path) -> list[dict]:
    """The rows of a JSON-lines file (a sweep's results.jsonl, a run's metrics.jsonl); none if it is missing."""
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not a JSON line ({e})") from e
    return rows


def result_line(run: Run, workdir: Path, wall_s: float) -> dict:
    """The one line a finished run contributes: config, hash, N, FLOPs, tokens, wall time, CE, HR/NDCG.

    "flops" is the trainer's own `flops_seen` (results.json); a run trained before the trainer counted FLOPs
    is counted here by the same function (`lrm.flops.train_n_eff` + `train_flops`), so the two cannot disagree.
    """
    from data_pipeline.store import SequenceStore
    from lrm import flops
    from lrm.training.data import store_path

    res = json.loads((workdir / "results.json").read_text())
    cfg = res["config"]
    store = SequenceStore.open(store_path(_Attr(cfg["data"])))
    if "flops_seen" in res:
        train_flops, n_eff = res["flops_seen"], res["flops_accounting"]["n_eff"]
    else:
        n_eff = flops.train_n_eff(store.lengths, store.protocol, cfg["data"]["max_len"])
        train_flops = flops.train_flops(cfg["model"], cfg["loss"], store.num_items, tokens=res["tokens_seen"],
                                        n_eff=n_eff)
    counts = flops.param_counts(cfg["model"], store.num_items)
    valid = res["valid"] or {}
    return {"status": "done", "name": run.name, "config_hash": run.config_hash, "meta": run.meta,
            "overrides": run.overrides, "params_total": counts["total"], "params_non_embedding": counts["non_embedding"],
            "params_embedding": counts["embedding"], "flops": train_flops, "n_eff": n_eff,
            "tokens": res["tokens_seen"], "steps": res["steps_run"], "wall_s": wall_s,
            "train_seconds": res["train_seconds"], "model_flops_per_s": res.get("model_flops_per_s"),
            "mfu": res.get("mfu"), "valid_ce": valid.get("ce"), "valid_hr@10": valid.get("hr@10"),
            "valid_ndcg@10": valid.get("ndcg@10"), "test_ce": res["test"].get("ce"),
            "test_hr@10": res["test"].get("hr@10"), "test_ndcg@10": res["test"].get("ndcg@10"),
            "config": cfg, "time": time.time()}


class _Attr:
    def __init__(self, d: dict):
        self.__dict__.update(d)


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def cpu_slots(parallel: int, cpus_per_run: int, available: Iterable[int] | None = None) -> list[tuple[int, ...]]:
    """`parallel` disjoint sets of `cpus_per_run` cores, taken in order from `available` (default: the cores this
    process may run on).

    Why: side-by-side CPU runs that float over the same cores time-share them, each with XLA thread pools sized to
    all of them; a run held to cores of its own gets pools of its size, as XLA reads the affinity mask at start-up
    (docs/benchmarks.md, "Side-by-side CPU runs")."""
    if parallel < 1 or cpus_per_run < 1:
        raise ValueError(f"parallel ({parallel}) and cpus_per_run ({cpus_per_run}) must be >= 1")
    cores = sorted(os.sched_getaffinity(0) if available is None else available)
    if parallel * cpus_per_run > len(cores):
        raise ValueError(f"--parallel {parallel} x --cpus_per_run {cpus_per_run} needs {parallel * cpus_per_run} "
                         f"cores; this process may use {len(cores)}: {cores}")
    return [tuple(cores[i * cpus_per_run:(i + 1) * cpus_per_run]) for i in range(parallel)]


# Sets the affinity, then replaces itself with the command: no preexec_fn, whose fork runs Python code in the child
# (unsafe in a threaded parent, e.g. one that imported jax).
_PIN = ("import os, sys; os.sched_setaffinity(0, [int(c) for c in sys.argv[1].split(',')]); "
        "os.execv(sys.argv[2], sys.argv[2:])")


def pinned(cmd: list[str], cores: Iterable[int]) -> list[str]:
    """`cmd` (whose first item is an executable's path) started on `cores` only."""
    return [sys.executable, "-c", _PIN, ",".join(str(c) for c in cores), *cmd]


def run_local(sweep: Sweep, out: Path, *, parallel: int = 1, cpus_per_run: int = 0, poll_s: float = 0.5,
              env: dict | None = None) -> dict:
    """Runs what is missing; returns counts {done, failed, preempted, skipped}. `cpus_per_run` > 0 holds each
    running trainer to cores of its own (`cpu_slots`); its results row names them."""
    out.mkdir(parents=True, exist_ok=True)
    free_slots: list[tuple[int, ...] | None] = cpu_slots(parallel, cpus_per_run) if cpus_per_run else [None] * parallel
    if sweep.synthetic is not None:
        from data_pipeline.datasets.synthetic import write_synthetic_store

        store_root = sweep.overrides.get("data.store_root", "stores")
        write_synthetic_store(sweep.synthetic, store_root, workers=len(os.sched_getaffinity(0)))
    results = out / "results.jsonl"
    finished = {r["config_hash"] for r in read_results(results) if r.get("status") == "done"}
    runs = sweep.expand()
    todo = [r for r in runs if r.config_hash not in finished]
    counts = {"done": 0, "failed": 0, "preempted": 0, "skipped": len(runs) - len(todo)}
    running: dict[str, tuple[Run, subprocess.Popen, float, Path, int | None, tuple[int, ...] | None]] = {}
    walls: list[float] = []
    queue = list(todo)
    child_env = {**os.environ, **(env or {})}
    stopping: list[int] = []  # the handler only records the signal; the loop below passes it on
    signalled: set[str] = set()

    in_main = threading.current_thread() is threading.main_thread()  # signal handlers live on the main thread
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum)) if in_main else None
    try:
        while (queue and not stopping) or running:
            while queue and not stopping and len(running) < parallel:
                run = queue.pop(0)
                workdir = run_workdir(out, run)
                workdir.mkdir(parents=True, exist_ok=True)
                resumes_from = newest_checkpoint(workdir)
                cores = free_slots.pop(0)
                cmd = command(run, workdir) if cores is None else pinned(command(run, workdir), cores)
                with open(workdir / "launch.log", "a") as log:  # "a": a resumed run keeps its earlier log
                    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=child_env)
                marker = workdir / RUNNING_MARKER
                marker.with_suffix(".tmp").write_text(f"{proc.pid}\n")
                marker.with_suffix(".tmp").replace(marker)  # a reader never sees it half written
                running[run.config_hash] = (run, proc, time.perf_counter(), workdir, resumes_from, cores)
            time.sleep(poll_s)
            if stopping:  # also reaches a trainer started just before the signal
                for key in running.keys() - signalled:
                    running[key][1].send_signal(signal.SIGTERM)
                    signalled.add(key)
            for key, (run, proc, t0, workdir, resumes_from, cores) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[key]
                free_slots.append(cores)
                (workdir / RUNNING_MARKER).unlink(missing_ok=True)
                row = _finished_row(run, proc.returncode, workdir, time.perf_counter() - t0,
                                    stopped_by_launcher=key in signalled)
                row["resumed_from_step"] = resumes_from
                row["cpus"] = None if cores is None else list(cores)
                counts[row["status"]] += 1
                if row["status"] == "done" and resumes_from is None:  # a resumed run's wall is part of a run
                    walls.append(row["wall_s"])
                _append(results, row)
                print(progress_line(len(runs), counts, len(running), len(queue), walls, parallel), flush=True)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if stopping:
        print(f"[sweep] stopped by SIGTERM: {counts['preempted']} run(s) saved a checkpoint and resume on "
              f"re-launch, {len(queue)} not started", flush=True)
    return counts


def _finished_row(run: Run, returncode: int, workdir: Path, wall: float, *, stopped_by_launcher: bool = False) -> dict:
    """The results.jsonl line of a run whose process has exited.

    A trainer the launcher itself stopped is "preempted", not "failed", also when SIGTERM killed it outside its
    train loop (start-up, the final test evaluation) before it could save: its workdir keeps the checkpoints it
    did save, and a re-launch resumes from the newest."""
    base = {"name": run.name, "config_hash": run.config_hash, "meta": run.meta, "overrides": run.overrides,
            "wall_s": wall, "time": time.time()}
    if returncode == PREEMPTED:
        return {"status": "preempted", **base, "note": "checkpoint saved; a re-launch resumes it"}
    if stopped_by_launcher and returncode == -signal.SIGTERM:
        return {"status": "preempted", **base,
                "note": "killed by the launcher's SIGTERM outside the train loop; a re-launch resumes it from its "
                        "newest checkpoint (or starts it again if it had none)"}
    if returncode == 0 and (workdir / "results.json").exists():
        try:
            return result_line(run, workdir, wall)
        except Exception as e:  # noqa: BLE001 - a bad result must not stop the sweep
            err = f"result collection failed: {type(e).__name__}: {e}"
    else:
        tail = (workdir / "launch.log").read_text()[-2000:]
        err = f"exit code {returncode}: {tail}"
    return {"status": "failed", **base, "error": err}


def progress_line(total: int, counts: dict, running: int, queued: int, walls: list[float], parallel: int) -> str:
    done = counts["done"] + counts["skipped"]
    # From the wall times of whole runs (started from scratch) finished by this launcher; none yet: `--status` has
    # each run's hours left.
    eta = (f"{(sum(walls) / len(walls)) * (queued + running) / max(parallel, 1):.0f}s" if walls
           else "unknown (see --status)")
    return (f"[sweep] {done}/{total} done ({counts['skipped']} from before), {running} running, "
            f"{counts['failed']} failed, {counts['preempted']} preempted, {queued} queued, ETA {eta}")


def status(sweep: Sweep, out: Path) -> str:
    rows = read_results(out / "results.jsonl")
    last = {r["config_hash"]: r["status"] for r in rows}
    runs = sweep.expand()
    n = collections.Counter(last.get(r.config_hash, "not run") for r in runs)
    return (f"{sweep.name}: {n['done']} done, {n['failed']} failed, {n['preempted']} preempted, "
            f"{n['not run']} not run, of {len(runs)}")


def run_progress(workdir: Path) -> dict:
    """How far a run's workdir says it got: its newest logged train row and its newest evaluation row (from
    metrics.jsonl, the end-of-run test row aside) and the newest checkpoint step, the one a re-launch resumes
    from. A sweep that runs across sessions or allocations is followed with this, long before any run ends."""
    progress: dict = {"train": None, "eval": None, "checkpoint": None, "running": False, "steps_per_s": None}
    train_rows: list[tuple[int, float]] = []
    for row in read_results(workdir / "metrics.jsonl"):  # the same JSON-lines reading (and errors)
        if row.get("split") == "train":
            progress["train"] = row
            train_rows.append((row["step"], row["time"]))
        elif not row.get("final", False):
            progress["eval"] = row
    progress["running"] = _marked_running(workdir / RUNNING_MARKER)
    # The median rate of the newest logging intervals: an evaluation or a resume gap in one of them moves it little.
    recent = train_rows[-11:]
    rates = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(recent, recent[1:]) if b[1] > a[1]]
    progress["steps_per_s"] = sorted(rates)[len(rates) // 2] if rates else None
    progress["checkpoint"] = newest_checkpoint(workdir)
    return progress


def newest_checkpoint(workdir: Path) -> int | None:
    """The step of the newest checkpoint in a run's workdir, the one a re-launch resumes from (None: from scratch)."""
    ckpts = workdir / "checkpoints"
    steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
    return max(steps, default=None)


def _marked_running(marker: Path) -> bool:
    """Whether `marker` names a live process (a launcher killed outright leaves a marker of a dead one)."""
    if not marker.exists():
        return False
    text = marker.read_text().strip()
    if not text.isdigit():
        raise ValueError(f"{marker}: expected the process id of a running trainer, got {text!r}")
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _hours_left(train: dict | None, steps_per_s: float | None) -> str:
    """Training hours to the run's last step at its recent rate (evaluations not counted); "–" if unknown."""
    if train is None or "total_steps" not in train or not steps_per_s:
        return "–"
    return f"{(train['total_steps'] - train['step']) / steps_per_s / 3600:.1f}"


def status_table(sweep: Sweep, out: Path) -> str:
    """One row per run of the sweep: "running" while a launcher on this machine runs it (its `running.pid`
    names a live process), else its last result line's status; the step it reached of its total, the step a
    re-launch resumes from, its newest evaluation, when it last logged and the training hours it has left."""
    last = {r["config_hash"]: r["status"] for r in read_results(out / "results.jsonl")}
    lines = ["| run | status | step | resumes from | newest eval | hr@10 | ndcg@10 | last logged (UTC) | "
             "train hours left |", "|---|---|---|---|---|---|---|---|---|"]
    for run in sweep.expand():
        workdir = run_workdir(out, run)
        p = run_progress(workdir)
        train, ev = p["train"], p["eval"]
        state = "running" if p["running"] else last.get(run.config_hash, "started" if train or ev else "not run")
        step = "–" if train is None else (
            f"{train['step']}/{int(train['total_steps'])}" if "total_steps" in train else str(train["step"]))
        newest = [r for r in (train, ev) if r is not None]
        logged = (time.strftime("%Y-%m-%d %H:%M", time.gmtime(max(r["time"] for r in newest))) if newest else "–")
        lines.append(" | ".join([
            f"| {run.name}", state, step, "–" if p["checkpoint"] is None else str(p["checkpoint"]),
            "–" if ev is None else f"{ev['split']} @{ev['step']}",
            "–" if ev is None else f"{ev['hr@10']:.4f}", "–" if ev is None else f"{ev['ndcg@10']:.4f}",
            logged, f"{_hours_left(train, p['steps_per_s'])} |"]))
    return "\n".join(lines)


def best_run(sweep: Sweep, out: Path, metric: str) -> tuple[dict, str]:
    """The finished run of this sweep with the highest `metric` (a key of its result line, e.g. "valid_ndcg@10"),
    and a table of every finished run, best first. Ties go to the earlier run in the sweep's order, so a rule
    written down before the runs ("the highest validation NDCG@10") picks one run whatever order they ended in.
    A run that is not done, or whose metric is missing or not finite, is an error: choosing among part of a
    grid would be a different rule."""
    last = {r["config_hash"]: r for r in read_results(out / "results.jsonl")}
    runs = sweep.expand()
    problems, rows = [], []
    for order, run in enumerate(runs):
        row = last.get(run.config_hash)
        if row is None or row.get("status") != "done":
            problems.append(f"{run.name}: {'not run' if row is None else row.get('status')}")
            continue
        value = row.get(metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{run.name}: {metric} is {value!r}")
            continue
        rows.append((-value, order, run, row))
    if problems:
        raise ValueError(f"sweep {sweep.name} in {out}: cannot choose on {metric} until every run is done with a "
                         f"finite value; " + "; ".join(problems))
    rows.sort(key=lambda t: (t[0], t[1]))
    axes = sorted({k for _, _, run, _ in rows for k in run.meta})
    lines = [f"| run | {' | '.join(axes)} | {metric} |", "|" + "---|" * (len(axes) + 2)]
    lines += [f"| {run.name} | {' | '.join(str(run.meta.get(k, '')) for k in axes)} | {-neg:.4f} |"
              for neg, _, run, _ in rows]
    return rows[0][3], "\n".join(lines)


def chosen_values(sweep: Sweep, out: Path, metric: str) -> dict[str, Any]:
    """The swept keys' values of the best run by `metric` (`best_run`'s rule and errors): what a follow-up
    sweep takes from a tuning sweep, leaving the rest of its own config as it is."""
    best, _ = best_run(sweep, out, metric)
    return {key: best["overrides"][key] for key in sweep.axes}


def write_submission(sweep: Sweep, out: Path, kind: str) -> Path:
    """SLURM: one array job, task i runs line i of commands.txt. TPU: one pod command per run (every host)."""
    finished = {r["config_hash"] for r in read_results(out / "results.jsonl") if r.get("status") == "done"}
    runs = [r for r in sweep.expand() if r.config_hash not in finished]
    sub = out / "submit"
    sub.mkdir(parents=True, exist_ok=True)
    cmds = [shlex.join(command(r, run_workdir(out, r))) for r in runs]
    (sub / "commands.txt").write_text("\n".join(cmds) + "\n")
    if kind == "slurm":
        script = sub / "slurm_array.sh"
        script.write_text(
            "#!/bin/bash\n#SBATCH --job-name=lrm-" + sweep.name + f"\n#SBATCH --array=0-{len(runs) - 1}\n"
            "#SBATCH --gres=gpu:1\n#SBATCH --output=" + str(sub) + "/%A_%a.out\n"
            f"cd {shlex.quote(str(REPO))}\n"
            f'CMD=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(sub / "commands.txt"))})\n'
            "eval \"$CMD\"\n")
    elif kind == "tpu":
        script = sub / "tpu_commands.sh"
        script.write_text("#!/bin/bash\n# One command per run; set TPU_NAME and ZONE. Each starts launch.train on every host.\n"
                          + "".join(f"gcloud compute tpus tpu-vm ssh \"$TPU_NAME\" --zone=\"$ZONE\" --worker=all "
                                    f"--command={shlex.quote('cd ' + str(REPO) + ' && ' + c)}\n" for c in cmds))
    else:
        raise ValueError(f"--submit must be slurm or tpu, got {kind!r}")
    script.chmod(0o755)
    return script


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="path to a sweep file defining SWEEP")
    p.add_argument("--out", required=True, help="sweep directory (results.jsonl, runs/, submit/)")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--cpus_per_run", type=int, default=0,
                   help="local mode on CPU: hold each running trainer to this many cores of its own (Linux), so "
                        "side-by-side runs do not time-share cores; 0 (default): no pinning")
    p.add_argument("--dry_run", action="store_true", help="print the commands of the runs still missing")
    p.add_argument("--submit", choices=["slurm", "tpu"], help="write cluster scripts instead of running")
    p.add_argument("--status", action="store_true",
                   help="print done/failed/not-run counts and a row per run (step reached, checkpoint, newest "
                        "evaluation), and exit")
    p.add_argument("--best", metavar="METRIC",
                   help="print the finished runs ranked by METRIC (a result-line key, e.g. valid_ndcg@10), then the "
                        "overrides of the best as one JSON line, and exit; an error unless every run is done")
    a = p.parse_args(argv)
    if a.cpus_per_run and (a.submit or a.dry_run or a.status or a.best):
        p.error("--cpus_per_run applies to local runs only")
    sweep, out = load_sweep(a.sweep), Path(a.out)
    if a.status:
        print(status(sweep, out))
        print(status_table(sweep, out))
        return 0
    if a.best:
        row, table = best_run(sweep, out, a.best)
        print(table)
        print(json.dumps(row["overrides"], sort_keys=True))
        return 0
    if a.dry_run:
        finished = {r["config_hash"] for r in read_results(out / "results.jsonl") if r.get("status") == "done"}
        for r in sweep.expand():
            if r.config_hash not in finished:
                print(shlex.join(command(r, run_workdir(out, r))))
        return 0
    if a.submit:
        print(f"wrote {write_submission(sweep, out, a.submit)}")
        return 0
    counts = run_local(sweep, out, parallel=a.parallel, cpus_per_run=a.cpus_per_run)
    print(status(sweep, out))
    return 1 if counts["failed"] else PREEMPTED if counts["preempted"] else 0


if __name__ == "__main__":
    sys.exit(main())
