"""Decode kernels (AVX-512 ops, inductor's fused product) and weight-only int8/int4: every path against a
full-precision product in each dtype, batches against rows alone, and the compiled decode step of a quantised model
against its eager run."""

import pytest
import torch
import torch.nn.functional as F

from conftest import make_batch, make_hf_model
from qwen2audio import cpu_kernels, load
from qwen2audio.generate import GenerationConfig, Generator
from qwen2audio.quant import (DecodeLinear, Int4Linear, Int8Linear, KERNEL_MAX_ROWS, QuantizedWeight, fused_gemv,
                              quantize, quantize_weight, use_decode_kernels)

avx512 = pytest.mark.skipif(not cpu_kernels.available(), reason="needs AVX-512 BF16/VNNI and a C++ compiler")
DTYPES = [torch.float32, torch.bfloat16]
BF16_OUTPUT = 8e-3  # a bf16 result rounded once: relative error ~2^-9 per element


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.bfloat16, BF16_OUTPUT)])
def test_fused_gemv_accumulates_in_fp32(dtype, tolerance):
    torch.manual_seed(0)
    w, x = torch.randn(100, 900), torch.randn(2, 1, 900)  # odd sizes: no vector-width assumptions
    ref = F.linear(x.to(dtype).double(), w.to(dtype).double())  # exact product of the rounded inputs
    y = fused_gemv(x.to(dtype), w.to(dtype))
    assert y.dtype == dtype and y.shape == (2, 1, 100)
    assert _rel(y, ref) < tolerance  # only the final rounding to the output dtype is lost, not one per product


@avx512
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4864, 896), (37, 33), (6, 1000)])  # tails in both the rows and the inputs
def test_avx512_gemv_equals_the_exact_product(dtype, shape):
    torch.manual_seed(1)
    n, k = shape
    w, bias = torch.randn(n, k).to(dtype), torch.randn(n).to(dtype)
    x = torch.randn(cpu_kernels.MAX_ROWS, k).to(dtype)
    ref = x.double() @ w.double().T + bias.double()
    y = cpu_kernels.gemv(x, w, bias)
    assert y.dtype == dtype
    assert _rel(y, ref) < (1e-6 if dtype == torch.float32 else BF16_OUTPUT)
    for rows in range(1, cpu_kernels.MAX_ROWS):  # any batch: each row exactly as alone (same order of sums)
        assert torch.equal(cpu_kernels.gemv(x[:rows], w, bias), y[:rows])


@avx512
@pytest.mark.parametrize("dtype", DTYPES)
def test_avx512_int8_fixed_point_error_and_rows_alone(dtype):
    """x enters as 16-bit fixed point, one scale per row: error per input at most max|x| / 2^16, so the product is
    closer than with x rounded to bf16 even when one input is 100x the others; every row of a batch equals the row
    alone."""
    torch.manual_seed(2)
    q = torch.randint(-127, 128, (70, 4864), dtype=torch.int8)  # more than one int32 flush of the sums
    scale = torch.rand(70) / 100
    x = torch.randn(5, 4864)
    x[3:, 7] = 100.0  # rows 3, 4: an outlier
    x = x.to(dtype)
    w = q.double() * scale.double()[:, None]
    ref = x.double() @ w.T
    y = cpu_kernels.gemv_int8(x, q, scale)
    assert y.dtype == dtype
    if dtype == torch.float32:
        assert _rel(y[:3], ref[:3]) < 6e-5  # rms of a uniform rounding: (max|x| / 32767) / sqrt(12)
        assert _rel(y[3:], ref[3:]) < _rel(x[3:].bfloat16().double() @ w.T, ref[3:])  # 5e-4 against 9e-4
    else:
        assert _rel(y, ref) < BF16_OUTPUT
    for i in range(5):
        assert torch.equal(cpu_kernels.gemv_int8(x[i:i + 1], q, scale), y[i:i + 1])


