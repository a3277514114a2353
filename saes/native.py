"""Optional compiled CPU kernels for the fast training step (the pure-torch path stays the default).

Two small C++ routines, built on first use with the system C++ compiler (no torch headers, so the
build takes ~1-2 s) and called through ctypes on the tensors' memory:

- `row_topk`: the k largest entries of every row of a float32 or bfloat16 matrix. One pass
  computes the maxima of 16-column groups (strided: columns q, q + F/16, ..., so the maxima are
  vertical SIMD maxima), the k-th largest group maximum t bounds the answer from below (k
  entries are >= t), so only the members of the groups reaching t are ranked. Optionally adds
  the encoder bias in place first (the row is then in cache for the rest). Exact; a row holding
  NaN or inf is reported, and the caller falls back to `torch.topk`.
- `decode_grad`: row by row, the sparse decode (per Matryoshka level), the prefix
  reconstructions and their squared errors, the loss gradient g wrt each prefix (summed over
  the prefixes that contain a level) and each entry's activation gradient <W_dec[idx], g>.
  A row's k decoder rows are gathered once and reused from cache for the dot products
  (`embedding_bag` + `_embedding_bag_per_sample_weights_backward` gather them twice).
- `transpose_into`: a tiled transpose (the encoder gradient is accumulated as [F, D] rows).

Nothing happens at import. `load()` compiles into a cache directory keyed by the source, the
compiler and the CPU (the build uses -march=native), then loads the library; `available()` says
whether a C++ compiler is there. The fast step uses these kernels only when asked
(`fast_grads(..., kernels="native")`, step methods "fast_native" / "fast_native_bf16").
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from saes.topk_select import group_floor

_SOURCE = r"""
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

