"""The decoder's large products through oneDNN: same values as torch's, and a safe fallback."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from napari_persam.core.engine import cpu_products
from napari_persam.core.engine.cpu_products import MIN_ROWS, linear, linear_onto

needs_onednn = pytest.mark.skipif(
    not cpu_products.onednn_available(), reason="this PyTorch build has no working oneDNN"
)


def _inputs(rows: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 64, generator=generator)
    weight = torch.randn(48, 64, generator=generator)
    bias = torch.randn(48, generator=generator)
    other = torch.randn(rows, 48, generator=generator)
    return x, weight, bias, other


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts calls of oneDNN's product (both overloads) while still running it.

    In a PyTorch without the operator the stand-in only counts (and fails): the
    fallback tests still run there.
    """
    original = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    calls = []

    class Counting:
        def __call__(self, *args):
            calls.append("plain")
            return original(*args)

        def binary(self, *args):
            calls.append("binary")
            return original.binary(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Counting(), raising=False)
    return calls


@needs_onednn
@pytest.mark.parametrize("rows", [MIN_ROWS, 4096])
def test_products_match_torch_through_onednn(rows, onednn_calls):
    x, weight, bias, other = _inputs(rows)
    torch.testing.assert_close(linear(x, weight, bias), F.linear(x, weight, bias))
    torch.testing.assert_close(
        linear(x, weight, bias, gelu=True), F.gelu(F.linear(x, weight, bias))
    )
    torch.testing.assert_close(
        linear_onto(other, x, weight, bias), other + F.linear(x, weight, bias)
    )
    torch.testing.assert_close(linear_onto(other, x, weight, None), other + x @ weight.t())
    assert onednn_calls == ["plain", "plain", "binary", "binary"]


@needs_onednn
def test_transposed_views_are_read_as_their_values(onednn_calls):
    """The image-to-token mix is a transposed view, its values a transposed weight."""
    x, weight, _, other = _inputs(4096)
    x_view, weight_view = x.t().contiguous().t(), weight.t().contiguous().t()
    assert not x_view.is_contiguous() and not weight_view.is_contiguous()
    torch.testing.assert_close(
        linear_onto(other, x_view, weight_view, None), other + x @ weight.t()
    )
    assert onednn_calls == ["binary"]


@pytest.mark.parametrize(
    "case",
    ["few rows", "float64", "autograd", "bias autograd", "lower precision", "unavailable"],
)
def test_falls_back_to_torch(case, monkeypatch, onednn_calls):
    rows = MIN_ROWS - 1 if case == "few rows" else 512
    x, weight, bias, other = _inputs(rows)
    if case == "float64":
        x, weight, bias, other = (t.double() for t in (x, weight, bias, other))
    if case == "autograd":
        x.requires_grad_(True)
    if case == "bias autograd":
        bias.requires_grad_(True)
    if case == "lower precision":
        monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")
    if case == "unavailable":
        monkeypatch.setattr(cpu_products, "onednn_available", lambda: False)
    out = linear(x, weight, bias, gelu=True)
    torch.testing.assert_close(out, F.gelu(F.linear(x, weight, bias)))
    torch.testing.assert_close(
        linear_onto(other, x, weight, bias), other + F.linear(x, weight, bias)
    )
    assert onednn_calls == []
    if case.endswith("autograd"):
        out.sum().backward()
        grad = x.grad if case == "autograd" else bias.grad
        assert grad is not None and grad.abs().sum() > 0


@needs_onednn
def test_a_broadcast_addend_goes_to_torch(onednn_calls):
    x, weight, bias, _ = _inputs(512)
    row = torch.randn(1, 48)
    torch.testing.assert_close(linear_onto(row, x, weight, bias), row + F.linear(x, weight, bias))
    assert onednn_calls == []


class _Broken:
    def __call__(self, *args):
        raise RuntimeError("no oneDNN kernel for this CPU")

    binary = __call__


class _Wrong:
    def __call__(self, x, weight, bias, *args):
        return F.linear(x, weight, bias) + 1e-3

    def binary(self, x, other, weight, bias, attr):
        return other + F.linear(x, weight, bias)


@pytest.mark.parametrize("operator", [_Broken(), _Wrong(), None])
def test_a_failing_or_disagreeing_onednn_is_not_used(operator, monkeypatch):
    if operator is None:  # a PyTorch whose oneDNN lacks the operator
        monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace())
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    else:
        monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", operator)
    assert cpu_products.onednn_available.__wrapped__() is False