def _int8_kernel_bound(x: torch.Tensor, w: torch.Tensor, group_size: int, out_dtype: torch.dtype) -> torch.Tensor:
    """The error `cpu_kernels.gemv_int8` promises for each output (its docstring): x's 16-bit fixed point, the fp32
    sums of the groups' int32 sums, and the rounding to the output dtype."""
    x, w = x.double(), w.double()
    fixed_point = x.abs().amax(-1, keepdim=True) / 65534 * w.abs().sum(-1)
    int32_sums = (w.shape[1] // group_size) * -(-group_size // 2048)
    fp32_sums = (2 * int32_sums + 6) * 2.0**-24 * (x.abs() @ w.abs().T)
    output = (x @ w.T).abs() * torch.finfo(out_dtype).eps  # eps = 2 x the unit roundoff: room for the bias add
    return fixed_point + fp32_sums + output


@avx512
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [32, 128, 4864])  # 4864: one group per row, more than one int32 flush
def test_avx512_grouped_int8_within_its_bound(dtype, group_size):
    """Symmetric scales per group of inputs (W8A16's groups of 128, GGUF q8_0's 32, per row): the kernel equals x times
    the dequantised weight within its stated bound, for 1 to 8 rows, with a bias; every row of a batch equals the
    row alone."""
    torch.manual_seed(6)
    out_features, in_features = 37, 4864  # 37: a tail of weight rows after the blocks
    q = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8)
    scale = torch.rand(out_features, in_features // group_size) / 100 + 1e-4
    bias = torch.randn(out_features).to(dtype)
    w = QuantizedWeight(q, scale, 8).dequantize(torch.float64)
    x = torch.randn(cpu_kernels.MAX_ROWS, in_features)
    x[-1, 5] = 100.0  # an outlier: the fixed point's step grows with it
    x = x.to(dtype)
    for rows in range(1, cpu_kernels.MAX_ROWS + 1):
        y = cpu_kernels.gemv_int8(x[:rows], q, scale, bias)
        assert y.dtype == dtype and y.shape == (rows, out_features)
        error = (y.double() - (x[:rows].double() @ w.T + bias.double())).abs()
        assert (error <= _int8_kernel_bound(x[:rows], w, group_size, dtype)).all(), rows
        assert torch.equal(y[-1:], cpu_kernels.gemv_int8(x[rows - 1:rows], q, scale, bias)), rows


@avx512
def test_avx512_kernels_reject_bad_input():
    w = torch.randn(8, 16)
    with pytest.raises(RuntimeError, match="at most 8 rows"):
        cpu_kernels.gemv(torch.randn(9, 16), w)
    with pytest.raises(RuntimeError, match="one dtype"):
        cpu_kernels.gemv(torch.randn(1, 16).bfloat16(), w)
    with pytest.raises(RuntimeError, match=r"x \[M, K\], w \[N, K\]"):
        cpu_kernels.gemv(torch.randn(1, 15), w)
    q = torch.zeros(8, 96, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="groups of a multiple of 32"):  # groups of 48: vectors would straddle two
        cpu_kernels.gemv_int8(torch.randn(1, 96), q, torch.ones(8, 2))


def _int8_kernels():
    return ["fused"] + (["avx512"] if cpu_kernels.available() else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 8, 9])  # 9: above gemv_max_rows, the dequantised BLAS path
def test_int8_kernels_equal_the_dequantised_product(dtype, rows):
    torch.manual_seed(1)
    linear = torch.nn.Linear(300, 70).to(dtype)
    x = torch.randn(rows, 1, 300, dtype=dtype)
    for kernel in _int8_kernels():
        layer = Int8Linear(linear.weight, linear.bias, gemv_max_rows=8, kernel=kernel)
        ref = F.linear(x.double(), layer.dequantize(torch.float64), linear.bias.double())
        y = layer(x)
        assert y.dtype == dtype and y.shape == (rows, 1, 70)
        assert _rel(y, ref) < (6e-5 if dtype == torch.float32 else BF16_OUTPUT), kernel
        assert _rel(y, linear(x)) < 0.01, kernel  # and the quantisation itself costs little


