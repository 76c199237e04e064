// The engine's two sequential loops and the loss's gradient, compiled (see
// engine.py for the math and the buffers). Python drives the rest: autograd,
// the optimiser, the buffers' allocation. What each part bought, measured at
// batch 100, hidden 200 on the 2-core CPU (docs/speed.md):
//
// * Fused elementwise passes: the centred sigmoid and the tanh' scaling are
//   one pass each over the rows a multiply just wrote, while they are in
//   cache. PyTorch's sigmoid on those strided rows (200 of 224 floats) took
//   ~65 us a step, single-threaded; this takes a few.
// * One slice of the batch per thread: images are independent through the
//   recurrence, so each thread runs all 28 steps on its own rows, with
//   single-threaded multiplies. Two fork/joins a batch instead of one per
//   multiply and per large elementwise operation, and the elementwise passes
//   run on both cores.
// * The weight gradients summed step by step, per slice, while the step's
//   gradient is in cache, rather than in one multiply after the loop.
// * The loss and its gradient in one pass per row of logits, inside the
//   forward pass's slices, where PyTorch took nine small operations (~0.5 ms
//   a batch).
//   With the two loops in C++ (calling MKL through ATen), these made a batch
//   1.25-1.3x faster than the Python loops on two threads, 1.13x on one.
// * BLAS called directly with raw pointers: each of the ~170 multiplies a
//   batch skips ATen's dispatch and the tensor views around it; the slices'
//   sums are added and scaled in one serial pass (ATen's handed them to the
//   thread pool, ~50 us a batch). With the loss moved into the forward
//   slices: 1.09-1.11x on two threads, 1.07x on one.
// * Each step reads [r_k | x_k] (engine.Workspace): the input projection
//   joins the step's multiply, and dU joins the weight-gradient multiply,
//   instead of a (2,800 x 28)(28 x 224) multiply (~0.3-0.45 ms, MKL runs an
//   inner dimension of 28 poorly) and 28 thin (28 x 50)(50 x 200) ones; the
//   step weights are filled here (five PyTorch operations, ~0.25 ms, before).
//   A further 1.06x on both thread counts.
// * Each step's product lands in a small buffer of the slice's own, reused
//   every step and so in cache, rather than in the whole-batch buffers
//   (2.6 MB each, out of cache): only the logits are written out in the
//   forward pass, and the backward pass keeps its step gradients in two
//   rows. A further 1.08x on two threads, 1.03x on one.
// Together 1.26x over the previous engine on two threads (1.16x on one),
// interleaved in one process.

#if defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <optional>

// BLAS's own multiply, which PyTorch's CPU library carries and exports (MKL in the x86 wheels),
// declared as PyTorch itself declares and calls it (32-bit integers). Called directly, each of the
// ~170 small multiplies of a batch skips ATen's dispatch and the tensor views around it. Where
// PyTorch exports no sgemm_, this module fails to load and engine.py falls back to its Python
// loops, with one line saying so.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc);

namespace {

using Vec = at::vec::Vectorized<float>;

// A slice smaller than this gives the multiply too few rows to run well.
constexpr int64_t kMinSliceRows = 32;

// C = alpha op(A) B + beta C for row-major matrices with row strides lda, ldb, ldc; op(A) is
// m x k, stored k x m when transposed. (Column-major BLAS sees each matrix transposed:
// C^T = B^T op(A)^T.)
void gemm(bool transpose_a, int64_t m, int64_t n, int64_t k, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const int M = n, N = m, K = k, la = lda, lb = ldb, lc = ldc;
  sgemm_("N", transpose_a ? "T" : "N", &M, &N, &K, &alpha, B, &lb, A, &la, &beta, C, &lc);
}

// r = sigmoid(x) - 1/2 for n floats: the state of the sigmoid trick.
void centred_sigmoid(const float* x, float* r, int64_t n) {
  const Vec one(1.f), half(0.5f);
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) {
    const Vec v = Vec::loadu(x + j);
    ((one + v.neg().exp_u20()).reciprocal() - half).store(r + j);
  }
  for (; j < n; ++j) r[j] = 1.f / (1.f + std::exp(-x[j])) - 0.5f;
}

