// The position-wise ends of every block of the linear cells (cells/linear.py), forward and backward,
// compiled. A block is u + GLU(Linear(GELU(m + D v))), with v = LayerNorm(u) and m the recurrence's
// output; the two passes here are what lies between its multiplies:
//
//   skip:  y = m + D v,  out = GELU(y)                                        (rows, H), D (H)
//   gate:  out = u + (z_a + b_a) sigmoid(z_g + b_g),  z = [z_a | z_g] = GELU(y) W^T (rows, 2H), b (2H)
//
// the Linear's bias being added by the gate rather than by the multiply. PyTorch runs them as twelve
// passes over memory: forward, addmm's copy of the bias into every row of its output, D v, its sum with
// m, the GELU, the GLU, the residual sum; backward, the GLU's and the GELU's gradients, D v's, and the
// column sums for D and for the bias. At batch 100 each is over a (78,400 x 64 or 128) tensor far larger
// than the caches, while the block's multiplies run about as fast as they get. Here it is two passes
// each way.
//
// Backward, with g = dL/dout:
//   skip:  dL/dm = g GELU'(y),  dL/dv = D dL/dm,  dL/dD = the column sums of v dL/dm  (y recomputed)
//   gate:  dL/du = g,  s = sigmoid(z_g + b_g),  dL/dz_a = g s,  dL/dz_g = g (z_a + b_a) s (1 - s),
//          dL/db = the column sums of dL/dz
// GELU, GELU' and the sigmoid are PyTorch's own formulas on ATen's vectors. Column sums are taken in
// chunks of a fixed number of rows, then over the chunks, so their bits do not depend on the number of
// threads. Float and double (the float64 tests).

// ATen's vectors as wide as PyTorch's own kernels take them on this machine (native.py's _CFLAGS): AVX-512
// (twice AVX2's width: these passes are bound by their arithmetic, the exp and erf, more than by memory),
// AVX2, or the portable form. The choice is made by these macros, before ATen's headers.
#if defined(SEQMNIST_AVX512)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#ifndef __AVX512F__
#define __AVX512F__ 1  // g++ does not define it for the pragma, and sleef.h declares its AVX-512 functions by it
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/cpu/Gelu.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include "library.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <utility>
#include <vector>

namespace seqmnist {

using at::vec::Vectorized;

constexpr int64_t kChunkRows = 1024;  // rows per share of a column sum

template <class T>
Vectorized<T> sigmoid(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1));
  return one / (one + x.neg().exp());
}

// Loads the k <= size() values at p (the rest zero): H need not be a multiple of the vector's width.
template <class T>
Vectorized<T> load(const T* p, int64_t k) {
  return Vectorized<T>::loadu(p, k);
}

// Each of tensors (name, tensor) on the CPU, contiguous, of the first one's floating type.
void check_tensors(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  const at::ScalarType type = tensors.begin()->second->scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble, op, ": float32 or float64, not ", type);
  for (const auto& [name, t] : tensors) {
    seqmnist::check_dense(op, *t, name, type, -1);
  }
}

// u (rows, H), z (rows, 2H) and b (2H), checked; returns H.
int64_t check_gate_arguments(const at::Tensor& u, const at::Tensor& z, const at::Tensor& b) {
  check_tensors("gate", {{"u", &u}, {"z", &z}, {"b", &b}});
  TORCH_CHECK(u.dim() == 2 && z.dim() == 2 && b.dim() == 1, "gate: u and z must be (rows, H) and (rows, 2H), b (2H)");
  const int64_t H = u.size(1);
  TORCH_CHECK(H > 0 && z.size(0) == u.size(0) && z.size(1) == 2 * H && b.size(0) == 2 * H, "gate: u ", u.sizes(),
              ", z ", z.sizes(), " and b ", b.sizes(), " do not make (rows, H), (rows, 2H), (2H)");
  return H;
}