def test_unknown_int8_kernel():
    with pytest.raises(ValueError, match="unknown int8 kernel 'vnni'"):
        Int8Linear(torch.randn(4, 8), None, kernel="vnni")


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_linear_paths_equal_linear(dtype):
    """Every row count, either side of gemv_max_rows (the kernel below, BLAS above), leading dims kept."""
    torch.manual_seed(2)
    linear = torch.nn.Linear(64, 32).to(dtype)
    layer = DecodeLinear(linear.weight, linear.bias)
    assert layer.gemv_max_rows == KERNEL_MAX_ROWS[layer.kernel]
    assert layer.kernel == ("avx512" if cpu_kernels.available() else "fused")
    for rows in (1, 2, 8, 9):
        x = torch.randn(rows, 1, 64, dtype=dtype)
        y = layer(x)
        assert y.shape == (rows, 1, 32)
        assert _rel(y, linear(x)) < (1e-6 if dtype == torch.float32 else BF16_OUTPUT)


@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_aten_layout_equals_the_portable_one(dtype):
    """96 outputs go to ATen's packed int4 kernel, 90 (not a multiple of 16) to the portable layout: the same
    quantised weights either way (rows are quantised independently), and each forward equals its product."""
    torch.manual_seed(3)
    weight, bias = torch.randn(96, 256).to(dtype), torch.randn(96).to(dtype)
    aten, portable = Int4Linear(weight, bias), Int4Linear(weight[:90], bias[:90])
    assert aten.aten and not portable.aten
    torch.testing.assert_close(aten.dequantize(torch.float32)[:90], portable.dequantize(torch.float32))
    assert _rel(aten.dequantize(torch.float32), weight) < 0.15  # int4's own error
    for rows in (1, 4):
        x = torch.randn(256, rows, dtype=dtype).T  # not contiguous, as a view inside the model can be
        for layer in (aten, portable):
            ref = F.linear(x.double(), layer.dequantize(torch.float32).double(), layer.bias.double())
            assert _rel(layer(x), ref) < (1e-6 if dtype == torch.float32 else BF16_OUTPUT)