// g *= 1/4 - r^2 for n floats: tanh' = 4 (1/4 - r^2), the 4 being in the weights.
void scale_by_slope(float* g, const float* r, int64_t n) {
  for (int64_t j = 0; j < n; ++j) g[j] *= 0.25f - r[j] * r[j];
}

int64_t slice_count(int64_t batch) {
  return std::clamp<int64_t>(batch / kMinSliceRows, 1, at::get_num_threads());
}

// Runs body(slice, first, count) on `slices` disjoint slices of the batch, one per thread.
// The bodies call BLAS on raw pointers and no ATen operation, so they need none of the caller's
// PyTorch settings (grad mode, inference mode), which are per thread.
template <class Body>
void over_batch_slices(int64_t batch, int64_t slices, const Body& body) {
  at::parallel_for(0, slices, 1, [&](int64_t first, int64_t last) {
    for (int64_t s = first; s < last; ++s) {
      const int64_t begin = batch * s / slices;
      body(s, begin, batch * (s + 1) / slices - begin);
    }
  });
}

void check_buffer(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "engine buffers and weights must be contiguous float32 CPU tensors");
}

void check_buffers(const at::Tensor& steps, const at::Tensor& state) {
  for (const at::Tensor* t : {&steps, &state}) {
    check_buffer(*t);
    TORCH_CHECK(t->dim() == 3, "engine buffers must have 3 dimensions");
  }
  TORCH_CHECK(steps.size(0) == state.size(0) && steps.size(1) == state.size(1), "engine buffers disagree in shape");
}

// Rows begin..end of the batch: each image's loss, -log of its mean softmax at the label, and
// the gradient of that loss in every logit z_t = fused[t][b][first..first + classes), t = 1..T,
// written to the same place in grad:
// dloss_b/dz_t[c] = -p_t[y] ([c == y] - p_t[c]) / (T m_y), with p_t = softmax(z_t), m = mean_t p_t.
// In PyTorch this was nine small operations (~0.5 ms a batch). Rows outermost, so that both passes
// walk the buffers in memory order; the first pass leaves p_t in grad for the second.
void image_losses(const at::Tensor& fused, const int64_t* y, const at::Tensor& grad, float* loss,
                  int64_t first, int64_t classes, int64_t begin, int64_t end) {
  const int64_t rows = fused.size(0) - 1, batch = fused.size(1), width = fused.size(2);
  const float* Z = fused.const_data_ptr<float>();
  float* G = grad.data_ptr<float>();
  std::vector<float> mean_y(end - begin, 0.f);
  for (int64_t t = 1; t <= rows; ++t) {
    for (int64_t b = begin; b < end; ++b) {
      const float* z = Z + (t * batch + b) * width + first;
      float* p = G + (t * batch + b) * width + first;
      const float top = *std::max_element(z, z + classes);
      float sum = 0.f;
      for (int64_t c = 0; c < classes; ++c) sum += p[c] = std::exp(z[c] - top);
      for (int64_t c = 0; c < classes; ++c) p[c] /= sum;
      mean_y[b - begin] += p[y[b]] / rows;
    }
  }
  for (int64_t b = begin; b < end; ++b) loss[b] = -std::log(mean_y[b - begin]);
  for (int64_t t = 1; t <= rows; ++t) {
    for (int64_t b = begin; b < end; ++b) {
      float* g = G + (t * batch + b) * width + first;
      const float py = g[y[b]], scale = -py / (rows * mean_y[b - begin]);
      for (int64_t c = 0; c < classes; ++c) g[c] = scale * ((c == y[b]) - g[c]);
    }
  }
}

