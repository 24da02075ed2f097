"""Counter-based random numbers keyed by (seed, example id, element).

Attacks draw their random starts from here so that an example's noise depends only on the
seed and its id, never on how the data was split into batches or processes.
"""

from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding 32-bit values."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def _hash_grid(seed: int, ids: torch.Tensor, numel: int) -> torch.Tensor:
    """Hash of (seed, id, element) for every id and every element index: shape (len(ids), numel)."""
    device = ids.device
    key = _fmix32_int((seed * 0x9E3779B1) & _MASK32)  # a Python int: no host-to-device copy
    row = _fmix32((ids.to(torch.int64) & _MASK32) ^ key)
    row = _fmix32((row + ((ids.to(torch.int64) >> 32) & _MASK32)) & _MASK32)
    col = torch.arange(numel, dtype=torch.int64, device=device)
    return _fmix32((row[:, None] * 0x27D4EB2F + col[None, :]) & _MASK32 ^ row[:, None])


def uniform(seed: int, ids: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Uniform numbers in [0, 1) of shape ``(len(ids), *shape)``, one independent stream per id."""
    numel = math.prod(shape)
    bits = _hash_grid(seed, ids, numel) >> 8
    return (bits.to(torch.float64) / float(1 << 24)).to(dtype).reshape(len(ids), *shape)


def normal(seed: int, ids: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Standard normal numbers of shape ``(len(ids), *shape)`` by Box-Muller over two streams."""
    u1 = uniform(seed, ids, shape, torch.float64).clamp_min(1e-12)
    u2 = uniform(seed ^ 0x5BD1E995, ids, shape, torch.float64)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).to(dtype)


def _fmix32_int(h: int) -> int:
    """:func:`_fmix32` on a plain Python integer."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def derive(seed: int, *parts: int) -> int:
    """A new 32-bit seed derived from ``seed`` and integer parts (epoch, restart, ...)."""
    h = seed & _MASK32
    for p in parts:
        h = _fmix32_int((h ^ ((p * 0x9E3779B1) & _MASK32)) & _MASK32)
    return h