namespace {

int clamp_threads(int nthreads, int64_t nblocks) {
  if (nthreads > nblocks) nthreads = (int)nblocks;
  return nthreads < 1 ? 1 : nthreads;
}

template <class Fn>
void run_blocks(int64_t nblocks, int nthreads, Fn fn) {
  // Dynamic scheduling of blocks [0, nblocks) over nthreads threads: fn(block, thread).
  // Call with nthreads = clamp_threads(...) when fn keeps per-thread state.
  nthreads = clamp_threads(nthreads, nblocks);
  if (nthreads <= 1) {
    for (int64_t i = 0; i < nblocks; ++i) fn(i, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  auto worker = [&](int tid) {
    for (int64_t i = next.fetch_add(1); i < nblocks; i = next.fetch_add(1)) fn(i, tid);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < nthreads; ++t) pool.emplace_back(worker, t);
  worker(0);
  for (auto& th : pool) th.join();
}

inline float to_f(float v) { return v; }
inline float to_f(uint16_t v) {  // bfloat16 bits -> float
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

using Entry = std::pair<float, int64_t>;

inline bool entry_greater(const Entry& a, const Entry& b) { return a.first > b.first; }

// counts[j] = the threads' per-thread threshold counts for latent j, summed
inline void sum_thread_counts(const std::vector<int32_t>& local_counts, int nthreads, int64_t F, int64_t* counts) {
  for (int64_t j = 0; j < F; ++j) {
    int64_t c = 0;
    for (int t = 0; t < nthreads; ++t) c += local_counts[(size_t)t * F + j];
    counts[j] = c;
  }
}

// row[j] += bias[j] for every column (fused `pre += b_enc`: the row is then hot in cache for the
// passes that follow; the same float additions as torch's add_, so bitwise equal). float only.
// Returns the sum of the new row (not finite <=> the row holds NaN or inf).
inline float add_bias_row(float* row, const float* bias, int64_t F) {
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < F; ++j) {
    row[j] += bias[j];
    total += row[j];
  }
  return total;
}
inline float add_bias_row(uint16_t*, const float*, int64_t) { return 0.0f; }  // bf16 rows never take a bias

template <class T>
float row_sum(const T* row, int64_t F) {
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < F; ++j) total += to_f(row[j]);
  return total;
}

template <class T>
int64_t topk_rows(T* x, int64_t B, int64_t F, int64_t k, float* out_v, int64_t* out_i, const float* thr,
                  int64_t* counts, const float* bias, int nthreads) {
  const int64_t g = 16;
  const int64_t G = (F + g - 1) / g;
  std::atomic<int64_t> bad{0};
  const int64_t rows_per_block = 16;
  const int64_t nblocks = (B + rows_per_block - 1) / rows_per_block;
  nthreads = clamp_threads(nthreads, nblocks);
  std::vector<int32_t> local_counts(thr ? (size_t)nthreads * F : 0, 0);
  run_blocks(nblocks, nthreads, [&](int64_t blk, int tid) {
    std::vector<float> gmax(G + 1), kth;
    std::vector<Entry> cand;
    kth.reserve(G + 1);
    cand.reserve(k * g + 1);
    const int64_t b_end = std::min(B, (blk + 1) * rows_per_block);
    for (int64_t b = blk * rows_per_block; b < b_end; ++b) {
      T* row = x + b * F;
      const float biased_sum = bias ? add_bias_row(row, bias, F) : 0.0f;
      if (thr) {  // rows with x > thr, per column (the BatchTopK threshold statistics)
        int32_t* cnt = local_counts.data() + (size_t)tid * F;
#pragma omp simd
        for (int64_t j = 0; j < F; ++j) cnt[j] += (to_f(row[j]) > thr[j]) ? 1 : 0;
      }
      cand.clear();
      float total = 0.0f;  // not finite <=> the row holds NaN or inf: torch.topk decides then
      if (G < 2 * k) {  // narrow rows: rank everything
        for (int64_t j = 0; j < F; ++j) {
          float v = to_f(row[j]);
          total += v;
          cand.emplace_back(v, j);
        }
      } else {
        // Group q holds the 16 columns q, q + S, ..., q + 15 S (S = F / 16; the last F - 16 S
        // columns form group S), so all group maxima come from vertical (SIMD) maxima of 16
        // row segments, with no per-group horizontal reductions.
        const int64_t S = F / g, tail = F - g * S;
        float* gm = gmax.data();
        for (int64_t q = 0; q < S; ++q) gm[q] = to_f(row[q]);
        for (int64_t i = 1; i < g; ++i) {
          const T* seg = row + i * S;
#pragma omp simd
          for (int64_t q = 0; q < S; ++q) {
            const float v = to_f(seg[q]);
            gm[q] = v > gm[q] ? v : gm[q];
          }
        }
        total = bias ? biased_sum : row_sum(row, F);
        if (!std::isfinite(total)) {  // NaN would break the selection's ordering: torch.topk decides
          bad.fetch_add(1);
          continue;
        }
        const int64_t n_groups = S + (tail > 0);
        if (tail > 0) {
          float m = -INFINITY;
          for (int64_t j = g * S; j < F; ++j) m = to_f(row[j]) > m ? to_f(row[j]) : m;
          gm[S] = m;
        }
        // t = the k-th largest group maximum: >= k entries are >= t, so the k-th largest entry is >= t.
        // Split the groups into k blocks: the smallest block maximum u has >= k group maxima
        // above it, so u <= t, and only the (few) groups reaching u need ranking for t.
        const int64_t per = n_groups / k;
        float u = INFINITY;
        for (int64_t blk_i = 0; blk_i < k; ++blk_i) {
          const int64_t q0 = blk_i * per, q1 = blk_i + 1 < k ? q0 + per : n_groups;
          float m = gm[q0];
          for (int64_t q = q0 + 1; q < q1; ++q) m = gm[q] > m ? gm[q] : m;
          u = m < u ? m : u;
        }
        kth.clear();
        for (int64_t q = 0; q < n_groups; ++q)
          if (gm[q] >= u) kth.push_back(gm[q]);
        std::nth_element(kth.begin(), kth.begin() + (k - 1), kth.end(), std::greater<float>());
        const float t = kth[k - 1];
        for (int64_t q = 0; q < S; ++q) {  // entries >= t live only in groups with maximum >= t
          if (!(gm[q] >= t)) continue;
          for (int64_t i = 0; i < g; ++i) {
            const float v = to_f(row[q + i * S]);
            if (v >= t) cand.emplace_back(v, q + i * S);
          }
        }
        if (tail > 0 && gm[S] >= t)
          for (int64_t j = g * S; j < F; ++j)
            if (to_f(row[j]) >= t) cand.emplace_back(to_f(row[j]), j);
      }
      if (!std::isfinite(total) || (int64_t)cand.size() < k) {
        bad.fetch_add(1);
        continue;
      }
      std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), entry_greater);
      for (int64_t q = 0; q < k; ++q) {
        out_v[b * k + q] = cand[q].first;
        out_i[b * k + q] = cand[q].second;
      }
    }
  });
  if (thr) sum_thread_counts(local_counts, nthreads, F, counts);
  return bad.load();
}

