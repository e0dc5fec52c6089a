// Grouped float32 matmuls over stacked experts for XLA CPU: C[e] = A[e] @ B[e], A[e]^T @ B[e] or A[e] @ B[e]^T.
//
// Why: a Switch layer with many experts runs one small matmul per expert (128 rows at 128 experts and 16,384
// tokens). On XLA CPU's dot such calls cost about a third more per FLOP than 2,048-row calls (each call
// prepares its whole [d_model, d_ff] kernel operand for few rows), and the loop around them copies each
// expert's kernel out of the stacked parameter. These kernels read B in place, row by row (a broadcast-A
// micro-kernel: 6 rows x 64 columns of C in 24 AVX-512 registers), so a 128-row call costs nearly what a
// 2,048-row call does per FLOP (one Zen 5 core: 191-199 against 205-233 GFLOP/s). Only the transposed-B case
// copies B, one [k-block, 64] panel at a time through 16x16 register transposes.
//
// Work is split into (expert, 64-column panel) items that the calling thread and XLA's intra-op thread pool
// take from a shared counter, so a late pool thread costs nothing. Each C element is summed in k order in one
// register (k-blocks of KC added in order), so results do not depend on the thread count.
//
// AVX-512F only: SwitchreproExpertGemmSupported() says whether this CPU has it; without it Python falls back
// to XLA's dot (switchrepro/backends/cpu/native/expert_gemm.py). On other architectures the file still compiles (the
// library's other handler is needed there), with handlers that only return an error.
#ifndef SWITCHREPRO_X86  // -DSWITCHREPRO_X86=0 builds the error-only handlers (a compile check elsewhere)
#if defined(__x86_64__)
#define SWITCHREPRO_X86 1
#else
#define SWITCHREPRO_X86 0
#endif
#endif
#if SWITCHREPRO_X86
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kNR = 64;  // columns of C per micro-tile: 4 AVX-512 vectors

enum class Kind { kNN, kTN, kNT };

struct Problem {
  Kind kind;
  int64_t E, M, N, K;
  const float* A;
  const float* B;
  float* C;
};

#if SWITCHREPRO_X86
constexpr int kMR = 6;    // rows of C per micro-tile: 6 x 4 accumulators + 4 B vectors + 1 broadcast <= 32
constexpr int kKC = 512;  // k-block: a [KC, 64] panel of B (128 KiB) stays in L2 across all rows of A

#define AVX512 __attribute__((target("avx512f")))

// C[0:MR, 0:64] (+)= sum_k A(r, k) B[k, 0:64], with A(r, k) = A[r * ars + k * aks] and B's rows ldb apart.
template <int MR>
AVX512 inline void MicroTile(int64_t K, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb,
                             float* C, int64_t ldc, bool accumulate) {
  __m512 c[MR][4];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) c[r][v] = accumulate ? _mm512_loadu_ps(C + r * ldc + 16 * v) : _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32),
                 b3 = _mm512_loadu_ps(b + 48);
    const float* a = A + k * aks;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r * ars]);
      c[r][0] = _mm512_fmadd_ps(ar, b0, c[r][0]);
      c[r][1] = _mm512_fmadd_ps(ar, b1, c[r][1]);
      c[r][2] = _mm512_fmadd_ps(ar, b2, c[r][2]);
      c[r][3] = _mm512_fmadd_ps(ar, b3, c[r][3]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(C + r * ldc + 16 * v, c[r][v]);
}

// One 64-column panel of C, all M rows, one k-block.
AVX512 void Panel(int64_t M, int64_t K, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb,
                  float* C, int64_t ldc, bool accumulate) {
  int64_t i = 0;
  for (; i + kMR <= M; i += kMR) MicroTile<kMR>(K, A + i * ars, ars, aks, B, ldb, C + i * ldc, ldc, accumulate);
  const float* a = A + i * ars;
  float* c = C + i * ldc;
  switch (M - i) {
    case 5: MicroTile<5>(K, a, ars, aks, B, ldb, c, ldc, accumulate); break;
    case 4: MicroTile<4>(K, a, ars, aks, B, ldb, c, ldc, accumulate); break;
    case 3: MicroTile<3>(K, a, ars, aks, B, ldb, c, ldc, accumulate); break;
    case 2: MicroTile<2>(K, a, ars, aks, B, ldb, c, ldc, accumulate); break;
    case 1: MicroTile<1>(K, a, ars, aks, B, ldb, c, ldc, accumulate); break;
    default: break;
  }
}

// In-register transpose of a 16x16 block: r[i] holds row i on entry and column i on return.
AVX512 inline void Transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
    r[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
    r[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xdd);
  }
}

// panel[k, 0:64] = B[0:64, k0 + k] for k < kc; B's rows are ldb apart; kc a multiple of 16.
AVX512 void PackTransposed(const float* B, int64_t ldb, int64_t k0, int64_t kc, float* panel) {
  for (int jj = 0; jj < kNR; jj += 16)
    for (int64_t k = 0; k < kc; k += 16) {
      __m512 r[16];
      for (int t = 0; t < 16; ++t) r[t] = _mm512_loadu_ps(B + (jj + t) * ldb + k0 + k);
      Transpose16(r);
      for (int t = 0; t < 16; ++t) _mm512_store_ps(panel + (k + t) * kNR + jj, r[t]);
    }
}