def _asymmetric(bits: int, out_features: int, in_features: int, group_size: int) -> QuantizedWeight:
    """Random integers, positive scales and zero points, as an asymmetric checkpoint stores them."""
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1)
    q = torch.randint(low, high, (out_features, in_features), dtype=torch.int8)
    groups = in_features // group_size
    return QuantizedWeight(q, torch.rand(out_features, groups) / 50 + 1e-3, bits,
                           torch.randint(low, high, (out_features, groups), dtype=torch.int8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("group_size", [128, 384])  # 384: one group per row (the channel strategy)
def test_grouped_int8_equals_the_dequantised_product(dtype, zero_point, group_size):
    """Scales per group of inputs and zero points (compressed-tensors' layout): the decode paths for a few rows (the
    AVX-512 kernel, symmetric only, chosen by default where it runs; the fused per-group pass) and the dequantised
    BLAS product (more rows) all equal x times (q - zero_point) * scale."""
    torch.manual_seed(4)
    weight = _asymmetric(8, 48, 384, group_size)
    if not zero_point:
        weight.zero_point = None
    bias = torch.randn(48).to(dtype)
    kernels = ["fused"] if zero_point else _int8_kernels()
    assert Int8Linear(weight, bias).kernel == kernels[-1]
    if zero_point:
        with pytest.raises(ValueError, match="symmetric scales"):
            Int8Linear(weight, bias, kernel="avx512")
    for kernel in kernels:
        layer = Int8Linear(weight, bias, gemv_max_rows=8, kernel=kernel)
        fp32_tolerance = 6e-5 if kernel == "avx512" else 1e-6  # its inputs in 16-bit fixed point
        for rows in (1, 3, 9):
            x = torch.randn(rows, 384, dtype=dtype)
            ref = F.linear(x.double(), weight.dequantize(torch.float64), bias.double())
            y = layer(x)
            assert y.dtype == dtype
            assert _rel(y, ref) < (fp32_tolerance if dtype == torch.float32 else BF16_OUTPUT), (kernel, rows)


@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("group_size", [128, 384])  # 384: one group per row, split into ATen's groups of 128
def test_int4_from_stored_integers_in_both_layouts(zero_point, group_size):
    """A stored int4 weight (any group size, zero points or not) in ATen's layout and the portable one: both give
    back the same integers and scales, and each product equals x times (q - zero_point) * scale."""
    torch.manual_seed(5)
    weight = _asymmetric(4, 96, 384, group_size)
    if not zero_point:
        weight.zero_point = None
    aten = Int4Linear(weight, None)
    portable_weight = QuantizedWeight(weight.q[:90], weight.scale[:90], 4,
                                      None if weight.zero_point is None else weight.zero_point[:90])
    portable = Int4Linear(portable_weight, None)  # 90 outputs: not a multiple of 16, the portable layout
    assert aten.aten and not portable.aten
    for layer, expected in ((aten, weight), (portable, portable_weight)):
        back = layer.quantized_weight()
        assert torch.equal(back.q, expected.q) and torch.equal(back.scale, expected.scale)
        assert (back.zero_point is None) == (expected.zero_point is None)
        if expected.zero_point is not None:
            assert torch.equal(back.zero_point, expected.zero_point)
        x = torch.randn(3, 384)
        ref = F.linear(x.double(), expected.dequantize(torch.float64))
        assert _rel(layer(x), ref) < 1e-6


def test_quantize_weight_rounds_as_llm_compressor():
    """Scale = max|w| / 7.5 (int4) in the weight's dtype; integers in [-8, 7]; the group's largest weight maps to
    the end of the range."""
    torch.manual_seed(6)
    w = torch.randn(4, 256).bfloat16()
    quantized = quantize_weight(w, 4, 128)
    assert quantized.scale.dtype == torch.bfloat16 and quantized.scale.shape == (4, 2)
    assert quantized.q.min() >= -8 and quantized.q.max() <= 7
    expected = (w.float().view(4, 2, 128).abs().amax(-1) / 7.5).bfloat16()
    assert torch.equal(quantized.scale, expected)
    assert _rel(quantized.dequantize(torch.float32), w.float()) < 0.15


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("quant")
    make_hf_model("mha-tied").save_pretrained(directory)
    return directory


def test_compiled_int8_decode_gives_the_eager_tokens(checkpoint):
    """The compiled step (the int8 kernel inside the graph, the tied head quantised too) decodes exactly what the
    eager quantised model decodes, batch of 2."""
    inputs, _ = make_batch(128, seconds=(0.8, 6.0))
    config = GenerationConfig(max_new_tokens=10)
    eager = Generator(quantize(load(checkpoint), "int8"), compile=False).generate(inputs, config)
    model = quantize(load(checkpoint), "int8")
    assert isinstance(model.decoder.lm_head, Int8Linear)
    compiled = Generator(model, compile=None)  # default: a quantised CPU model compiles
    assert compiled.compile
    assert torch.equal(compiled.generate(inputs, config), eager)


@avx512
def test_bf16_decode_kernels_give_the_blas_tokens(checkpoint):
    """bf16 through the AVX-512 kernels (eager: they need no compile) decodes what oneDNN's bf16 matmuls decode,
    batch of 2 (both rows in one kernel call)."""
    inputs, _ = make_batch(128, seconds=(1.5, 9.0))
    inputs["input_features"] = inputs["input_features"].bfloat16()
    config = GenerationConfig(max_new_tokens=8)
    blas = Generator(load(checkpoint, dtype=torch.bfloat16), compile=False).generate(inputs, config)
    model = use_decode_kernels(load(checkpoint, dtype=torch.bfloat16))
    assert model.decoder.layers[0].mlp.up_proj.kernel == "avx512"
    assert torch.equal(Generator(model, compile=False).generate(inputs, config), blas)
