// Decode kernels for x86 CPUs with AVX-512 (BF16 and VNNI): y = x @ W.T (+ bias) for a few rows of x, streaming W
// once at the machine's read bandwidth. Built at first use by qwen2audio/cpu_kernels.py (torch.utils.cpp_extension),
// registered as torch ops so that a compiled decode step calls them directly.
//
// Why not BLAS or inductor: a decode step multiplies one row (or a batch of a few) by every weight, so it is bound by
// memory bandwidth only if the kernel keeps enough loads in flight and spends few instructions per byte. Measured on
// a 2-core Sapphire-Rapids-class Xeon: oneDNN's bf16 product of one row reads ~14 GB/s (18.5 with prepacked weights),
// inductor's fused (x * W).sum(-1) ~13, ATen's int8 kernel 3 (fp32 x) to 12 (bf16 x); the machine streams ~24.
// Here: blocks of ROWS weight rows (ROWS independent streams, each prefetched PREFETCH bytes ahead), one vector
// of x shared by the block, and the fewest instructions per weight byte:
//   bf16 W: vdpbf16ps (bf16 pairs multiplied, summed in fp32), 32 weights per instruction;
//   int8 W: x in 16-bit fixed point (one scale per row of x: error <= 2^-16 of its largest element, finer than
//           bf16), vpmovsxbw + vpdpwssd (int16 x int8 dot products summed in int32), 32 weights per instruction;
//           with a scale per group of inputs (llm-compressor's W8A16, GGUF q8_0) or per row, each group's int32 sum
//           times its scale added in fp32 (one vcvtdq2ps + vfmadd per group: cheap for groups of >= 32);
//   fp32 W: vfmadd231ps, 16 weights per instruction.
// All rows of x (up to MAX_ROWS) are multiplied in the same pass, so a batch costs about one read of W.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

#ifndef Q2A_ROWS
#define Q2A_ROWS 4
#endif
#ifndef Q2A_PREFETCH_BYTES
#define Q2A_PREFETCH_BYTES 16384  // best of 4-64 KiB on the 2-core Xeon (against 4 KiB: int8 22 -> 30 GB/s, bf16 24 -> 27)
#endif
constexpr int64_t ROWS = Q2A_ROWS;  // weight rows per block (half as many for more than 4 rows of x)
constexpr int64_t MAX_ROWS = 8;     // rows of x per call
constexpr int64_t PREFETCH = Q2A_PREFETCH_BYTES;  // bytes ahead in each weight row
constexpr int64_t FLUSH = 2048;     // int8: inputs summed in int32 before adding to fp32 (2048/16 * 32767 * 127 < 2^31)

// a macro: gcc 12 drops the prefetch when this is an inline function taking const void*
#define Q2A_PREFETCH(p) _mm_prefetch(reinterpret_cast<const char*>(p) + PREFETCH, _MM_HINT_T0)

// ---- bf16 weights, bf16 x ----
template <int NX, int NW>
struct Bf16 {
static void run(const uint16_t* x, int64_t K, const uint16_t* w, float* out, int64_t ldo) {
  __m512 acc[NX][NW];
  for (int i = 0; i < NX; ++i)
    for (int r = 0; r < NW; ++r) acc[i][r] = _mm512_setzero_ps();
  const auto step = [&](int64_t k, __mmask32 m, bool full) __attribute__((always_inline)) {
    __m512bh xv[NX];
    for (int i = 0; i < NX; ++i)
      xv[i] = (__m512bh)(full ? _mm512_loadu_si512(x + i * K + k) : _mm512_maskz_loadu_epi16(m, x + i * K + k));
    for (int r = 0; r < NW; ++r) {
      const uint16_t* p = w + r * K + k;
      Q2A_PREFETCH(p);
      const __m512bh wv = (__m512bh)(full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(m, p));
      for (int i = 0; i < NX; ++i) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], xv[i], wv);
    }
  };
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) step(k, 0, true);
  if (k < K) step(k, __mmask32((1u << (K - k)) - 1), false);
  for (int i = 0; i < NX; ++i)
    for (int r = 0; r < NW; ++r) out[i * ldo + r] = _mm512_reduce_add_ps(acc[i][r]);
}
};

