"""Optional compiled CPU kernels for the fast training step (the pure-torch path stays the default).

Two small C++ routines, built on first use with the system C++ compiler (no torch headers, so the
build takes ~1-2 s) and called through ctypes on the tensors' memory:

- `row_topk`: the k largest entries of every row of a float32 or bfloat16 matrix. One pass
  computes the maxima of 16-wide column groups, the k-th largest group maximum t bounds the
  answer from below (k entries are >= t), so only the members of the k groups above it are
  ranked. Exact; a row holding NaN or inf is reported, and the caller falls back to `torch.topk`.
- `sparse_backward`: the backward of the sparse decode and encoder for entries sorted by latent:
  for each latent f and each of its entries n (bag q, row b, value v):
  dv_n = <W_dec[f], g[q]> (zeroed where v <= 0 when `relu`), dW_dec[f] += v g[q],
  dW_enc[:, f] += dv_n sae_in[b], db_enc[f] += dv_n. One pass shares each gathered row between
  two products and writes dW_enc in its [D, F] layout directly (no transpose).

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

import torch
from torch import Tensor

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

template <class Fn>
void run_blocks(int64_t nblocks, int nthreads, Fn fn) {
  // Dynamic scheduling of blocks [0, nblocks) over nthreads threads.
  if (nthreads > nblocks) nthreads = (int)nblocks;
  if (nthreads <= 1) {
    for (int64_t i = 0; i < nblocks; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t i = next.fetch_add(1); i < nblocks; i = next.fetch_add(1)) fn(i);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < nthreads; ++t) pool.emplace_back(worker);
  worker();
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

template <class T>
int64_t topk_rows(const T* x, int64_t B, int64_t F, int64_t k, float* out_v, int64_t* out_i, int nthreads) {
  const int64_t g = 16;
  const int64_t G = (F + g - 1) / g;
  std::atomic<int64_t> bad{0};
  const int64_t rows_per_block = 16;
  run_blocks((B + rows_per_block - 1) / rows_per_block, nthreads, [&](int64_t blk) {
    std::vector<float> gmax(G);
    std::vector<Entry> top, cand;
    top.reserve(4 * k + 1);
    cand.reserve(k * g + 1);
    const int64_t b_end = std::min(B, (blk + 1) * rows_per_block);
    for (int64_t b = blk * rows_per_block; b < b_end; ++b) {
      const T* row = x + b * F;
      cand.clear();
      float total = 0.0f;  // not finite <=> the row holds NaN or inf: torch.topk decides then
      if (G < 2 * k) {  // narrow rows: rank everything
        for (int64_t j = 0; j < F; ++j) {
          float v = to_f(row[j]);
          total += v;
          cand.emplace_back(v, j);
        }
      } else {
        const int64_t full = F / g;
        for (int64_t j = 0; j < full; ++j) {  // 16 values -> one vector max and sum
          const T* p = row + j * g;
          float m = to_f(p[0]), s = 0.0f;
          for (int i = 0; i < 16; ++i) {
            float v = to_f(p[i]);
            m = v > m ? v : m;
            s += v;
          }
          gmax[j] = m;
          total += s;
        }
        for (int64_t j = full; j < G; ++j) {  // a partial last group
          float m = -INFINITY;
          for (int64_t i = j * g; i < F; ++i) {
            float v = to_f(row[i]);
            m = v > m ? v : m;
            total += v;
          }
          gmax[j] = m;
        }
        // the k groups with the largest maxima (buffered selection), t = k-th largest maximum
        top.clear();
        float floor = -INFINITY;
        for (int64_t j = 0; j < G; ++j) {
          if (gmax[j] > floor || (int64_t)top.size() < k) {
            top.emplace_back(gmax[j], j);
            if ((int64_t)top.size() == 4 * k) {
              std::nth_element(top.begin(), top.begin() + (k - 1), top.end(), entry_greater);
              top.resize(k);
              floor = top[k - 1].first;
            }
          }
        }
        std::nth_element(top.begin(), top.begin() + (k - 1), top.end(), entry_greater);
        const float t = top[k - 1].first;  // >= k entries are >= t: the k-th largest is >= t
        for (int64_t q = 0; q < k; ++q) {  // entries > t live only in groups with maximum > t
          const int64_t j = top[q].second, s = j * g, e = std::min(F, s + g);
          for (int64_t i = s; i < e; ++i) {
            float v = to_f(row[i]);
            if (v >= t) cand.emplace_back(v, i);
          }
        }
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
  return bad.load();
}

}  // namespace

extern "C" {

int64_t saes_row_topk_f32(const float* x, int64_t B, int64_t F, int64_t k, float* out_v, int64_t* out_i,
                          int nthreads) {
  return topk_rows<float>(x, B, F, k, out_v, out_i, nthreads);
}

int64_t saes_row_topk_bf16(const uint16_t* x, int64_t B, int64_t F, int64_t k, float* out_v, int64_t* out_i,
                           int nthreads) {
  return topk_rows<uint16_t>(x, B, F, k, out_v, out_i, nthreads);
}

void saes_sparse_backward(int64_t F, int64_t D, const int64_t* lat_off, const int64_t* bag_s,
                          const int64_t* row_s, const float* val_s, const int64_t* pos_s, const float* g_QD,
                          const float* W_dec_FD, const float* sae_in_BD, int relu, float* dvals_N,
                          float* dW_dec_FD, float* dW_enc_DF, float* db_enc_F, int nthreads) {
  const int64_t TB = 16;  // latents per block: dW_enc is written as [D, TB] tiles
  const int64_t n_entries = lat_off[F];
  run_blocks((F + TB - 1) / TB, nthreads, [&](int64_t blk) {
    const int64_t f0 = blk * TB, f1 = std::min(F, f0 + TB);
    std::vector<float> tile((size_t)TB * D, 0.0f);
    for (int64_t f = f0; f < f1; ++f) {
      float* ddec = dW_dec_FD + f * D;
      float* aenc = tile.data() + (f - f0) * D;
      const float* w = W_dec_FD + f * D;
      std::memset(ddec, 0, sizeof(float) * D);
      double db = 0.0;
      for (int64_t e = lat_off[f]; e < lat_off[f + 1]; ++e) {
        if (e + 1 < n_entries) {  // start loading the next entry's two rows
          const char* pg = (const char*)(g_QD + bag_s[e + 1] * D);
          const char* px = (const char*)(sae_in_BD + row_s[e + 1] * D);
          for (int64_t o = 0; o < D * 4; o += 64) {
            __builtin_prefetch(pg + o);
            __builtin_prefetch(px + o);
          }
        }
        const float* gr = g_QD + bag_s[e] * D;
        const float v = val_s[e];
        float dv = 0.0f;
#pragma omp simd reduction(+ : dv)
        for (int64_t d = 0; d < D; ++d) dv += w[d] * gr[d];
        if (relu && !(v > 0.0f)) dv = 0.0f;
        dvals_N[pos_s[e]] = dv;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) ddec[d] += v * gr[d];
        if (dv != 0.0f) {
          const float* xr = sae_in_BD + row_s[e] * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) aenc[d] += dv * xr[d];
        }
        db += dv;
      }
      db_enc_F[f] = (float)db;
    }
    const int64_t nb = f1 - f0;
    for (int64_t d = 0; d < D; ++d) {
      float* out = dW_enc_DF + d * F + f0;
      for (int64_t j = 0; j < nb; ++j) out[j] = tile[j * D + d];
    }
  });
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
        with open("/proc/cpuinfo") as fh:
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
    folder.mkdir(parents=True, exist_ok=True)
    lib_path = folder / f"saes_kernels_{key}.so"
    if not lib_path.exists():
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src = Path(tmp) / "saes_kernels.cpp"
            src.write_text(_SOURCE)
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
    for name in ("saes_row_topk_f32", "saes_row_topk_bf16"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr, i64, i64, i64, ptr, ptr, cint]
        fn.restype = i64
    lib.saes_sparse_backward.argtypes = [i64, i64] + [ptr] * 8 + [cint] + [ptr] * 4 + [cint]
    lib.saes_sparse_backward.restype = None
    _LIB = lib
    return lib


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def _check(t: Tensor, dtype: torch.dtype, name: str) -> None:
    if t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous():
        raise ValueError(f"native kernel input {name} must be a contiguous CPU {dtype} tensor, got {t.dtype} on {t.device}")


def row_topk(x_BF: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact per-row top k of a float32 / bfloat16 CPU matrix: (values float32 [B, k], indices [B, k]).

    Unsorted within a row. Falls back to `torch.topk` when a row holds NaN."""
    lib = load()
    B, Fdim = x_BF.shape
    if not 0 < k <= Fdim:
        raise ValueError(f"cannot take the top {k} of {Fdim} columns")
    x_BF = x_BF.contiguous()
    vals = torch.empty(B, k, dtype=torch.float32)
    idx = torch.empty(B, k, dtype=torch.int64)
    if x_BF.dtype == torch.float32:
        fn = lib.saes_row_topk_f32
    elif x_BF.dtype == torch.bfloat16:
        fn = lib.saes_row_topk_bf16
    else:
        raise ValueError(f"native row_topk reads float32 or bfloat16, got {x_BF.dtype}")
    if x_BF.device.type != "cpu":
        raise ValueError("native row_topk runs on CPU tensors only")
    bad = fn(_ptr(x_BF), B, Fdim, k, _ptr(vals), _ptr(idx), torch.get_num_threads())
    if bad:
        v, i = x_BF.topk(k, dim=1, sorted=False)
        return v.float(), i
    return vals, idx