template <class T>
int64_t group_maxima(T* x, int64_t B, int64_t F, float* gmax_BG, const float* thr, int64_t* counts,
                     const float* bias, int nthreads) {
  // gmax[b, j] = max of x[b, 16j : 16j+16]; rows holding NaN/inf are reported (return value);
  // with `thr`, counts[f] = rows with x[b, f] > thr[f].
  const int64_t g = 16, G = (F + g - 1) / g;
  std::atomic<int64_t> bad{0};
  const int64_t rows_per_block = 16;
  const int64_t nblocks = (B + rows_per_block - 1) / rows_per_block;
  nthreads = clamp_threads(nthreads, nblocks);
  std::vector<int32_t> local_counts(thr ? (size_t)nthreads * F : 0, 0);
  run_blocks(nblocks, nthreads, [&](int64_t blk, int tid) {
    const int64_t b_end = std::min(B, (blk + 1) * rows_per_block);
    for (int64_t b = blk * rows_per_block; b < b_end; ++b) {
      T* row = x + b * F;
      if (bias) add_bias_row(row, bias, F);  // (the group pass below checks for NaN/inf)
      float* gm = gmax_BG + b * G;
      if (thr) {
        int32_t* cnt = local_counts.data() + (size_t)tid * F;
#pragma omp simd
        for (int64_t j = 0; j < F; ++j) cnt[j] += (to_f(row[j]) > thr[j]) ? 1 : 0;
      }
      float total = 0.0f;
      const int64_t full = F / g;
      for (int64_t j = 0; j < full; ++j) {
        const T* p = row + j * g;
        float m = to_f(p[0]), s = 0.0f;
        for (int i = 0; i < 16; ++i) {
          float v = to_f(p[i]);
          m = v > m ? v : m;
          s += v;
        }
        gm[j] = m;
        total += s;
      }
      for (int64_t j = full; j < G; ++j) {
        float m = -INFINITY;
        for (int64_t i = j * g; i < F; ++i) {
          float v = to_f(row[i]);
          m = v > m ? v : m;
          total += v;
        }
        gm[j] = m;
      }
      if (!std::isfinite(total)) bad.fetch_add(1);
    }
  });
  if (thr) sum_thread_counts(local_counts, nthreads, F, counts);
  return bad.load();
}

