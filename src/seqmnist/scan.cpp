// Diagonal recurrences, run a sequence at a time once their inputs are made for all steps at once: the
// LRU's complex linear one, then the IndRNN's relu one (further down). Built into the engine's module.
//
// The complex diagonal linear recurrence of the LRU, forward and backward, compiled (see cells/linear.py
// for the model around it and the autograd glue):
//
//   h_t = lambda * h_{t-1} + x_t,   h_{-1} = 0,   t = 0 .. L-1,   lambda, x_t, h_t in C^N
//
// Each row of x and h, (batch, L, 2N), holds one step's N complex values as two halves [re | im]:
// the input projection u_t (gamma B) is then one real multiply by [gamma B_re; gamma B_im], and the
// readout Re(C h_t) one by [C_re^T; -C_im^T]. lambda is (2, N): its real parts, then its imaginary.
//
// The backward pass, with g_t = dL/dRe h_t + i dL/dIm h_t the gradient the layers above hand in:
//   a_t = g_t + conj(lambda) a_{t+1}              (a_L = 0)   dL/dx_t = a_t
//   dL/dlambda = sum over images and t of a_t conj(h_{t-1})
// Both loops are elementwise in the state, so each (image, block of 16 states) is a task of its own:
// 784 steps of a few multiplies, which PyTorch would run as 784 calls of a few microseconds each.
// Float and double (the float64 tests and gradcheck).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "library.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace seqmnist {

// States per task: 16 real and 16 imaginary floats are one cache line each.
constexpr int64_t kBlock = 16;

// x's sizes (batch, L, 2N) and lambda's (2, N), checked; returns N.
int64_t check_scan_arguments(const at::Tensor& x, const at::Tensor& lambda) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "scan: x must be float32 or float64, not ",
              x.scalar_type());
  seqmnist::check_dense("scan", x, "x", x.scalar_type(), 3);
  seqmnist::check_dense("scan", lambda, "lambda", x.scalar_type(), 2);
  const int64_t N = lambda.size(1);
  TORCH_CHECK(lambda.size(0) == 2 && N > 0, "scan: lambda must be (2, N) with N > 0, not ", lambda.sizes());
  TORCH_CHECK(x.size(2) == 2 * N, "scan: x's rows must hold 2N = ", 2 * N, " values ([re | im]), not ", x.size(2));
  return N;
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& x) {
  seqmnist::check_dense("scan", t, name, x.scalar_type(), 3);
  TORCH_CHECK(t.sizes() == x.sizes(), "scan: ", name, " must be shaped ", x.sizes(), ", not ", t.sizes());
}

// Runs body(image, first state, states) over every (image, block of states), on PyTorch's threads.
template <class Body>
void over_blocks(int64_t batch, int64_t N, const Body& body) {
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t n0 = (task % blocks) * kBlock;
      body(task / blocks, n0, std::min(kBlock, N - n0));
    }
  });
}

template <class T>
void forward_loop(const T* x, const T* lambda, T* h, int64_t batch, int64_t L, int64_t N) {
  over_blocks(batch, N, [&](int64_t i, int64_t n0, int64_t m) {
    const T *lr = lambda + n0, *li = lambda + N + n0;
    T re[kBlock] = {}, im[kBlock] = {};
    for (int64_t t = 0; t < L; ++t) {
      const int64_t row = (i * L + t) * 2 * N;
      const T *xr = x + row + n0, *xi = x + row + N + n0;
      T *hr = h + row + n0, *hi = h + row + N + n0;
      for (int64_t n = 0; n < m; ++n) {
        const T r = lr[n] * re[n] - li[n] * im[n] + xr[n];
        im[n] = lr[n] * im[n] + li[n] * re[n] + xi[n];
        re[n] = r;
        hr[n] = r;
        hi[n] = im[n];
      }
    }
  });
}