// ---- fp32 weights, fp32 x ----
template <int NX, int NW>
struct F32 {
static void run(const float* x, int64_t K, const float* w, float* out, int64_t ldo) {
  __m512 acc[NX][NW];
  for (int i = 0; i < NX; ++i)
    for (int r = 0; r < NW; ++r) acc[i][r] = _mm512_setzero_ps();
  const auto step = [&](int64_t k, __mmask16 m, bool full) __attribute__((always_inline)) {
    __m512 xv[NX];
    for (int i = 0; i < NX; ++i)
      xv[i] = full ? _mm512_loadu_ps(x + i * K + k) : _mm512_maskz_loadu_ps(m, x + i * K + k);
    for (int r = 0; r < NW; ++r) {
      const float* p = w + r * K + k;
      Q2A_PREFETCH(p);
      const __m512 wv = full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
      for (int i = 0; i < NX; ++i) acc[i][r] = _mm512_fmadd_ps(xv[i], wv, acc[i][r]);
    }
  };
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) step(k, 0, true);
  if (k < K) step(k, __mmask16((1u << (K - k)) - 1), false);
  for (int i = 0; i < NX; ++i)
    for (int r = 0; r < NW; ++r) out[i * ldo + r] = _mm512_reduce_add_ps(acc[i][r]);
}
};

// ---- int8 weights with a scale per group of G inputs, x in int16 fixed point; out = sum over groups of the
// group's integer dot product times its scale (the caller applies x's scale). G is a multiple of 32 dividing K, or K
// itself (one scale per row: any K). Each group's products are exact in int32 (flushed every FLUSH inputs), then
// converted to fp32 and multiplied by the group's scale into an fp32 sum. ----
struct Groups {
  const float* scale;  // [rows, count], from the first weight row of the block
  int64_t size;        // inputs per group
  int64_t count;       // groups per row: K / size
};

// the same groups from weight row n on (product_of calls each block with its own rows)
inline Groups offset(const Groups& g, int64_t n) { return {g.scale + n * g.count, g.size, g.count}; }

template <int NX, int NW>
struct Int8 {
static void run(const int16_t* x, int64_t K, const int8_t* w, float* out, int64_t ldo, Groups groups) {
  __m512 acc[NX][NW];
  for (int i = 0; i < NX; ++i)
    for (int r = 0; r < NW; ++r) acc[i][r] = _mm512_setzero_ps();
  const auto step = [&](__m512i (&iacc)[NX][NW], int64_t k, __mmask32 m, bool full) __attribute__((always_inline)) {
    __m512i xv[NX];
    for (int i = 0; i < NX; ++i)
      xv[i] = full ? _mm512_loadu_si512(x + i * K + k) : _mm512_maskz_loadu_epi16(m, x + i * K + k);
    for (int r = 0; r < NW; ++r) {
      const int8_t* p = w + r * K + k;
      const __m256i q = full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi8(m, p);
      const __m512i wv = _mm512_cvtepi8_epi16(q);
      for (int i = 0; i < NX; ++i) iacc[i][r] = _mm512_dpwssd_epi32(iacc[i][r], xv[i], wv);
    }
  };
  for (int64_t g = 0; g < groups.count; ++g) {
    const int64_t group_end = (g + 1) * groups.size;
    for (int64_t k0 = g * groups.size; k0 < group_end; k0 += FLUSH) {
      const int64_t end = std::min(group_end, k0 + FLUSH);
      __m512i iacc[NX][NW];
      for (int i = 0; i < NX; ++i)
        for (int r = 0; r < NW; ++r) iacc[i][r] = _mm512_setzero_si512();
      int64_t k = k0;
      for (; k + 64 <= end; k += 64) {  // a cache line of each row per iteration: one prefetch each
        for (int r = 0; r < NW; ++r) Q2A_PREFETCH(w + r * K + k);
        step(iacc, k, 0, true);
        step(iacc, k + 32, 0, true);
      }
      for (; k + 32 <= end; k += 32) {  // groups of 32 (or a row's last 32): a prefetch every other step
        if ((k & 63) == 0)
          for (int r = 0; r < NW; ++r) Q2A_PREFETCH(w + r * K + k);
        step(iacc, k, 0, true);
      }
      if (k < end) step(iacc, k, __mmask32((1u << (end - k)) - 1), false);
      for (int r = 0; r < NW; ++r) {
        const __m512 s = _mm512_set1_ps(groups.scale[r * groups.count + g]);
        for (int i = 0; i < NX; ++i) acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[i][r]), s, acc[i][r]);
      }
    }
  }
  for (int i = 0; i < NX; ++i)
    for (int r = 0; r < NW; ++r) out[i * ldo + r] = _mm512_reduce_add_ps(acc[i][r]);
}
};