// Item = (expert, 64-column panel of C).
AVX512 void RunItem(const Problem& p, int64_t item, float* panel) {
  const int64_t panels = p.N / kNR, e = item / panels, j = (item % panels) * kNR;
  const float* A = p.A + e * p.M * p.K;
  const float* B = p.B + e * p.K * p.N;
  float* C = p.C + e * p.M * p.N + j;
  for (int64_t k0 = 0; k0 < p.K; k0 += kKC) {
    const int64_t kc = std::min<int64_t>(kKC, p.K - k0);
    switch (p.kind) {
      case Kind::kNN:  // A [M, K], B [K, N]
        Panel(p.M, kc, A + k0, p.K, 1, B + k0 * p.N + j, p.N, C, p.N, k0 > 0);
        break;
      case Kind::kTN:  // A [K, M], B [K, N]
        Panel(p.M, kc, A + k0 * p.M, 1, p.M, B + k0 * p.N + j, p.N, C, p.N, k0 > 0);
        break;
      case Kind::kNT:  // A [M, K], B [N, K]
        PackTransposed(B + j * p.K, p.K, k0, kc, panel);
        Panel(p.M, kc, A + k0, p.K, 1, panel, kNR, C, p.N, k0 > 0);
        break;
    }
  }
}

struct Work {
  explicit Work(const Problem& p) : problem(p), items(p.E * (p.N / kNR)) {}
  const Problem problem;
  const int64_t items;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Drain() {
    std::vector<float> storage;
    float* panel = nullptr;
    for (int64_t item; (item = next.fetch_add(1, std::memory_order_relaxed)) < items;) {
      if (problem.kind == Kind::kNT && panel == nullptr) {  // 64-byte aligned [KC, 64] panel
        storage.resize(kKC * kNR + 16);
        panel = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t{63});
      }
      RunItem(problem, item, panel);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};
#endif  // SWITCHREPRO_X86

ffi::Error Run(Kind kind, ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
               ffi::ResultBuffer<ffi::F32> c) {
  const auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (ad.size() != 3 || bd.size() != 3 || cd.size() != 3)
    return ffi::Error::InvalidArgument("expert_gemm: operands must be [experts, rows, cols]");
  Problem p{kind, cd[0], cd[1], cd[2], 0, a.typed_data(), b.typed_data(), c->typed_data()};
  p.K = kind == Kind::kTN ? ad[1] : ad[2];
  const int64_t a_m = kind == Kind::kTN ? ad[2] : ad[1];
  const int64_t b_k = kind == Kind::kNT ? bd[2] : bd[1], b_n = kind == Kind::kNT ? bd[1] : bd[2];
  if (ad[0] != p.E || bd[0] != p.E || a_m != p.M || b_k != p.K || b_n != p.N)
    return ffi::Error::InvalidArgument("expert_gemm: operand shapes do not match the output");
  if (p.N % kNR != 0 || (kind == Kind::kNT && p.K % 16 != 0))
    return ffi::Error::InvalidArgument("expert_gemm: output columns must be a multiple of 64 (and K of 16 for nt)");
  if (p.E == 0 || p.M == 0 || p.N == 0) return ffi::Error::Success();
  if (p.K == 0) {
    std::fill(p.C, p.C + p.E * p.M * p.N, 0.0f);
    return ffi::Error::Success();
  }
#if !SWITCHREPRO_X86
  return ffi::Error(ffi::ErrorCode::kUnimplemented, "expert_gemm: built without the x86-64 kernels");
#else
  auto work = std::make_shared<Work>(p);
  static const int64_t max_helpers = [] {  // SWITCHREPRO_EXPERT_GEMM_THREADS=n: at most n threads per call
    const char* env = std::getenv("SWITCHREPRO_EXPERT_GEMM_THREADS");
    return env && std::atoi(env) > 0 ? int64_t{std::atoi(env)} - 1 : std::numeric_limits<int64_t>::max();
  }();
  const int64_t helpers = std::min({pool.num_threads(), work->items - 1, max_helpers});
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  // Wait for items other threads still hold. Yield after a short spin: with more threads than cores (2 cores,
  // the caller and XLA's pool), a pure spin can keep the thread that holds the last item off its core.
  for (int spins = 0; work->done.load(std::memory_order_acquire) < work->items; ++spins) {
    if (spins < 1000) {
      _mm_pause();
    } else {
      std::this_thread::yield();
    }
  }
  return ffi::Error::Success();
#endif
}

ffi::Error Nn(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c) {
  return Run(Kind::kNN, pool, a, b, c);
}
ffi::Error Tn(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c) {
  return Run(Kind::kTN, pool, a, b, c);
}
ffi::Error Nt(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c) {
  return Run(Kind::kNT, pool, a, b, c);
}

}  // namespace

extern "C" int SwitchreproExpertGemmSupported() {
#if SWITCHREPRO_X86
  return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
  return 0;
#endif
}

#define BINDING \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
XLA_FFI_DEFINE_HANDLER_SYMBOL(SwitchreproExpertGemmNN, Nn, BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SwitchreproExpertGemmTN, Tn, BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SwitchreproExpertGemmNT, Nt, BINDING);