def sparse_backward(
    lat_off_F1: Tensor,
    bag_S: Tensor,
    row_S: Tensor,
    val_S: Tensor,
    pos_S: Tensor,
    g_QD: Tensor,
    W_dec_FD: Tensor,
    sae_in_BD: Tensor,
    relu: bool,
    dW_enc_DF: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """See the module docstring. Entries (suffix S) are sorted by latent; `pos_S` gives each
    one's place in the original order. Writes dW_enc_DF; returns (dvals_N, dW_dec_FD, db_enc_F)."""
    lib = load()
    Fdim, D = W_dec_FD.shape
    for t, name in ((lat_off_F1, "lat_off"), (bag_S, "bag"), (row_S, "row"), (pos_S, "pos")):
        _check(t, torch.int64, name)
    for t, name in ((val_S, "val"), (g_QD, "g"), (W_dec_FD, "W_dec"), (sae_in_BD, "sae_in"), (dW_enc_DF, "dW_enc")):
        _check(t, torch.float32, name)
    assert dW_enc_DF.shape == (D, Fdim) and sae_in_BD.shape[1] == D and g_QD.shape[1] == D
    N = val_S.numel()
    dvals_N = torch.empty(N, dtype=torch.float32)
    dW_dec_FD = torch.empty(Fdim, D, dtype=torch.float32)
    db_enc_F = torch.empty(Fdim, dtype=torch.float32)
    lib.saes_sparse_backward(
        Fdim, D, _ptr(lat_off_F1), _ptr(bag_S), _ptr(row_S), _ptr(val_S), _ptr(pos_S), _ptr(g_QD),
        _ptr(W_dec_FD), _ptr(sae_in_BD), int(relu), _ptr(dvals_N), _ptr(dW_dec_FD), _ptr(dW_enc_DF),
        _ptr(db_enc_F), torch.get_num_threads(),
    )
    return dvals_N, dW_dec_FD, db_enc_F