// The gradients of U, W, V from the slices' sums of [r_k | x_k]^T grad[k], added up here, on this
// thread, into the first slice's (they are small, and ATen would hand them to the thread pool):
// dU = scale x^T G[:, :hidden], [dW | dV] = 2 scale r^T G (s = 2 r), each contiguous.
std::tuple<at::Tensor, at::Tensor, at::Tensor> weight_gradients(const at::Tensor& sums, int64_t hidden,
                                                                int64_t classes, double scale) {
  const int64_t slices = sums.size(0), reads = sums.size(1), width = sums.size(2), n = reads * width;
  float* total = sums.data_ptr<float>();
  for (int64_t s = 1; s < slices; ++s) {
    const float* part = total + s * n;
    for (int64_t i = 0; i < n; ++i) total[i] += part[i];
  }
  const at::Tensor dU = at::empty({reads - hidden, hidden}, sums.options());
  const at::Tensor dW = at::empty({hidden, hidden}, sums.options());
  const at::Tensor dV = at::empty({hidden, classes}, sums.options());
  float *u = dU.data_ptr<float>(), *w = dW.data_ptr<float>(), *v = dV.data_ptr<float>();
  const float by_r = 2 * scale, by_x = scale;
  for (int64_t i = 0; i < hidden; ++i) {
    const float* row = total + i * width;
    for (int64_t j = 0; j < hidden; ++j) w[i * hidden + j] = by_r * row[j];
    for (int64_t c = 0; c < classes; ++c) v[i * classes + c] = by_r * row[hidden + c];
  }
  for (int64_t f = 0; f < reads - hidden; ++f) {
    const float* row = total + (hidden + f) * width;
    for (int64_t j = 0; j < hidden; ++j) u[f * hidden + j] = by_x * row[j];
  }
  return {dU, dW, dV};
}

// The step weights [[4W | 2V | 0], [2U | 0 | 0]] (engine.Workspace): one multiply of [r_k | x_k] by
// them gives 2 a_{k+1} and z_k. The zeros were written when M was made.
void fill_step_weights(const at::Tensor& U, const at::Tensor& W, const at::Tensor& V, const at::Tensor& M) {
  const int64_t inputs = U.size(0), hidden = W.size(0), classes = V.size(1), width = M.size(1);
  const float *u = U.const_data_ptr<float>(), *w = W.const_data_ptr<float>(), *v = V.const_data_ptr<float>();
  float* m = M.data_ptr<float>();
  for (int64_t i = 0; i < hidden; ++i) {
    for (int64_t j = 0; j < hidden; ++j) m[i * width + j] = 4 * w[i * hidden + j];
    for (int64_t c = 0; c < classes; ++c) m[i * width + hidden + c] = 2 * v[i * classes + c];
  }
  for (int64_t f = 0; f < inputs; ++f)
    for (int64_t j = 0; j < hidden; ++j) m[(hidden + f) * width + j] = 2 * u[f * hidden + j];
}

// 4 [W | V]^T into the first columns of WV4T (the rest stay zero): the backward step's weights.
void fill_backward_weights(const at::Tensor& W, const at::Tensor& V, const at::Tensor& WV4T) {
  const int64_t hidden = W.size(0), classes = V.size(1), padded = WV4T.size(1);
  const float *w = W.const_data_ptr<float>(), *v = V.const_data_ptr<float>();
  float* out = WV4T.data_ptr<float>();
  for (int64_t j = 0; j < hidden; ++j)
    for (int64_t i = 0; i < hidden; ++i) out[j * padded + i] = 4 * w[i * hidden + j];
  for (int64_t c = 0; c < classes; ++c)
    for (int64_t i = 0; i < hidden; ++i) out[(hidden + c) * padded + i] = 4 * v[i * classes + c];
}

void check_weights(const at::Tensor& U, const at::Tensor& W, const at::Tensor& V, const at::Tensor& state,
                   const at::Tensor& steps) {
  for (const at::Tensor* t : {&U, &W, &V}) {
    check_buffer(*t);
    TORCH_CHECK(t->dim() == 2, "engine weights must be matrices");
  }
  const int64_t hidden = W.size(0);
  TORCH_CHECK(U.size(1) == hidden && W.size(1) == hidden && V.size(0) == hidden, "engine weights disagree in shape");
  TORCH_CHECK(state.size(2) >= hidden + U.size(0) && steps.size(2) >= hidden + V.size(1),
              "engine weights disagree in shape with the buffers");
}

}  // namespace