// out [M, N] fp32 = x [M, K] . w [N, K]^T in one pass over w: blocks of NW weight rows against all NX = M rows of x
// (NX x NW accumulators: at most 16 of the 32 vector registers), the blocks split over the threads in contiguous runs;
// extra: per-row arguments of the block (int8's Groups), taken from the block's first row by offset()
template <template <int, int> class Block, int NX, typename XT, typename WT, typename... Extra>
void product_of(const XT* x, int64_t K, const WT* w, int64_t N, float* out, const Extra&... extra) {
  constexpr int NW = NX <= 4 ? ROWS : ROWS / 2;
  const int64_t blocks = (N + NW - 1) / NW;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b * NW;
      if (n + NW <= N) {
        Block<NX, NW>::run(x, K, w + n * K, out + n, N, offset(extra, n)...);
      } else {
        for (int64_t r = n; r < N; ++r) Block<NX, 1>::run(x, K, w + r * K, out + r, N, offset(extra, r)...);
      }
    }
  });
}

template <template <int, int> class Block, typename XT, typename WT, typename... Extra>
void product(const XT* x, int64_t M, int64_t K, const WT* w, int64_t N, float* out, const Extra&... extra) {
  switch (M) {
    case 1: return product_of<Block, 1>(x, K, w, N, out, extra...);
    case 2: return product_of<Block, 2>(x, K, w, N, out, extra...);
    case 3: return product_of<Block, 3>(x, K, w, N, out, extra...);
    case 4: return product_of<Block, 4>(x, K, w, N, out, extra...);
    case 5: return product_of<Block, 5>(x, K, w, N, out, extra...);
    case 6: return product_of<Block, 6>(x, K, w, N, out, extra...);
    case 7: return product_of<Block, 7>(x, K, w, N, out, extra...);
    case 8: return product_of<Block, 8>(x, K, w, N, out, extra...);
    default: TORCH_CHECK(false, "qwen2audio kernels take 1 to ", MAX_ROWS, " rows of x, got ", M);
  }
}

void check(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "qwen2audio kernels: x [M, K], w [N, K], got ",
              x.sizes(), " and ", w.sizes());
  TORCH_CHECK(x.size(0) <= MAX_ROWS, "qwen2audio kernels take at most ", MAX_ROWS, " rows of x, got ", x.size(0));
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "qwen2audio kernels: x and w must be contiguous");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "qwen2audio kernels run on CPU tensors");
  if (bias) TORCH_CHECK(bias->numel() == w.size(0), "qwen2audio kernels: bias of ", w.size(0), " expected");
}

// y [M, N] in x's dtype = out * row_scale[m] + bias[n] (both optional)
at::Tensor finish(const at::Tensor& out, at::ScalarType dtype, const float* row_scale,
                  const c10::optional<at::Tensor>& bias) {
  const int64_t M = out.size(0), N = out.size(1);
  at::Tensor y = at::empty({M, N}, out.options().dtype(dtype));
  const at::Tensor b = bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* o = out.data_ptr<float>();
  const float* bp = bias ? b.data_ptr<float>() : nullptr;
  float* yf = dtype == at::kFloat ? y.data_ptr<float>() : nullptr;
  c10::BFloat16* yb = dtype == at::kBFloat16 ? y.data_ptr<c10::BFloat16>() : nullptr;
  TORCH_CHECK(yf || yb, "qwen2audio kernels: float32 or bfloat16 x, got ", dtype);
  for (int64_t i = 0; i < M; ++i) {
    const float rs = row_scale ? row_scale[i] : 1.0f;
    for (int64_t n = 0; n < N; ++n) {
      float v = o[i * N + n] * rs;
      if (bp) v += bp[n];
      if (yf) {
        yf[i * N + n] = v;
      } else {
        yb[i * N + n] = c10::BFloat16(v);
      }
    }
  }
  return y;
}

