"""The data path reads one way (ARCHITECTURE.md): a stage imports only from stages before it (or its own).

Every import statement of the repository's packages is read, function-local ones too, so a lazy import
cannot slip a backwards dependency past this test.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Stage of each group, in data-path order; a module may import groups of its stage or lower.
STAGES = {
    "data_pipeline": 0,
    "lrm.kernels": 1, "lrm.sharding": 1,
    "lrm.models": 2,
    "lrm.losses": 3, "lrm.metrics": 3, "lrm.flops": 3,
    "lrm.training": 4,
    "lrm.serving": 5,
    "launch": 6, "scaling_studies": 6, "configs": 6,
    "bench": 7,
}
PACKAGES = ("data_pipeline", "lrm", "launch", "scaling_studies", "configs", "bench")


def group(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "lrm" and len(parts) > 1:
        return f"lrm.{parts[1]}"
    return parts[0]


def _submodule_or_package(prefix: str, name: str) -> str:
    """`from lrm import sharding` imports the module lrm.sharding; `from lrm.x import f` the module lrm.x."""
    candidate = REPO / Path(*prefix.split("."), name)
    return f"{prefix}.{name}" if candidate.with_suffix(".py").exists() or candidate.is_dir() else prefix


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import of this repository's packages in one file."""
    found = []
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            names = [_submodule_or_package(prefix, a.name) for a in node.names]
        else:
            continue
        found.extend((node.lineno, n) for n in names if n.split(".")[0] in PACKAGES)
    return found


def repo_modules() -> list[tuple[Path, str]]:
    out = []
    for top in PACKAGES:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            out.append((path, ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)))
    return out


def test_every_group_has_a_stage():
    groups = {group(m) for _, m in repo_modules()} - {"lrm"}
    assert groups <= set(STAGES), sorted(groups - set(STAGES))


def test_no_stage_imports_a_later_one():
    backwards = []
    for path, module in repo_modules():
        own = STAGES.get(group(module))
        for line, target in imported_modules(path, module):
            stage = STAGES.get(group(target))
            if own is None:  # lrm/__init__.py: the package itself may import nothing of its stages
                backwards.append(f"{path.relative_to(REPO)}:{line}: the package lrm imports {target}")
            elif stage is not None and stage > own:
                backwards.append(f"{path.relative_to(REPO)}:{line}: {group(module)} (stage {own}) imports {target} "
                                 f"(stage {stage})")
    assert not backwards, "\n".join(backwards)


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    src = tmp_path / "hstu.py"  # read as lrm/models/hstu.py
    src.write_text("def f():\n    from lrm.training import train\n    from ..training import sharded\n"
                   "    import launch.train\n")
    found = imported_modules(src, "lrm.models.hstu")
    assert [t for _, t in found] == ["lrm.training.train", "lrm.training.sharded", "launch.train"], found
    assert all(STAGES[group(t)] > STAGES[group("lrm.models.hstu")] for _, t in found)