template <class T>
int64_t collect_above(const T* x, int64_t B, int64_t F, const float* gmax_BG, float floor, int64_t capacity,
                      float* vals, int64_t* rows, int64_t* cols, int nthreads) {
  // The entries >= floor and > 0, in row-major order (columns ascending): each block of rows
  // writes into its own region (sized by its groups with maximum >= floor), then the regions
  // are closed up. Returns the number written, or -1 if `capacity` is too small.
  const int64_t g = 16, G = (F + g - 1) / g;
  const int64_t rows_per_block = 64;
  const int64_t nblocks = (B + rows_per_block - 1) / rows_per_block;
  std::vector<int64_t> start(nblocks + 1, 0), used(nblocks, 0);
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    int64_t n = 0;
    const int64_t b_end = std::min(B, (blk + 1) * rows_per_block);
    for (int64_t i = blk * rows_per_block * G; i < b_end * G; ++i) n += gmax_BG[i] >= floor;
    start[blk + 1] = start[blk] + n * g;
  }
  if (start[nblocks] > capacity) return -1;
  run_blocks(nblocks, nthreads, [&](int64_t blk, int) {
    int64_t o = start[blk];
    const int64_t b_end = std::min(B, (blk + 1) * rows_per_block);
    for (int64_t b = blk * rows_per_block; b < b_end; ++b) {
      const T* row = x + b * F;
      const float* gm = gmax_BG + b * G;
      if (b + 1 < B) {  // start loading the next row's selected groups
        const T* nrow = x + (b + 1) * F;
        const float* ngm = gm + G;
        for (int64_t j = 0; j < G; ++j)
          if (ngm[j] >= floor) __builtin_prefetch(nrow + j * g);
      }
      for (int64_t j = 0; j < G; ++j) {
        if (!(gm[j] >= floor)) continue;
        const int64_t s = j * g, e = std::min(F, s + g);
        for (int64_t i = s; i < e; ++i) {
          const float v = to_f(row[i]);
          if (v >= floor && v > 0.0f) {
            vals[o] = v;
            rows[o] = b;
            cols[o] = i;
            ++o;
          }
        }
      }
    }
    used[blk] = o - start[blk];
  });
  int64_t n = 0;
  for (int64_t blk = 0; blk < nblocks; ++blk) {  // close up the regions, in order
    const int64_t s = start[blk], u = used[blk];
    if (s != n) {
      std::memmove(vals + n, vals + s, sizeof(float) * u);
      std::memmove(rows + n, rows + s, sizeof(int64_t) * u);
      std::memmove(cols + n, cols + s, sizeof(int64_t) * u);
    }
    n += u;
  }
  return n;
}

}  // namespace

extern "C" {

int64_t saes_row_topk_f32(float* x, int64_t B, int64_t F, int64_t k, float* out_v, int64_t* out_i,
                          const float* thr, int64_t* counts, const float* bias, int nthreads) {
  return topk_rows<float>(x, B, F, k, out_v, out_i, thr, counts, bias, nthreads);
}

int64_t saes_row_topk_bf16(uint16_t* x, int64_t B, int64_t F, int64_t k, float* out_v, int64_t* out_i,
                           const float* thr, int64_t* counts, int nthreads) {
  return topk_rows<uint16_t>(x, B, F, k, out_v, out_i, thr, counts, nullptr, nthreads);
}

void saes_decode_grad(int64_t B, int64_t D, int64_t L, const int64_t* offsets, const int64_t* idx_N,
                      const int64_t* level_N, const float* val_N, const float* W_dec_FD, const float* b_dec_D,
                      const float* x_BD, float grad_scale, int relu, float* recon_BD, float* g_QD,
                      double* sq_BL, float* dvals_N, int nthreads) {
  const int64_t rows_per_block = 8;
  run_blocks((B + rows_per_block - 1) / rows_per_block, nthreads, [&](int64_t blk, int) {
    std::vector<float> acc((size_t)L * D);
    const int64_t b_end = std::min(B, (blk + 1) * rows_per_block);
    for (int64_t b = blk * rows_per_block; b < b_end; ++b) {
      const int64_t e0 = offsets[b], e1 = offsets[b + 1];
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t e = e0; e < e1;) {  // each level's part of the reconstruction
        const int64_t lv = L > 1 ? level_N[e] : 0;
        float* a = acc.data() + lv * D;
        if (e + 4 <= e1 && (L == 1 || level_N[e + 3] == lv)) {  // four rows of one level at once
          for (int64_t q = 4; q < 8 && e + q < e1; ++q) {  // the next four rows
            const char* nxt = (const char*)(W_dec_FD + idx_N[e + q] * D);
            for (int64_t o = 0; o < D * 4; o += 64) __builtin_prefetch(nxt + o);
          }
          const float *w0 = W_dec_FD + idx_N[e] * D, *w1 = W_dec_FD + idx_N[e + 1] * D;
          const float *w2 = W_dec_FD + idx_N[e + 2] * D, *w3 = W_dec_FD + idx_N[e + 3] * D;
          const float v0 = val_N[e], v1 = val_N[e + 1], v2 = val_N[e + 2], v3 = val_N[e + 3];
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) {  // the same order of additions as one row at a time
            float t = a[d];
            t += v0 * w0[d];
            t += v1 * w1[d];
            t += v2 * w2[d];
            t += v3 * w3[d];
            a[d] = t;
          }
          e += 4;
          continue;
        }
        const float* w = W_dec_FD + idx_N[e] * D;
        const float v = val_N[e];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) a[d] += v * w[d];
        ++e;
      }
      const float* xr = x_BD + b * D;
      float* gq = g_QD + b * L * D;
      for (int64_t l = 0; l < L; ++l) {  // prefix reconstructions, their errors and squared norms
        float* a = acc.data() + l * D;
        const float* prev = l ? acc.data() + (l - 1) * D : b_dec_D;
        float* gl = gq + l * D;
        double sq = 0.0;
#pragma omp simd reduction(+ : sq)
        for (int64_t d = 0; d < D; ++d) {
          a[d] += prev[d];  // a: recon of prefix l
          const float err = a[d] - xr[d];
          gl[d] = grad_scale * err;
          sq += (double)err * err;
        }
        sq_BL[b * L + l] = sq;
      }
      std::memcpy(recon_BD + b * D, acc.data() + (L - 1) * D, sizeof(float) * D);
      for (int64_t l = L - 2; l >= 0; --l) {  // G_l = sum over prefixes j >= l
        float* gl = gq + l * D;
        const float* gn = gq + (l + 1) * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) gl[d] += gn[d];
      }
      for (int64_t e = e0; e < e1; ++e) {  // d loss / d value of each entry
        const float* w = W_dec_FD + idx_N[e] * D;
        const float* gl = gq + (L > 1 ? level_N[e] : 0) * D;
        float dv = 0.0f;
#pragma omp simd reduction(+ : dv)
        for (int64_t d = 0; d < D; ++d) dv += w[d] * gl[d];
        dvals_N[e] = (relu && !(val_N[e] > 0.0f)) ? 0.0f : dv;
      }
    }
  });
}