at::Tensor gemv(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  check(x, w, bias);
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "qwen2audio gemv: x and w of one dtype, got ", x.scalar_type(),
              " and ", w.scalar_type());
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor out = at::empty({M, N}, x.options().dtype(at::kFloat));
  if (w.scalar_type() == at::kBFloat16) {
    auto xp = reinterpret_cast<const uint16_t*>(x.data_ptr<c10::BFloat16>());
    auto wp = reinterpret_cast<const uint16_t*>(w.data_ptr<c10::BFloat16>());
    product<Bf16>(xp, M, K, wp, N, out.data_ptr<float>());
  } else {
    TORCH_CHECK(w.scalar_type() == at::kFloat, "qwen2audio gemv: float32 or bfloat16, got ", w.scalar_type());
    product<F32>(x.data_ptr<float>(), M, K, w.data_ptr<float>(), N, out.data_ptr<float>());
  }
  return finish(out, x.scalar_type(), nullptr, bias);
}

template <typename T>
void to_fixed_point(const T* x, int64_t M, int64_t K, int16_t* xq, float* xs) {
  for (int64_t i = 0; i < M; ++i) {
    const T* row = x + i * K;
    float amax = 0.0f;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(static_cast<float>(row[k])));
    xs[i] = amax > 0.0f ? amax / 32767.0f : 1.0f;
    const float inv = 1.0f / xs[i];
    for (int64_t k = 0; k < K; ++k) {
      xq[i * K + k] = static_cast<int16_t>(std::nearbyint(static_cast<float>(row[k]) * inv));
    }
  }
}

// x [M, K] float32/bfloat16, q [N, K] int8, scale [N] or [N, K / G] (a scale per group of G inputs of a row):
// y = x @ (q * scale repeated over its group's inputs).T + bias
at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& bias) {
  check(x, q, bias);
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  const int64_t groups = scale.dim() == 2 ? scale.size(1) : 1, group = K / std::max<int64_t>(groups, 1);
  TORCH_CHECK(q.scalar_type() == at::kChar && scale.size(0) == N && scale.numel() == N * groups,
              "qwen2audio gemv_int8: q int8 [N, K], scale [N] or [N, K / G]");
  TORCH_CHECK(groups == 1 || (group * groups == K && group % 32 == 0),
              "qwen2audio gemv_int8: groups of a multiple of 32 inputs that divide K = ", K, ", got ", groups);
  // x in 16-bit fixed point, one scale per row: xq = round(x / xs), xs = max|x| / 32767
  at::Tensor xq = at::empty({M, K}, x.options().dtype(at::kShort));
  float xs[MAX_ROWS];
  if (x.scalar_type() == at::kBFloat16) {
    to_fixed_point(x.data_ptr<c10::BFloat16>(), M, K, xq.data_ptr<int16_t>(), xs);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "qwen2audio gemv_int8: float32 or bfloat16 x, got ", x.scalar_type());
    to_fixed_point(x.data_ptr<float>(), M, K, xq.data_ptr<int16_t>(), xs);
  }
  const at::Tensor s = scale.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({M, N}, x.options().dtype(at::kFloat));
  const Groups by_group{s.data_ptr<float>(), group, groups};
  product<Int8>(xq.data_ptr<int16_t>(), M, K, q.data_ptr<int8_t>(), N, out.data_ptr<float>(), by_group);
  return finish(out, x.scalar_type(), xs, bias);
}

}  // namespace

TORCH_LIBRARY(qwen2audio, m) {
  m.def("gemv(Tensor x, Tensor w, Tensor? bias=None) -> Tensor");
  m.def("gemv_int8(Tensor x, Tensor q, Tensor scale, Tensor? bias=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(qwen2audio, CPU, m) {
  m.impl("gemv", &gemv);
  m.impl("gemv_int8", &gemv_int8);
}