// m and v (rows, H), each other's shape, and D (H), checked; returns H.
int64_t check_skip_arguments(const at::Tensor& m, const at::Tensor& v, const at::Tensor& D) {
  check_tensors("skip", {{"m", &m}, {"v", &v}, {"D", &D}});
  TORCH_CHECK(m.dim() == 2 && D.dim() == 1 && m.size(1) > 0, "skip: m and v must be (rows, H), D (H)");
  TORCH_CHECK(v.sizes() == m.sizes() && D.size(0) == m.size(1), "skip: m ", m.sizes(), ", v ", v.sizes(), " and D ",
              D.sizes(), " do not make (rows, H), (rows, H), (H)");
  return m.size(1);
}

// Runs body(first row, last row, share) over chunks of kChunkRows rows on PyTorch's threads, each with
// its own zeroed share (width values); returns the shares' sum.
template <class T, class Body>
at::Tensor over_chunks(int64_t rows, int64_t width, const at::TensorOptions& options, const Body& body) {
  const int64_t chunks = std::max<int64_t>(1, (rows + kChunkRows - 1) / kChunkRows);
  at::Tensor shares = at::zeros({chunks, width}, options);
  T* ps = shares.data_ptr<T>();
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      body(c * kChunkRows, std::min(rows, (c + 1) * kChunkRows), ps + c * width);
    }
  });
  return shares.sum(0);
}

template <class T>
Vectorized<T> gelu_slope(const Vectorized<T>& y) {  // GELU'(y), as PyTorch's GeluBackward computes it
  const Vectorized<T> half(T(0.5)), one(T(1)), alpha(T(M_SQRT1_2)), beta(T(M_2_SQRTPI * M_SQRT1_2 * 0.5));
  const Vectorized<T> cdf = half * (one + (y * alpha).erf());
  const Vectorized<T> pdf = (Vectorized<T>(T(-0.5)) * y * y).exp() * beta;
  return cdf + y * pdf;
}

template <class T>
void skip_rows(const T* m, const T* v, const T* D, T* out, int64_t first, int64_t last, int64_t H) {
  using Vec = Vectorized<T>;
  for (int64_t r = first; r < last; ++r) {
    for (int64_t n = 0; n < H; n += Vec::size()) {
      const int64_t k = std::min<int64_t>(Vec::size(), H - n), i = r * H + n;
      at::native::vectorized_gelu(load(m + i, k) + load(v + i, k) * load(D + n, k)).store(out + i, k);
    }
  }
}

// dm and dv for rows first .. last, and the column sums of v dm added into share (H).
template <class T>
void skip_back_rows(const T* g, const T* m, const T* v, const T* D, T* dm, T* dv, T* share, int64_t first,
                    int64_t last, int64_t H) {
  using Vec = Vectorized<T>;
  for (int64_t r = first; r < last; ++r) {
    for (int64_t n = 0; n < H; n += Vec::size()) {
      const int64_t k = std::min<int64_t>(Vec::size(), H - n), i = r * H + n;
      const Vec d = load(D + n, k), vr = load(v + i, k);
      const Vec dy = load(g + i, k) * gelu_slope(load(m + i, k) + vr * d);
      dy.store(dm + i, k);
      (dy * d).store(dv + i, k);
      (load(share + n, k) + dy * vr).store(share + n, k);
    }
  }
}

// The gate's two factors at columns n .. n + k of a row zr of z: z_a + b_a and sigmoid(z_g + b_g).
template <class T>
std::pair<Vectorized<T>, Vectorized<T>> gate_factors(const T* zr, const T* b, int64_t n, int64_t k, int64_t H) {
  return {load(zr + n, k) + load(b + n, k), sigmoid(load(zr + H + n, k) + load(b + H + n, k))};
}

template <class T>
void gate_rows(const T* u, const T* z, const T* b, T* out, int64_t first, int64_t last, int64_t H) {
  using Vec = Vectorized<T>;
  for (int64_t r = first; r < last; ++r) {
    const T* zr = z + r * 2 * H;
    for (int64_t n = 0; n < H; n += Vec::size()) {
      const int64_t k = std::min<int64_t>(Vec::size(), H - n);
      const auto [a, s] = gate_factors(zr, b, n, k, H);
      (load(u + r * H + n, k) + a * s).store(out + r * H + n, k);
    }
  }
}