void saes_transpose(const float* src, int64_t R, int64_t C, float* dst, int nthreads) {
  // dst [C, R] = src [R, C]^T in 32x32 tiles
  const int64_t T = 32;
  const int64_t tiles_r = (R + T - 1) / T, tiles_c = (C + T - 1) / T;
  run_blocks(tiles_r * tiles_c, nthreads, [&](int64_t t, int) {
    const int64_t r0 = (t / tiles_c) * T, c0 = (t % tiles_c) * T;
    const int64_t r1 = std::min(R, r0 + T), c1 = std::min(C, c0 + T);
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t r = r0; r < r1; ++r) dst[c * R + r] = src[r * C + c];
  });
}

int64_t saes_group_maxima_f32(float* x, int64_t B, int64_t F, float* gmax, const float* thr, int64_t* counts,
                              const float* bias, int nthreads) {
  return group_maxima<float>(x, B, F, gmax, thr, counts, bias, nthreads);
}

int64_t saes_group_maxima_bf16(uint16_t* x, int64_t B, int64_t F, float* gmax, const float* thr,
                               int64_t* counts, int nthreads) {
  return group_maxima<uint16_t>(x, B, F, gmax, thr, counts, nullptr, nthreads);
}

int64_t saes_collect_above_f32(const float* x, int64_t B, int64_t F, const float* gmax, float floor,
                               int64_t capacity, float* vals, int64_t* rows, int64_t* cols, int nthreads) {
  return collect_above<float>(x, B, F, gmax, floor, capacity, vals, rows, cols, nthreads);
}