// dx and, per image, its share of dlambda (batch, 2N), summed over the images by the caller.
template <class T>
void backward_loop(const T* g, const T* h, const T* lambda, T* dx, T* dlambda, int64_t batch, int64_t L, int64_t N) {
  over_blocks(batch, N, [&](int64_t i, int64_t n0, int64_t m) {
    const T *lr = lambda + n0, *li = lambda + N + n0;
    T re[kBlock] = {}, im[kBlock] = {}, sum_re[kBlock] = {}, sum_im[kBlock] = {};
    for (int64_t t = L - 1; t >= 0; --t) {
      const int64_t row = (i * L + t) * 2 * N;
      const T *gr = g + row + n0, *gi = g + row + N + n0;
      T *ar = dx + row + n0, *ai = dx + row + N + n0;
      for (int64_t n = 0; n < m; ++n) {  // a_t = g_t + conj(lambda) a_{t+1}
        const T r = gr[n] + lr[n] * re[n] + li[n] * im[n];
        im[n] = gi[n] + lr[n] * im[n] - li[n] * re[n];
        re[n] = r;
        ar[n] = r;
        ai[n] = im[n];
      }
      if (t == 0) break;  // h_{-1} = 0
      const T *pr = h + row - 2 * N + n0, *pi = h + row - N + n0;
      for (int64_t n = 0; n < m; ++n) {  // a_t conj(h_{t-1})
        sum_re[n] += re[n] * pr[n] + im[n] * pi[n];
        sum_im[n] += im[n] * pr[n] - re[n] * pi[n];
      }
    }
    std::copy_n(sum_re, m, dlambda + i * 2 * N + n0);
    std::copy_n(sum_im, m, dlambda + i * 2 * N + N + n0);
  });
}

// h (batch, L, 2N) of x (batch, L, 2N) and lambda (2, N).
at::Tensor scan_forward(const at::Tensor& x, const at::Tensor& lambda) {
  const int64_t N = check_scan_arguments(x, lambda);
  at::Tensor h = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scan_forward", [&] {
    forward_loop(x.const_data_ptr<scalar_t>(), lambda.const_data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), x.size(0),
                 x.size(1), N);
  });
  return h;
}

// (dL/dx, dL/dlambda) from g = dL/dh and the forward pass's h.
std::vector<at::Tensor> scan_backward(const at::Tensor& g, const at::Tensor& h, const at::Tensor& lambda) {
  const int64_t N = check_scan_arguments(h, lambda);
  check_like(g, "g", h);
  at::Tensor dx = at::empty_like(h);
  at::Tensor shares = at::empty({h.size(0), 2 * N}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "scan_backward", [&] {
    backward_loop(g.const_data_ptr<scalar_t>(), h.const_data_ptr<scalar_t>(), lambda.const_data_ptr<scalar_t>(),
                  dx.data_ptr<scalar_t>(), shares.data_ptr<scalar_t>(), h.size(0), h.size(1), N);
  });
  return {dx, shares.sum(0).view({2, N})};
}

// The IndRNN's recurrence, forward and backward, for its layer-parallel path (cells/elementwise.py:
// one multiply over all steps makes a, this loop the states, PyTorch the rest):
//
//   h_t = max(0, a_t + b + w * h_{t-1}),   h_{-1} = 0,   a, h (batch, L, H), w, b (H)
//
// The backward pass, with g_t = dL/dh_t the gradient the layers above hand in:
//   d_t = (g_t + w d_{t+1}) [h_t > 0]      (d_L = 0)     dL/da_t = d_t
//   dL/dw = sum over images and t of d_t h_{t-1},   dL/db = sum of d_t
// The bias is added here rather than by the multiply (addmm would first copy it into every row of a,
// another pass over the largest tensor of a pixel step), and its gradient summed on the way.
// [h_t > 0] is the mask torch.relu's backward uses. Each image is a task: step t reads and writes
// one contiguous row of H values, right after the row of step t - 1 (in cache), and the loop over the
// row vectorises. Float and double (the float64 tests).
//
// A state decays by w < 1 at every blank pixel, d by w at every step back: over hundreds of steps
// both reach float's subnormal numbers, on which the multiplies around the scan crawl (a tenth of da
// subnormal makes the weight gradient's da^T h many times slower; docs/speed.md),
// and so do their products with the next layer's weights. Both are flushed to zero below 1e-30 in
// float (a term that small changes no sum of terms above 1e-23, and a gradient that counts is many
// orders above), so no multiply meets a subnormal; double keeps every value down to its own.
template <class T>
constexpr T flushed_below() {
  return std::is_same_v<T, float> ? T(1e-30) : std::numeric_limits<T>::min();
}

// a's sizes (batch, L, H), w's and b's (H), checked; returns H.
int64_t check_relu_scan_arguments(const at::Tensor& a, const at::Tensor& w, const at::Tensor& b) {
  TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble,
              "relu scan: a must be float32 or float64, not ", a.scalar_type());
  seqmnist::check_dense("scan", a, "a", a.scalar_type(), 3);
  seqmnist::check_dense("scan", w, "w", a.scalar_type(), 1);
  seqmnist::check_dense("scan", b, "b", a.scalar_type(), 1);
  const int64_t H = w.size(0);
  TORCH_CHECK(H > 0 && a.size(2) == H, "relu scan: a's rows must hold H = ", H, " values (w's size), not ", a.size(2));
  TORCH_CHECK(b.size(0) == H, "relu scan: b must hold H = ", H, " values, not ", b.size(0));
  return H;
}

