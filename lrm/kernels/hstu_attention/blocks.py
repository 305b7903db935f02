"""Tile sizes of the Pallas HSTU attention kernels, one frozen dataclass per backend.

The defaults were chosen from first principles (register/VMEM budget, MXU/tensor-core shapes). On an H200 the
GPU defaults were the fastest of five tilings tried (docs/benchmarks.md, 2026-12-04); the TPU defaults have
not met a TPU. `bench/attention.py --blocks` is the tool to tune them.
Sequences are padded to a multiple of every block size in use, so any length works with any blocks.

Backward kernels (dK/dV, dQ and the bias-gradient kernel) share one (block_q_bwd, block_k_bwd) tiling so
that they share one set of per-block key/query ranges.
"""
from __future__ import annotations

import dataclasses


def _check_positive(cls_name: str, **sizes: int) -> None:
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{cls_name}.{name} must be a positive int, got {size!r}")


@dataclasses.dataclass(frozen=True)
class GPUBlockSizes:
    """Pallas Triton tiles. Every block size must be a power of two >= 16 (Triton `tl.dot` minimum).

    block_q / block_k: query rows per program and keys per inner step of the forward kernel. 64x64 keeps
      the f32 score tile, its bias gather and the (64, Dv) accumulator in registers for Dv <= 128.
    block_q_bwd / block_k_bwd: the same for the dK/dV, dQ and bias-gradient kernels, which hold more live
      tiles (scores, dO·Vᵀ, two accumulators), hence no larger than the forward.
    num_warps / num_stages: Triton launch parameters (4 warps per 64-row tile is the usual choice).
    """

    block_q: int = 64
    block_k: int = 64
    block_q_bwd: int = 64
    block_k_bwd: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        sizes = dict(block_q=self.block_q, block_k=self.block_k, block_q_bwd=self.block_q_bwd,
                     block_k_bwd=self.block_k_bwd)
        _check_positive(type(self).__name__, num_warps=self.num_warps, num_stages=self.num_stages, **sizes)
        for name, size in sizes.items():
            if size < 16 or size & (size - 1):
                raise ValueError(f"GPUBlockSizes.{name} must be a power of two >= 16, got {size}")


@dataclasses.dataclass(frozen=True)
class TPUBlockSizes:
    """Pallas Mosaic TPU tiles.

    On hardware block_k and block_k_bwd must be multiples of 128 (they are the lane dimension of the
    score tile and of the per-key metadata blocks) and block_q / block_q_bwd multiples of 8 (sublanes);
    interpret mode accepts any size (the tests use 16). 128x128 matches the MXU of v4/v5e and keeps every
    tile of the backward (scores, dO·Vᵀ, the (128, 256) bias band) far inside VMEM.
    """

    block_q: int = 128
    block_k: int = 128
    block_q_bwd: int = 128
    block_k_bwd: int = 128

    def __post_init__(self) -> None:
        _check_positive(type(self).__name__, block_q=self.block_q, block_k=self.block_k,
                        block_q_bwd=self.block_q_bwd, block_k_bwd=self.block_k_bwd)

    def check_hardware(self) -> None:
        """Raise if these tiles cannot be lowered by Mosaic on a real TPU."""
        for name in ("block_q", "block_q_bwd"):
            if getattr(self, name) % 8:
                raise ValueError(f"TPUBlockSizes.{name} must be a multiple of 8 on TPU, got {getattr(self, name)}")
        for name in ("block_k", "block_k_bwd"):
            if getattr(self, name) % 128:
                raise ValueError(
                    f"TPUBlockSizes.{name} must be a multiple of 128 on TPU, got {getattr(self, name)}"
                )