int64_t saes_collect_above_bf16(const uint16_t* x, int64_t B, int64_t F, const float* gmax, float floor,
                                int64_t capacity, float* vals, int64_t* rows, int64_t* cols, int nthreads) {
  return collect_above<uint16_t>(x, B, F, gmax, floor, capacity, vals, rows, cols, nthreads);
}

}  // extern "C"
"""

_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-pthread"]
_LIB: ctypes.CDLL | None = None  # the loaded library (a process-wide resource, loaded on first use)


def compiler() -> str | None:
    """The C++ compiler to build with: $CXX, else c++ / g++ / clang++ on PATH."""
    for name in [os.environ.get("CXX")] + ["c++", "g++", "clang++"]:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def available() -> bool:
    """True when the kernels can be built here (CPU + a C++ compiler) or are already loaded."""
    return _LIB is not None or compiler() is not None


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "saesteer" / "kernels"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load(cache_dir: str | os.PathLike | None = None) -> ctypes.CDLL:
    """Build (once per source/compiler/CPU) and load the kernels; raises with a fix if impossible."""
    global _LIB
    if _LIB is not None:
        return _LIB
    cxx = compiler()
    if cxx is None:
        raise RuntimeError(
            "the native kernels need a C++ compiler (g++ or clang++ on PATH, or $CXX); install one "
            "(e.g. apt-get install g++) or use the pure-torch step (kernels='torch', method 'fast')"
        )
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([_SOURCE, " ".join(_FLAGS), version, _cpu_signature()]).encode()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        if cache_dir is not None:
            raise
        folder = Path(tempfile.gettempdir()) / f"saesteer-kernels-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
        folder.mkdir(parents=True, exist_ok=True)
    lib_path = folder / f"saes_kernels_{key}.so"
    if not lib_path.exists():
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src = Path(tmp) / "saes_kernels.cpp"
            src.write_text(_SOURCE, encoding="utf-8")
            out = Path(tmp) / lib_path.name
            proc = subprocess.run([cxx, *_FLAGS, str(src), "-o", str(out)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"building the native kernels with {cxx} failed:\n{proc.stderr[-2000:]}\n"
                    "use the pure-torch step instead (kernels='torch', method 'fast')"
                )
            os.replace(out, lib_path)  # atomic: a complete library or none
    lib = ctypes.CDLL(str(lib_path))
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.saes_row_topk_f32.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, cint]
    lib.saes_row_topk_bf16.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ptr, cint]
    for name in ("saes_row_topk_f32", "saes_row_topk_bf16"):
        getattr(lib, name).restype = i64
    lib.saes_decode_grad.argtypes = [i64, i64, i64] + [ptr] * 7 + [ctypes.c_float, cint] + [ptr] * 4 + [cint]
    lib.saes_decode_grad.restype = None
    lib.saes_group_maxima_f32.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, cint]
    lib.saes_group_maxima_bf16.argtypes = [ptr, i64, i64, ptr, ptr, ptr, cint]
    for suffix in ("f32", "bf16"):
        getattr(lib, f"saes_group_maxima_{suffix}").restype = i64
        fn = getattr(lib, f"saes_collect_above_{suffix}")
        fn.argtypes = [ptr, i64, i64, ptr, ctypes.c_float, i64, ptr, ptr, ptr, cint]
        fn.restype = i64
    lib.saes_transpose.argtypes = [ptr, i64, i64, ptr, cint]
    lib.saes_transpose.restype = None
    _LIB = lib
    return lib


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def _check(t: Tensor, dtype: torch.dtype, name: str) -> None:
    if t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous():
        raise ValueError(f"native kernel input {name} must be a contiguous CPU {dtype} tensor, got {t.dtype} on {t.device}")


def row_topk(x_BF: Tensor, k: int, bias_F: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Exact per-row top k of a float32 / bfloat16 CPU matrix: (values float32 [B, k], indices [B, k]).

    Unsorted within a row. Falls back to `torch.topk` when a row holds NaN or inf. With
    `bias_F` (float32 matrices only), first adds it to every row *in place* (x += bias, the same
    float additions as `x.add_(bias)`) in the same pass, and ranks the sums."""
    vals, idx, _ = row_topk_count(x_BF, k, None, bias_F)
    return vals, idx


