"""The mask decoder's large float32 products through oneDNN on CPUs where it is faster.

PyTorch's CPU builds run ``F.linear`` and ``addmm`` through MKL. MKL picks its
AVX-512 kernels only on Intel processors: on an AMD EPYC with AVX-512 its float32
products ran at 93-105 GFLOP per CPU-second, against 209-235 for the same products
through oneDNN (also bundled with PyTorch, and vendor-neutral), in the same run, on
one thread, for every image-side shape of the decoder (BENCHMARKS.md). Both compute
in float32; they differ only in summation order (about 1e-7 relative).

``torch.ops.mkldnn._linear_pointwise`` is the oneDNN product PyTorch's own compiler
emits for CPUs. It is not public API, so it is checked once per process against
``F.linear`` on a small input; where it is missing, fails or disagrees, and for
anything but plain 2-d float32 CPU tensors outside autograd, the functions here are
``F.linear`` and ``torch.addmm``. Products with few rows (the prompt tokens) stay
on MKL, which is as fast there and has no primitive to set up.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

#: Rows from which a product goes through oneDNN (the image side has 1024-16384).
MIN_ROWS = 256


@functools.cache
def onednn_available() -> bool:
    """Whether oneDNN's product runs here and agrees with ``F.linear`` (checked once)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        operator = torch.ops.mkldnn._linear_pointwise
        generator = torch.Generator().manual_seed(0)
        x, weight, bias, other = (
            torch.randn(shape, generator=generator)
            for shape in ((64, 32), (16, 32), (16,), (64, 16))
        )
        with torch.no_grad():
            checks = (
                (operator(x, weight, bias, "none", [], ""), F.linear(x, weight, bias)),
                (operator(x, weight, bias, "gelu", [], "none"), F.gelu(F.linear(x, weight, bias))),
                (operator.binary(x, other, weight, bias, "add"), other + F.linear(x, weight, bias)),
            )
        return all(torch.allclose(got, want, rtol=1e-5, atol=1e-5) for got, want in checks)
    except Exception:  # a private operator: any failure at all means "not here"
        return False


def _through_onednn(x: torch.Tensor, weight: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether ``x @ weight.T`` (and ``others``: bias, the tensor added onto) goes to oneDNN."""
    tensors = [x, weight, *(t for t in others if t is not None)]
    return (
        all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
        and x.dim() == 2
        and x.shape[0] >= MIN_ROWS
        # oneDNN has no gradient formula here, and would honour a lowered matmul precision
        # (bfloat16 on CPUs that have it) that MKL ignores.
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and torch.get_float32_matmul_precision() == "highest"
        and onednn_available()
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, gelu: bool = False
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, followed by the exact (erf) GELU when ``gelu``.

    ``x`` (M, K), ``weight`` (N, K) as in ``torch.nn.Linear``.
    """
    if _through_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(),
            weight.contiguous(),
            bias,
            "gelu" if gelu else "none",
            [],
            "none" if gelu else "",
        )
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out


def linear_onto(
    other: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``other + F.linear(x, weight, bias)`` in one product (``other`` is (M, N))."""
    same_shape = other.shape == (x.shape[0], weight.shape[0])  # oneDNN does not broadcast
    if same_shape and _through_onednn(x, weight, bias, other):
        return torch.ops.mkldnn._linear_pointwise.binary(
            x.contiguous(), other.contiguous(), weight.contiguous(), bias, "add"
        )
    out = torch.addmm(other, x, weight.t())
    return out if bias is None else out.add_(bias)