// One step: h = max(0, a + b + w * previous), flushed. __restrict__: the rows never overlap, which lets
// the compiler vectorise the loop.
template <class T>
inline void relu_step(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ w,
                      const T* __restrict__ previous, T* __restrict__ h, int64_t H) {
  for (int64_t n = 0; n < H; ++n) {
    const T s = std::max(a[n] + b[n] + w[n] * previous[n], T(0));  // a NaN stays a NaN, as in torch.relu
    h[n] = s < flushed_below<T>() ? T(0) : s;
  }
}

// One step back: d = (g + carry) [h > 0], flushed; carry = w d; dw += d previous; db += d.
template <class T>
inline void relu_step_back(const T* __restrict__ g, const T* __restrict__ h, const T* __restrict__ w,
                           const T* __restrict__ previous, T* __restrict__ da, T* __restrict__ carry,
                           T* __restrict__ dw, T* __restrict__ db, int64_t H) {
  for (int64_t n = 0; n < H; ++n) {
    const T d = h[n] > T(0) ? g[n] + carry[n] : T(0);
    const T kept = std::abs(d) < flushed_below<T>() ? T(0) : d;
    da[n] = kept;
    carry[n] = w[n] * kept;
    dw[n] += kept * previous[n];
    db[n] += kept;
  }
}

template <class T>
void relu_forward_loop(const T* a, const T* w, const T* b, T* h, int64_t batch, int64_t L, int64_t H) {
  const std::vector<T> zeros(H, T(0));
  at::parallel_for(0, batch, 1, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      for (int64_t t = 0; t < L; ++t) {
        const int64_t row = (i * L + t) * H;
        relu_step(a + row, b, w, t ? h + row - H : zeros.data(), h + row, H);
      }
    }
  });
}

// da and, per image, its shares of dw and db (batch, 2H: [dw | db]), summed over the images by the caller.
template <class T>
void relu_backward_loop(const T* g, const T* h, const T* w, T* da, T* shares, int64_t batch, int64_t L, int64_t H) {
  const std::vector<T> zeros(H, T(0));
  at::parallel_for(0, batch, 1, [&](int64_t first, int64_t last) {
    std::vector<T> carry(H);  // w d_{t+1}
    for (int64_t i = first; i < last; ++i) {
      std::fill(carry.begin(), carry.end(), T(0));
      T* dw = shares + i * 2 * H;
      std::fill_n(dw, 2 * H, T(0));
      for (int64_t t = L - 1; t >= 0; --t) {
        const int64_t row = (i * L + t) * H;
        relu_step_back(g + row, h + row, w, t ? h + row - H : zeros.data(), da + row, carry.data(), dw, dw + H, H);
      }
    }
  });
}

// h (batch, L, H) of a (batch, L, H), w and b (H).
at::Tensor relu_scan_forward(const at::Tensor& a, const at::Tensor& w, const at::Tensor& b) {
  const int64_t H = check_relu_scan_arguments(a, w, b);
  at::Tensor h = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "relu_scan_forward", [&] {
    relu_forward_loop(a.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
                      h.data_ptr<scalar_t>(), a.size(0), a.size(1), H);
  });
  return h;
}

// (dL/da, dL/dw, dL/db) from g = dL/dh and the forward pass's h.
std::vector<at::Tensor> relu_scan_backward(const at::Tensor& g, const at::Tensor& h, const at::Tensor& w,
                                           const at::Tensor& b) {
  const int64_t H = check_relu_scan_arguments(h, w, b);
  check_like(g, "g", h);
  at::Tensor da = at::empty_like(h);
  at::Tensor shares = at::empty({h.size(0), 2 * H}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "relu_scan_backward", [&] {
    relu_backward_loop(g.const_data_ptr<scalar_t>(), h.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                       da.data_ptr<scalar_t>(), shares.data_ptr<scalar_t>(), h.size(0), h.size(1), H);
  });
  const at::Tensor sums = shares.sum(0);
  return {da, sums.slice(0, 0, H), sums.slice(0, H)};
}

}  // namespace seqmnist
