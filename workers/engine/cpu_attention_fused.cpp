// Fused decode attention over the paged KV cache for fp32 or bf16 CPU tensors: the contract
// of ponder.kernels.shared_prefix_attention (see cpu_attention.py), one pass per (row, kv
// head) over the row's prefix blocks then its suffix blocks, with an online softmax and fp32
// accumulation (bf16 keys and values are widened as they are read, the output rounded to
// bf16 once at the end). Built at first use by workers/engine/cpu_fused.py (torch.utils.cpp_extension)
// and called through ctypes with raw pointers: the only torch header is ATen/Parallel.h
// (torch/library.h or torch/extension.h would add ~8-20 s to every cold compile).

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// The hot loop is compiled three times, for AVX-512 (x86-64-v4), AVX2+FMA (x86-64-v3) and the
// baseline, and the loader picks one per CPU (GCC's target_clones): the cached library stays
// valid on any x86 machine that shares the cache, unlike -march=native. The AVX-512 clone
// measured 60 ms against 70 ms for SmolLM2's bf16 attention of one decode step at 64 rows.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PONDER_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#else
#define PONDER_CLONES
#endif

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 0 (scores minus their running max) in plain arithmetic, so the compiler
// vectorises the loop over a block's slots (std::exp stays a scalar libm call without
// -ffast-math): x = n ln2 + r, |r| <= ln2/2, exp(r) by its degree-6 Taylor polynomial
// (relative error < 2e-7, about 1 ulp), 2^n built in the exponent bits. Below -87.3 (where
// 2^n would be subnormal) the result is 0 (expf gives < 1.2e-38 there).
inline float exp_nonpos(float x) {
  x = std::max(x, -87.3f);
  // round to nearest by adding and removing 1.5 * 2^23 (std::nearbyint blocks vectorisation)
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 split in two: exact n * hi
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// bf16 as stored: the top 16 bits of an fp32. Widening is exact (a shift); narrowing rounds
// to nearest even, NaN kept NaN.
struct bf16 {
  uint16_t bits;
};

inline float widen(float x) { return x; }
inline float widen(bf16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <typename T>
inline T narrow(float x);
template <>
inline float narrow<float>(float x) {
  return x;
}
template <>
inline bf16 narrow<bf16>(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

template <typename T>
struct Args {
  T* out;
  const T* q;
  const T* k;
  const T* v;
  int64_t Hq, D, BS, Hkv, G;
  const int32_t* suffix_tables;
  int64_t nbs;
  const int32_t* suffix_lens;
  const int32_t* prefix_tables;
  int64_t Gp, nbp;
  const int32_t* prefix_lens;
  const int32_t* seq_group;
  float scale;
};

// One row s, query heads [h0, h1) (whole kv-head groups): every block of the row's prefix,
// then of its suffix, read once; per block, the scores of all its valid slots for these
// heads (keys read slot by slot, contiguously across heads), then one rescale of each head's
// running output by its new max, then the probability-weighted values.
// buf: (h1 - h0) * (2 * D + 2 + BS) floats of scratch.
template <int DT, typename T>
inline void row_heads(const Args<T>& a, int64_t s, int64_t h0, int64_t h1, float* buf) {
  const int64_t D = DT > 0 ? DT : a.D;
  const int64_t nh = h1 - h0, G = a.G, BS = a.BS;
  const int64_t stride = a.Hkv * D;  // between slots of a block
  const int64_t kv0 = h0 / G, nkv = nh / G;  // h0 and h1 are multiples of G
  float* qs = buf;                   // (nh, D) scaled queries
  float* acc = qs + nh * D;          // (nh, D)
  float* m = acc + nh * D;           // (nh,)
  float* l = m + nh;                 // (nh,)
  float* sc = l + nh;                // (nh, BS)
  const T* qrow = a.q + (s * a.Hq + h0) * D;
  for (int64_t j = 0; j < nh * D; ++j) qs[j] = widen(qrow[j]) * a.scale;
  std::fill(acc, acc + nh * D, 0.f);
  std::fill(m, m + nh, kNegInf);
  std::fill(l, l + nh, 0.f);

  auto block = [&](int64_t b, int64_t n) {
    const T* kb = a.k + b * BS * stride;
    const T* vb = a.v + b * BS * stride;
    for (int64_t t = 0; t < n; ++t) {
      const T* kt = kb + t * stride;
      for (int64_t hk = 0; hk < nkv; ++hk) {  // query heads hk*G .. hk*G+G-1 read kv head kv0 + hk
        const T* kh = kt + (kv0 + hk) * D;
        for (int64_t i = hk * G; i < (hk + 1) * G; ++i) {
          const float* qh = qs + i * D;
          float d0 = 0.f;
#pragma omp simd reduction(+ : d0)
          for (int64_t d = 0; d < D; ++d) d0 += qh[d] * widen(kh[d]);
          sc[i * BS + t] = d0;
        }
      }
    }
    for (int64_t i = 0; i < nh; ++i) {
      float* si = sc + i * BS;
      float bm = kNegInf;
      for (int64_t t = 0; t < n; ++t) bm = std::max(bm, si[t]);
      if (bm > m[i]) {
        const float c = std::exp(m[i] - bm);  // 0 on the first block (m = -inf)
        l[i] *= c;
        float* ai = acc + i * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) ai[d] *= c;
        m[i] = bm;
      }
      const float mi = m[i];
      float li = 0.f;
#pragma omp simd reduction(+ : li)
      for (int64_t t = 0; t < n; ++t) {
        si[t] = exp_nonpos(si[t] - mi);
        li += si[t];
      }
      l[i] += li;
    }
    for (int64_t t = 0; t < n; ++t) {
      const T* vt = vb + t * stride;
      for (int64_t hk = 0; hk < nkv; ++hk) {
        const T* vh = vt + (kv0 + hk) * D;
        for (int64_t i = hk * G; i < (hk + 1) * G; ++i) {
          const float p = sc[i * BS + t];
          float* ai = acc + i * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) ai[d] += p * widen(vh[d]);
        }
      }
    }
  };
  auto run = [&](const int32_t* table, int64_t len) {
    for (int64_t j = 0; j * BS < len; ++j) block(table[j], std::min(BS, len - j * BS));
  };
  if (a.Gp > 0) {
    const int64_t g = a.seq_group[s];
    run(a.prefix_tables + g * a.nbp, a.prefix_lens[g]);
  }
  run(a.suffix_tables + s * a.nbs, a.suffix_lens[s]);
  T* o = a.out + (s * a.Hq + h0) * D;
  for (int64_t i = 0; i < nh; ++i) {
    const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;  // a row with no slot at all: zeros
    for (int64_t d = 0; d < D; ++d) o[i * D + d] = narrow<T>(acc[i * D + d] * inv);
  }
}

template <typename T>
inline void run_tasks_impl(const Args<T>& a, int64_t begin, int64_t end, int64_t chunks, float* buf) {
  const int64_t per = a.Hq / chunks;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t s = i / chunks, h0 = (i % chunks) * per;
    switch (a.D) {
      case 32: row_heads<32>(a, s, h0, h0 + per, buf); break;
      case 64: row_heads<64>(a, s, h0, h0 + per, buf); break;
      case 128: row_heads<128>(a, s, h0, h0 + per, buf); break;
      default: row_heads<0>(a, s, h0, h0 + per, buf);
    }
  }
}