// For k = 0..T-1: [2 a_{k+1} | z_k] = [r_k | x_k] M, then r_{k+1} = sigmoid(2 a_{k+1}) - 1/2; then
// the last row's logits. Each step's product goes to a buffer of the slice's own; only z_k reaches
// fused (its logits columns; the last row also gets its zero padding), the rest of fused is left
// as it was. r_0 = 0 and x_T = 0 in state (engine.Workspace). Each slice copies its images' input
// rows into its states.
// With labels (training), each slice goes on to its images' losses and the logits' gradients
// (image_losses, into grad), while its logits are in cache; returns the losses.
std::optional<at::Tensor> forward_recurrence(const at::Tensor& fused, const at::Tensor& state, const at::Tensor& x,
                                             const at::Tensor& U, const at::Tensor& W, const at::Tensor& V,
                                             const at::Tensor& M, const std::optional<at::Tensor>& labels,
                                             const std::optional<at::Tensor>& grad) {
  check_buffers(fused, state);
  check_buffer(x);
  check_buffer(M);
  check_weights(U, W, V, state, fused);
  const int64_t rows = fused.size(0) - 1, batch = fused.size(1), width = fused.size(2), stride = state.size(2);
  const int64_t inputs = U.size(0), hidden = W.size(0), classes = V.size(1), reads = hidden + inputs;
  TORCH_CHECK(x.dim() == 3 && x.size(0) == batch && x.size(1) == rows && x.size(2) == inputs,
              "engine inputs disagree in shape with the buffers");
  TORCH_CHECK(M.dim() == 2 && M.size(0) == reads && M.size(1) == width, "engine step weights disagree in shape");
  std::optional<at::Tensor> losses;
  const int64_t* y = nullptr;
  if (labels) {
    TORCH_CHECK(grad && grad->sizes() == fused.sizes(), "the loss needs a gradient buffer shaped like fused");
    check_buffer(*grad);
    TORCH_CHECK(labels->device().is_cpu() && labels->scalar_type() == at::kLong && labels->dim() == 1 &&
                    labels->is_contiguous() && labels->numel() == batch,
                "labels must be one int64 per image, on the CPU");
    y = labels->const_data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) TORCH_CHECK(y[b] >= 0 && y[b] < classes, "label out of range");
    losses = at::empty({batch}, fused.options());
  }
  fill_step_weights(U, W, V, M);
  float* F = fused.data_ptr<float>();
  float* S = state.data_ptr<float>();
  const float* X = x.const_data_ptr<float>();
  const float* weights = M.const_data_ptr<float>();
  float* loss = losses ? losses->data_ptr<float>() : nullptr;
  pybind11::gil_scoped_release no_gil;
  over_batch_slices(batch, slice_count(batch), [&](int64_t, int64_t begin, int64_t count) {
    // Each step's product lands in this slice's own small buffer, which stays in cache; only the
    // logits go on to fused (the sigmoid consumes the rest at once).
    std::vector<float> product(count * width);
    float* f = product.data();
    for (int64_t k = 0; k < rows; ++k) {
      float* s = S + (k * batch + begin) * stride;
      for (int64_t i = 0; i < count; ++i) std::copy_n(X + ((begin + i) * rows + k) * inputs, inputs, s + i * stride + hidden);
      if (k == 0) {  // r_0 = 0: the input projection alone
        gemm(false, count, width, inputs, 1.f, s + hidden, stride, weights + hidden * width, width, 0.f, f, width);
      } else {
        gemm(false, count, width, reads, 1.f, s, stride, weights, width, 0.f, f, width);
      }
      for (int64_t i = 0; i < count; ++i) {
        centred_sigmoid(f + i * width, s + (batch + i) * stride, hidden);
        std::copy_n(f + i * width + hidden, classes, F + (k * batch + begin + i) * width + hidden);
      }
    }
    gemm(false, count, width - hidden, hidden, 1.f, S + (rows * batch + begin) * stride, stride, weights + hidden,
         width, 0.f, F + (rows * batch + begin) * width + hidden, width);
    if (y) image_losses(fused, y, *grad, loss, hidden, classes, begin, begin + count);
  });
  return losses;
}