// dz for rows first .. last, and their column sums added into share (2H).
template <class T>
void gate_back_rows(const T* g, const T* z, const T* b, T* dz, T* share, int64_t first, int64_t last, int64_t H) {
  using Vec = Vectorized<T>;
  const Vec one(T(1));
  for (int64_t r = first; r < last; ++r) {
    const T* zr = z + r * 2 * H;
    T* dr = dz + r * 2 * H;
    for (int64_t n = 0; n < H; n += Vec::size()) {
      const int64_t k = std::min<int64_t>(Vec::size(), H - n);
      const Vec gr = load(g + r * H + n, k);
      const auto [a, s] = gate_factors(zr, b, n, k, H);
      const Vec da = gr * s, dg = gr * a * s * (one - s);
      da.store(dr + n, k);
      dg.store(dr + H + n, k);
      (load(share + n, k) + da).store(share + n, k);
      (load(share + H + n, k) + dg).store(share + H + n, k);
    }
  }
}

// A forward pass: out (rows, H) = rows(a, b, c, out, first, last, H) over a's rows, on PyTorch's threads.
template <class Rows>
at::Tensor over_rows(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, int64_t H, const Rows& rows) {
  at::Tensor out = at::empty({a.size(0), H}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "gate.cpp", [&] {
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>();
    const scalar_t* pc = c.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, a.size(0), 256, [&](int64_t first, int64_t last) { rows(pa, pb, pc, po, first, last, H); });
  });
  return out;
}

// out (rows, H) = u + (z_a + b_a) sigmoid(z_g + b_g).
at::Tensor gate_forward(const at::Tensor& u, const at::Tensor& z, const at::Tensor& b) {
  return over_rows(u, z, b, check_gate_arguments(u, z, b), [](auto... args) { gate_rows(args...); });
}

// (dL/dz, dL/db) from g = dL/dout (rows, H), and z and b as the forward pass had them.
std::vector<at::Tensor> gate_backward(const at::Tensor& g, const at::Tensor& z, const at::Tensor& b) {
  const int64_t H = check_gate_arguments(g, z, b);
  at::Tensor dz = at::empty_like(z), db;
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "gate_backward", [&] {
    const scalar_t *pg = g.const_data_ptr<scalar_t>(), *pz = z.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    scalar_t* pd = dz.data_ptr<scalar_t>();
    db = over_chunks<scalar_t>(g.size(0), 2 * H, z.options(), [&](int64_t first, int64_t last, scalar_t* share) {
      gate_back_rows(pg, pz, pb, pd, share, first, last, H);
    });
  });
  return {dz, db};
}

// GELU(m + D v), (rows, H).
at::Tensor skip_forward(const at::Tensor& m, const at::Tensor& v, const at::Tensor& D) {
  return over_rows(m, v, D, check_skip_arguments(m, v, D), [](auto... args) { skip_rows(args...); });
}

// (dL/dm, dL/dv, dL/dD) from g = dL/dout, and m, v and D as the forward pass had them.
std::vector<at::Tensor> skip_backward(const at::Tensor& g, const at::Tensor& m, const at::Tensor& v, const at::Tensor& D) {
  const int64_t H = check_skip_arguments(m, v, D);
  check_skip_arguments(g, v, D);
  at::Tensor dm = at::empty_like(m), dv = at::empty_like(v), dD;
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "skip_backward", [&] {
    const scalar_t *pg = g.const_data_ptr<scalar_t>(), *pm = m.const_data_ptr<scalar_t>();
    const scalar_t *pv = v.const_data_ptr<scalar_t>(), *pD = D.const_data_ptr<scalar_t>();
    scalar_t *pdm = dm.data_ptr<scalar_t>(), *pdv = dv.data_ptr<scalar_t>();
    dD = over_chunks<scalar_t>(m.size(0), H, m.options(), [&](int64_t first, int64_t last, scalar_t* share) {
      skip_back_rows(pg, pm, pv, pD, pdm, pdv, share, first, last, H);
    });
  });
  return {dm, dv, dD};
}

}  // namespace seqmnist