// target_clones needs plain (non-template) functions: one per storage type.
PONDER_CLONES void run_tasks(const Args<float>& a, int64_t begin, int64_t end, int64_t chunks, float* buf) {
  run_tasks_impl(a, begin, end, chunks, buf);
}
PONDER_CLONES void run_tasks(const Args<bf16>& a, int64_t begin, int64_t end, int64_t chunks, float* buf) {
  run_tasks_impl(a, begin, end, chunks, buf);
}

template <typename T>
int decode_attention(T* out, const T* q, const T* k, const T* v, int64_t S, int64_t Hq, int64_t D, int64_t NB,
                     int64_t BS, int64_t Hkv, const int32_t* suffix_tables, int64_t nbs,
                     const int32_t* suffix_lens, const int32_t* prefix_tables, int64_t Gp, int64_t nbp,
                     const int32_t* prefix_lens, const int32_t* seq_group, float scale) {
  if (Hkv <= 0 || Hq % Hkv != 0 || D <= 0 || BS <= 0) return 4;
  // Validate every index first (serially: microseconds), so the parallel pass cannot fail.
  auto check = [&](const int32_t* table, int64_t width, int64_t len) -> int {
    if (len < 0 || len > width * BS) return 1;
    for (int64_t j = 0; j * BS < len; ++j)
      if (table[j] < 0 || table[j] >= NB) return 2;
    return 0;
  };
  for (int64_t s = 0; s < S; ++s) {
    if (int e = check(suffix_tables + s * nbs, nbs, suffix_lens[s])) return e;
    if (Gp > 0) {
      const int64_t g = seq_group[s];
      if (g < 0 || g >= Gp) return 3;
      if (int e = check(prefix_tables + g * nbp, nbp, prefix_lens[g])) return e;
    }
  }
  const Args<T> a{out, q, k, v, Hq, D, BS, Hkv, Hq / Hkv, suffix_tables, nbs, suffix_lens, prefix_tables,
                  Gp, nbp, prefix_lens, seq_group, scale};
  // Tasks: (row, kv head) pairs when there are few rows for the threads, whole rows otherwise
  // (a row's heads then read each slot's keys and values as one contiguous run).
  const int64_t chunks = S >= 4 * at::get_num_threads() ? 1 : Hkv;
  at::parallel_for(0, S * chunks, 1, [&](int64_t begin, int64_t end) {
    const int64_t nh = Hq / chunks;
    std::vector<float> buf(nh * (2 * D + 2 + BS));
    run_tasks(a, begin, end, chunks, buf.data());
  });
  return 0;
}

}  // namespace

// out, q: (S, Hq, D); k, v: (NB, BS, Hkv, D), all of one dtype (fp32, or bf16 for the _bf16
// entry point) and contiguous. suffix_tables (S, nbs), suffix_lens (S,); prefix_tables (Gp,
// nbp), prefix_lens (Gp,), seq_group (S,), or Gp == 0 (no prefix: the three pointers are not
// read). Index arrays are int32. Returns 0, or a positive code naming the first bad index
// (nothing is written then): 1 a length past its block table, 2 a block id out of range, 3 a
// seq_group out of range, 4 H_q not a multiple of H_kv.
#define PONDER_ENTRY(NAME, T)                                                                              \
  extern "C" int NAME(T* out, const T* q, const T* k, const T* v, int64_t S, int64_t Hq, int64_t D,       \
                      int64_t NB, int64_t BS, int64_t Hkv, const int32_t* suffix_tables, int64_t nbs,      \
                      const int32_t* suffix_lens, const int32_t* prefix_tables, int64_t Gp, int64_t nbp,   \
                      const int32_t* prefix_lens, const int32_t* seq_group, float scale) {                 \
    return decode_attention<T>(out, q, k, v, S, Hq, D, NB, BS, Hkv, suffix_tables, nbs, suffix_lens,       \
                               prefix_tables, Gp, nbp, prefix_lens, seq_group, scale);                      \
  }
PONDER_ENTRY(ponder_decode_attention, float)
PONDER_ENTRY(ponder_decode_attention_bf16, bf16)
