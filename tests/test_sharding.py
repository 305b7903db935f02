"""Sharding: mesh config, logical-axis rules, golden PartitionSpecs, and (in a subprocess with 8 fake CPU
devices) one train + eval step per mesh against the single-device result.

Tolerance for the mesh comparison: sharding only changes the order in which float32 partial sums are added
(per-shard sums merged by all-reduce, over at most B·L·(K+1) ≈ 3k terms here). A reordered float32 sum
differs by about log2(n)·eps ≈ 12 · 1.2e-7 ≈ 1.5e-6 of the terms' magnitude (measured: ≤ 1e-6 of each
gradient leaf's largest entry, the loss to one ulp). We allow 1e-5 of the leaf's largest entry for gradients
and 1e-6 relative for the loss; a real bug (a padding row in the softmax, a missing shard, dropout keyed
per shard) moves gradients by ≥ 1e-2 relative.

Regenerate the golden file after an intended sharding change:
    .venv/bin/python tests/test_sharding.py --regenerate-golden
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "partition_specs.json"
GOLDEN_MESH = {"data": 2, "fsdp": 2, "tensor": 2}
GOLDEN_NUM_ITEMS = 1000
GRAD_TOL, LOSS_RTOL = 1e-5, 1e-6


def _config_modules() -> list[str]:
    return sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem not in ("__init__", "base", "recipes"))


def golden_specs() -> dict[str, dict[str, str]]:
    """Every parameter's PartitionSpec for every shipped config on a 2×2×2 mesh (no devices needed)."""
    import importlib

    import jax
    from flax import nnx

    from lrm import sharding as shd
    from lrm.models import build_model
    from lrm.training import sharded

    out = {}
    for name in _config_modules():
        cfg = importlib.import_module(f"configs.{name}").get_config()
        model = nnx.eval_shape(lambda: build_model(cfg.model, num_items=GOLDEN_NUM_ITEMS, rngs=nnx.Rngs(params=0)))
        _, params = nnx.split(model, nnx.Param)
        rules = shd.rules_from_config(cfg.mesh)
        rows = shd.padded_vocab(GOLDEN_NUM_ITEMS + 1, GOLDEN_MESH, rules)
        params = jax.eval_shape(lambda p: sharded.pad_vocab(p, rows), params)  # as create_state pads it
        specs = shd.tree_specs(params, GOLDEN_MESH, rules)
        leaves = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        out[name] = {jax.tree_util.keystr(p): str(s) for p, s in leaves}
    return out


def test_golden_partition_specs():
    assert GOLDEN.exists(), f"{GOLDEN} missing; run: python tests/test_sharding.py --regenerate-golden"
    want = json.loads(GOLDEN.read_text())
    got = golden_specs()
    assert sorted(got) == sorted(want), "config list changed; regenerate the golden file"
    for name in got:
        assert got[name] == want[name], f"PartitionSpecs of configs/{name}.py changed (regenerate if intended)"


def test_rules_give_the_documented_specs():
    from jax.sharding import PartitionSpec as P

    from lrm import sharding as shd

    sizes = {"data": 2, "fsdp": 2, "tensor": 2}
    assert shd.logical_to_spec(("vocab", "embed"), (1004, 64), sizes) == P(("fsdp", "tensor"))
    assert shd.logical_to_spec(("embed", "qkv", "heads", "head_dim"), (64, 4, 4, 16), sizes) == P("fsdp", None, "tensor")
    assert shd.logical_to_spec(("heads", "head_dim", "embed"), (4, 16, 64), sizes) == P("tensor", None, "fsdp")
    assert shd.logical_to_spec(("embed", "mlp"), (64, 64), sizes) == P("fsdp", "tensor")
    # A size that does not divide is replicated over that axis instead of failing.
    assert shd.logical_to_spec(("heads", "head_dim", "embed"), (1, 50, 50), sizes) == P(None, None, "fsdp")
    assert shd.logical_to_spec(("batch", "length", "act_embed"), (8, 11, 64), sizes) == P(("data", "fsdp"))
    all_rules = shd.rules_from_config(type("M", (), {"vocab_over": "all"})())
    assert shd.logical_to_spec(("vocab", "embed"), (1008, 64), sizes, all_rules) == P(("data", "fsdp", "tensor"))
    assert shd.padded_vocab(1001, sizes) == 1004 and shd.padded_vocab(1001, sizes, all_rules) == 1008
    with pytest.raises(ValueError, match="no sharding rule"):
        shd.logical_to_spec(("nonsense",), (4,), sizes)