// For k = T-1..0: g_k = [dL/da_{k+1} | dL/dz_k | 0], with dL/da_{k+1} = (g_{k+1} WV4T)[:, :hidden] *
// (1/4 - r_{k+1}^2) and dL/dz_k from the loss (grad's logits columns, image_losses); returns the
// gradients of U, W, V from the sums of [r_k | x_k]^T g_k (s = 2 r), scaled by `scale`.
//
// g_k lives only while steps k and k - 1 need it, in two rows per slice that stay in cache (writing
// to the whole gradient buffer, out of cache, was slower). WV4T has zero columns up to a multiple
// of 16: MKL runs the step multiply faster so; the logits' gradients overwrite the extra columns.
// Each slice sums its own weight gradients (see the header); the slices' sums are added at the end.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_recurrence(const at::Tensor& grad, const at::Tensor& state,
                                                                   const at::Tensor& U, const at::Tensor& W,
                                                                   const at::Tensor& V, const at::Tensor& WV4T,
                                                                   double scale) {
  check_buffers(grad, state);
  check_buffer(WV4T);
  check_weights(U, W, V, state, grad);
  const int64_t rows = grad.size(0) - 1, batch = grad.size(1), width = grad.size(2), stride = state.size(2);
  const int64_t inputs = U.size(0), hidden = W.size(0), classes = V.size(1), reads = hidden + inputs;
  TORCH_CHECK(WV4T.dim() == 2 && WV4T.size(0) == width && WV4T.size(1) >= hidden, "engine weights disagree in shape");
  // Columns of the step multiply: hidden, rounded up, but no further than the logits' columns.
  const int64_t padded = WV4T.size(1), columns = std::min(padded, hidden + classes);
  fill_backward_weights(W, V, WV4T);
  const int64_t slices = slice_count(batch);
  // Each slice's own sums, added up at the end: first written with beta 0, so no zeroing pass.
  at::Tensor sums = at::empty({slices, reads, width}, grad.options());
  const float* dZ = grad.const_data_ptr<float>();
  const float* S = state.const_data_ptr<float>();
  const float* weights = WV4T.const_data_ptr<float>();
  {
    pybind11::gil_scoped_release no_gil;
    over_batch_slices(batch, slices, [&](int64_t slice, int64_t begin, int64_t count) {
      float* sum = sums.data_ptr<float>() + slice * reads * width;
      std::vector<float> two_rows(2 * count * width, 0.f);  // g_T's dL/da_{T+1} = 0 and the padding stay 0
      auto g_row = [&](int64_t k) { return two_rows.data() + (k % 2) * count * width; };
      auto with_logit_grads = [&](int64_t k) {
        float* g = g_row(k);
        for (int64_t i = 0; i < count; ++i)
          std::copy_n(dZ + (k * batch + begin + i) * width + hidden, classes, g + i * width + hidden);
        return g;
      };
      const float* last = S + (rows * batch + begin) * stride;
      gemm(true, reads, width, count, 1.f, last, stride, with_logit_grads(rows), width, 0.f, sum, width);
      for (int64_t k = rows - 1; k >= 0; --k) {
        float* g = g_row(k);
        const float* s = S + (k * batch + begin) * stride;
        gemm(false, count, columns, width, 1.f, g_row(k + 1), width, weights, padded, 0.f, g, width);
        for (int64_t i = 0; i < count; ++i) scale_by_slope(g + i * width, s + (batch + i) * stride, hidden);
        with_logit_grads(k);
        if (k == 0) {  // r_0 = 0: only x_0 adds to the sums
          gemm(true, inputs, width, count, 1.f, s + hidden, stride, g, width, 1.f, sum + hidden * width, width);
        } else {
          gemm(true, reads, width, count, 1.f, s, stride, g, width, 1.f, sum, width);
        }
      }
    });
  }
  return weight_gradients(sums, hidden, classes, scale);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_recurrence", &forward_recurrence);
  m.def("backward_recurrence", &backward_recurrence);
}