def _bias_arg(x_BF: Tensor, bias_F: Tensor | None) -> Tensor | None:
    """The contiguous float32 bias to add in place, checked; None without one."""
    if bias_F is None:
        return None
    if x_BF.dtype != torch.float32 or not x_BF.is_contiguous():
        raise ValueError("a fused bias is added in place: the matrix must be a contiguous float32 tensor")
    bias = bias_F.detach().to(torch.float32).contiguous()
    if bias.shape != (x_BF.shape[1],):
        raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({x_BF.shape[1]},)")
    return bias


def row_topk_count(
    x_BF: Tensor, k: int, threshold_F: Tensor | None, bias_F: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """`row_topk` that also counts, per column, the rows with x > threshold (int64 [F]; None
    without a threshold), in the same pass over the matrix (after adding `bias_F`, if given)."""
    lib = load()
    B, Fdim = x_BF.shape
    if not 0 < k <= Fdim:
        raise ValueError(f"cannot take the top {k} of {Fdim} columns")
    if x_BF.device.type != "cpu":
        raise ValueError("native row_topk runs on CPU tensors only")
    if x_BF.dtype == torch.float32:
        fn = lib.saes_row_topk_f32
    elif x_BF.dtype == torch.bfloat16:
        fn = lib.saes_row_topk_bf16
    else:
        raise ValueError(f"native row_topk reads float32 or bfloat16, got {x_BF.dtype}")
    bias = _bias_arg(x_BF, bias_F)
    x_BF = x_BF.contiguous()
    vals = torch.empty(B, k, dtype=torch.float32)
    idx = torch.empty(B, k, dtype=torch.int64)
    counts = thr = None
    if threshold_F is not None:
        thr = threshold_F.detach().to(torch.float32).contiguous()
        if thr.shape != (Fdim,):
            raise ValueError(f"threshold has shape {tuple(thr.shape)}, expected ({Fdim},)")
        counts = torch.empty(Fdim, dtype=torch.int64)
    args = [_ptr(x_BF), B, Fdim, k, _ptr(vals), _ptr(idx), _ptr(thr) if thr is not None else None,
            _ptr(counts) if counts is not None else None]
    if x_BF.dtype == torch.float32:
        args.append(_ptr(bias) if bias is not None else None)
    bad = fn(*args, torch.get_num_threads())
    if bad:
        v, i = x_BF.topk(k, dim=1, sorted=False)
        vals, idx = v.float(), i
    return vals, idx, counts


def decode_grad(
    offsets_B1: Tensor,
    idx_N: Tensor,
    level_N: Tensor | None,
    val_N: Tensor,
    W_dec_FD: Tensor,
    b_dec_D: Tensor,
    x_BD: Tensor,
    n_levels: int,
    relu: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Decode, reconstruction loss and its gradient, row by row (see the module docstring).

    Entries are in CSR row order; with levels, a row's levels must not decrease along it.
    Returns (recon [B, D], g [B*L, D] (row-major (row, level)), squared errors [B, L] float64,
    dvals [N])."""
    lib = load()
    B, D = x_BD.shape
    L = n_levels
    for t, name in ((offsets_B1, "offsets"), (idx_N, "indices")):
        _check(t, torch.int64, name)
    for t, name in ((val_N, "values"), (W_dec_FD, "W_dec"), (b_dec_D, "b_dec"), (x_BD, "x")):
        _check(t, torch.float32, name)
    if L > 1:
        assert level_N is not None
        _check(level_N, torch.int64, "levels")
    recon_BD = torch.empty(B, D, dtype=torch.float32)
    g_QD = torch.empty(B * L, D, dtype=torch.float32)
    sq_BL = torch.empty(B, L, dtype=torch.float64)
    dvals_N = torch.empty(val_N.numel(), dtype=torch.float32)
    lib.saes_decode_grad(
        B, D, L, _ptr(offsets_B1), _ptr(idx_N), _ptr(level_N) if L > 1 else None, _ptr(val_N), _ptr(W_dec_FD),
        _ptr(b_dec_D), _ptr(x_BD), 2.0 / B, int(relu), _ptr(recon_BD), _ptr(g_QD), _ptr(sq_BL), _ptr(dvals_N),
        torch.get_num_threads(),
    )
    return recon_BD, g_QD, sq_BL, dvals_N



def transpose_into(src_RC: Tensor, dst_CR: Tensor) -> Tensor:
    """dst = src.T for contiguous float32 CPU matrices, in cache-sized tiles."""
    lib = load()
    _check(src_RC, torch.float32, "src")
    _check(dst_CR, torch.float32, "dst")
    R, C = src_RC.shape
    if dst_CR.shape != (C, R):
        raise ValueError(f"transpose_into: dst has shape {tuple(dst_CR.shape)}, expected {(C, R)}")
    lib.saes_transpose(_ptr(src_RC), R, C, _ptr(dst_CR), torch.get_num_threads())
    return dst_CR


def batch_top_entries(
    pre_BF: Tensor, k: int, threshold_F: Tensor | None = None, total: int | None = None,
    reduce_floor: Callable[[float], float] | None = None, bias_F: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None] | None:
    """Exact BatchTopK selection (as `saes.topk_select.batch_top_entries`), in two passes.

    Pass 1: the maximum of every 16-wide column group (and, with a threshold, the per-column
    counts of rows above it). A value L with at least k*B group maxima >= L (about the
    (k*B)-th largest, `saes.topk_select.group_floor`) bounds the cut from below (k*B entries are >= L), so every
    winner is an entry >= L, and those live in groups whose maximum is >= L. Pass 2 collects
    them (positive ones only), already in row-major, column-ascending order; the cut is then the
    (k*B)-th largest of these few candidates (`saes.topk_select.take_top`).
    Returns (values float32, rows, cols, counts or None), or None when the matrix holds NaN/inf
    (the caller then takes the pure-torch path). `total` replaces k*B as the number of entries
    the candidates must cover; `reduce_floor` (data parallel: `BatchGroup.reduce_floor`) turns
    this rank's floor into the smallest over the ranks before the candidates are collected.
    `bias_F` (float32 only): pass 1 first adds it to every row in place, as `row_topk` does."""
    lib = load()
    B, Fdim = pre_BF.shape
    if pre_BF.device.type != "cpu" or pre_BF.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError("native batch_top_entries reads float32 or bfloat16 CPU matrices")
    suffix = "f32" if pre_BF.dtype == torch.float32 else "bf16"
    bias = _bias_arg(pre_BF, bias_F)
    x = pre_BF.contiguous()
    G = (Fdim + 15) // 16
    gmax_BG = torch.empty(B, G, dtype=torch.float32)
    counts = thr = None
    if threshold_F is not None:
        thr = threshold_F.detach().to(torch.float32).contiguous()
        counts = torch.empty(Fdim, dtype=torch.int64)
    nt = torch.get_num_threads()
    args = [_ptr(x), B, Fdim, _ptr(gmax_BG), _ptr(thr) if thr is not None else None,
            _ptr(counts) if counts is not None else None]
    if suffix == "f32":
        args.append(_ptr(bias) if bias is not None else None)
    bad = getattr(lib, f"saes_group_maxima_{suffix}")(*args, nt)
    if bad:
        return None
    total = min(k * B if total is None else total, B * Fdim)
    floor, n_groups = group_floor(gmax_BG.view(-1), total)
    if reduce_floor is not None:
        floor = reduce_floor(floor)
        n_groups = int((gmax_BG >= floor).sum())
    capacity = n_groups * 16
    vals = torch.empty(capacity, dtype=torch.float32)
    rows = torch.empty(capacity, dtype=torch.int64)
    cols = torch.empty(capacity, dtype=torch.int64)
    n = getattr(lib, f"saes_collect_above_{suffix}")(
        _ptr(x), B, Fdim, _ptr(gmax_BG), floor, capacity, _ptr(vals), _ptr(rows), _ptr(cols), nt
    )
    assert n >= 0, "collect_above: capacity too small"
    return vals[:n], rows[:n], cols[:n], counts