def test_mesh_shapes_fill_and_errors():
    from lrm import sharding as shd

    cfg = type("M", (), {"ici": (-1, 2, 1), "dcn": (2, 1, 1)})()
    assert shd.mesh_shapes(cfg, 16, 2) == ((4, 2, 1), (2, 1, 1))
    with pytest.raises(ValueError, match="at most one -1"):
        shd.mesh_shapes(type("M", (), {"ici": (-1, -1, 1), "dcn": (1, 1, 1)})(), 8)
    with pytest.raises(ValueError, match="needs 8 devices, have 4"):
        shd.mesh_shapes(type("M", (), {"ici": (2, 2, 2), "dcn": (1, 1, 1)})(), 4)


@pytest.fixture(scope="module")
def eight_devices() -> dict:
    """One subprocess (8 fake CPU devices) runs every mesh; ~1 minute on 2 cores."""
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "sharding_worker.py")], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


MESHES = ["(8, 1, 1)", "(2, 4, 1)", "(2, 2, 2)", "(1, 1, 8)"]


@pytest.mark.parametrize("mesh", MESHES)
def test_train_step_matches_single_device(eight_devices, mesh):
    ref, got = eight_devices["meshes"]["(1, 1, 1)"], eight_devices["meshes"][mesh]
    assert got["loss"] == pytest.approx(ref["loss"], rel=LOSS_RTOL)
    assert sorted(got["grad_max_abs_diff"]) == sorted(ref["grad_max_abs"])
    for name, diff in got["grad_max_abs_diff"].items():
        assert diff <= GRAD_TOL * ref["grad_max_abs"][name], (name, diff, ref["grad_max_abs"][name])


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_eval_matches_unsharded_ranking(eight_devices, mesh):
    got = eight_devices["meshes"][mesh]
    assert got["rank"] == eight_devices["metrics_rank"]
    np.testing.assert_allclose(got["ce"], eight_devices["metrics_ce"], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("mesh", MESHES)
def test_each_device_holds_its_share_of_the_item_table(eight_devices, mesh):
    data, fsdp, tensor = ast.literal_eval(mesh)
    k = fsdp * tensor  # default vocab_over="fsdp_tensor"
    got = eight_devices["meshes"][mesh]
    assert got["rows"] == -(-38 // k) * k  # 37 items + padding row 0, padded to a multiple of k
    assert got["shard_rows"] == [got["rows"] // k]
    assert got["padded_zero"]


@pytest.mark.parametrize("mesh", MESHES)
def test_created_params_carry_the_rule_specs(eight_devices, mesh):
    from lrm import sharding as shd

    data, fsdp, tensor = ast.literal_eval(mesh)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    specs = eight_devices["meshes"][mesh]["specs"]
    table_axes = tuple(a for a in ("fsdp", "tensor") if sizes[a] > 1)
    want_table = "P()" if not table_axes else str(shd.P(table_axes[0] if len(table_axes) == 1 else table_axes))
    assert specs["['embed']['item']['table'].value"] == want_table
    uvqk = shd.logical_to_spec(("embed", "qkv", "heads", "head_dim"), (32, 4, 2, 16), sizes)
    assert specs["['layers'][0]['uvqk'].value"] == str(uvqk)


def test_dcn_part_of_the_mesh_is_outermost(eight_devices):
    """ici (-1,2,1) × dcn (2,1,1) on one process: data = 2 DCN blocks × 2; each block is 4 consecutive
    devices, so only the data axis crosses blocks."""
    m = eight_devices["hybrid_mesh"]
    assert m["shape"] == {"data": 4, "fsdp": 2, "tensor": 1}
    ids = np.asarray(m["ids"])[:, :, 0]
    assert ids[:2].ravel().tolist() == [0, 1, 2, 3] and ids[2:].ravel().tolist() == [4, 5, 6, 7]


def test_compile_only_reports_per_device_bytes(eight_devices):
    r = eight_devices["compile_only"]
    assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and r["table_rows_padded"] == 1004
    # the item table alone is 1004·32 f32 rows split 4 ways; Adam keeps two moments of every parameter
    assert r["params_bytes_per_device"] >= 1004 * 32 * 4 // 4
    assert r["opt_state_bytes_per_device"] >= 2 * r["params_bytes_per_device"]
    assert r["temp_bytes_per_device"] > 0 and r["flops_per_device"] > 0
    assert r["largest_all_gather_elems"] > 0  # reported so a table-sized gather shows (README, known gap)
    t = eight_devices["compile_only_vocab_tensor"]
    assert t["table_rows_padded"] == 1002  # 1001 items + padding row, over tensor=2
    assert t["table_rows_all_gathered"] == 0  # XLA's row gathers rebuild no table rows
    assert 0 <= r["table_rows_all_gathered"] <= 1004  # fsdp x tensor rows: see docs/benchmarks.md (known gap)


def test_remat_and_scan_layers_change_nothing_numerically():
    """Per-block remat and scan-over-layers are schedule changes only: same loss and gradients."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from configs import tiny
    from lrm.models import build_model

    sys.path.insert(0, str(REPO / "tests"))
    from sharding_fixtures import NUM_ITEMS, batch

    def loss_and_grads(remat: str, scan: bool):
        c = tiny.get_config()
        c.model.max_seq_len, c.model.remat, c.model.scan_layers = 11, remat, scan
        graphdef, params = nnx.split(build_model(c.model, num_items=NUM_ITEMS, rngs=nnx.Rngs(params=0)), nnx.Param)
        b = batch()
        f = lambda p: jnp.sum(nnx.merge(graphdef, p)(b, deterministic=False, dropout_key=jax.random.key(1)) ** 3)  # noqa: E731
        return jax.jit(jax.value_and_grad(f))(params)

    base_loss, base_grads = loss_and_grads("none", False)
    for remat, scan in [("dots_saveable", True)]:  # both knobs at once: either one changing numbers fails
        loss, grads = loss_and_grads(remat, scan)
        assert float(loss) == pytest.approx(float(base_loss), rel=1e-6)
        for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(h), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="remat must be one of"):
        loss_and_grads("sometimes", False)


def test_launchers_dry_run_print_the_commands(tmp_path):
    train = ["--config", "configs/tiny.py", "--workdir", str(tmp_path)]
    local = subprocess.run([str(REPO / "launch" / "local_multiprocess.sh"), "--dry_run", "--port", "1234", "2", "4",
                            "--", *train], capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(local) == 2 and all("-m launch.train" in line for line in local)
    assert "coordinator_address=localhost:1234" in local[0] and "process_id=1" in local[1]
    assert "xla_force_host_platform_device_count=4" in local[0]
    tpu = subprocess.run([str(REPO / "launch" / "tpu_pod.sh"), "--dry_run", "pod", "zone-a", "--", *train],
                         capture_output=True, text=True, check=True).stdout
    assert tpu.startswith("gcloud compute tpus tpu-vm ssh pod --zone zone-a --worker=all") and "launch.train" in tpu
    slurm = subprocess.run(["bash", str(REPO / "launch" / "slurm_gpu.sbatch"), "--dry_run", *train],
                           capture_output=True, text=True, check=True).stdout
    assert "srun" in slurm and "-m launch.train --config configs/tiny.py" in slurm


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate-golden"]:
        raise SystemExit("usage: python tests/test_sharding.py --regenerate-golden")
    sys.path.insert(0, str(REPO))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(golden_specs(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
