// The engine's two sequential loops and the loss's gradient, compiled (see
// engine.py for the math and the buffers). Python drives everything else.
// At batch 100, hidden 200 on the 2-core CPU these ran 1.25-1.3x faster than
// the same engine's Python loops on two threads, 1.13x on one (docs/speed.md):
//
// * Fused elementwise passes: the centred sigmoid and the tanh' scaling are
//   one pass each over the rows a multiply just wrote, while they are in
//   cache. PyTorch's sigmoid on those strided rows (200 of 224 floats) took
//   ~65 us a step, single-threaded; this takes a few.
// * One slice of the batch per thread: images are independent through the
//   recurrence, so each thread runs all 28 steps on its own rows, with
//   single-threaded multiplies (as inside any parallel region). Three
//   fork/joins a batch instead of one per multiply and per large elementwise
//   operation, and the elementwise passes run on both cores. The multiplies
//   themselves gain little: two (50 x 200)(200 x 224) at once ran at ~115
//   GFLOP/s, one (100 x 200)(200 x 224) on two threads at ~110.
// * The weight gradients summed step by step, per slice, while grad[k] is in
//   cache: (200 x 50)(50 x 224) runs at ~85 GFLOP/s on one core, where one
//   (200 x 2,900)(2,900 x 224) multiply after the loop ran at ~110-140 on two.
// * The loss's gradient in one pass per row of logits, where PyTorch took
//   nine small operations (~0.5 ms a batch; now ~0.15 ms).

#if defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>

namespace {

using Vec = at::vec::Vectorized<float>;

// A slice smaller than this gives the multiply too few rows to run well.
constexpr int64_t kMinSliceRows = 32;
// The loss pass's work per thread, at least: fewer images are not worth a thread.
constexpr int64_t kImagesPerTask = 32;

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

// g = p (1/4 - r^2) for n floats: tanh' = 4 (1/4 - r^2), the 4 being in the weights.
void scale_by_slope(const float* p, const float* r, float* g, int64_t n) {
  for (int64_t j = 0; j < n; ++j) g[j] = p[j] * (0.25f - r[j] * r[j]);
}

int64_t slice_count(int64_t batch) {
  return std::clamp<int64_t>(batch / kMinSliceRows, 1, at::get_num_threads());
}

// Runs body(slice, first, count) on `slices` disjoint slices of the batch, one per thread. The
// workers get the caller's PyTorch settings (grad mode, inference mode, ...), which are per thread.
template <class Body>
void over_batch_slices(int64_t batch, int64_t slices, const Body& body) {
  const at::ThreadLocalState caller;
  at::parallel_for(0, slices, 1, [&](int64_t first, int64_t last) {
    const at::ThreadLocalStateGuard same_settings(caller);
    for (int64_t s = first; s < last; ++s) {
      const int64_t begin = batch * s / slices;
      body(s, begin, batch * (s + 1) / slices - begin);
    }
  });
}

void check_buffers(const at::Tensor& steps, const at::Tensor& state) {
  for (const at::Tensor* t : {&steps, &state}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 3,
                "engine buffers must be contiguous float32 CPU tensors of 3 dimensions");
  }
  TORCH_CHECK(steps.size(0) == state.size(0) && steps.size(1) == state.size(1) && steps.size(2) >= state.size(2),
              "engine buffers disagree in shape");
}

}  // namespace

// fused[k] += r_k M, then r_{k+1} = sigmoid(fused[k][:, :hidden]) - 1/2, for k = 0..T-1;
// then the last row's logits. fused holds the input projections, r_0 = 0 (engine.forward_states).
void forward_recurrence(const at::Tensor& fused, const at::Tensor& state, const at::Tensor& M) {
  check_buffers(fused, state);
  const int64_t rows = fused.size(0) - 1, hidden = state.size(2), width = fused.size(2);
  TORCH_CHECK(M.dim() == 2 && M.size(0) == hidden && M.size(1) == width, "engine weights disagree in shape");
  const at::Tensor readout = M.narrow(1, hidden, width - hidden);
  pybind11::gil_scoped_release no_gil;
  over_batch_slices(fused.size(1), slice_count(fused.size(1)), [&](int64_t, int64_t begin, int64_t count) {
    const at::Tensor F = fused.narrow(1, begin, count), S = state.narrow(1, begin, count);
    for (int64_t k = 0; k < rows; ++k) {
      at::Tensor f = F.select(0, k);
      f.addmm_(S.select(0, k), M);
      const float* pre = f.const_data_ptr<float>();
      float* r = S.select(0, k + 1).data_ptr<float>();
      for (int64_t i = 0; i < count; ++i) centred_sigmoid(pre + i * width, r + i * hidden, hidden);
    }
    F.select(0, rows).narrow(1, hidden, width - hidden).addmm_(S.select(0, rows), readout);
  });
}

// grad[k][:, :hidden] = (grad[k + 1] WV4T)[:, :hidden] * (1/4 - r_{k+1}^2), for k = T-1..0,
// and the weight gradients' sums: returns (sum_k x_k^T grad[k][:, :hidden], sum_k r_k^T grad[k]).
//
// WV4T has zero columns up to a multiple of 16: MKL writes a contiguous scratch of such rows ~10%
// faster than the 200 strided columns of grad, and the scaling pass copies them over. Each slice
// sums its own weight gradients (see the header); the slices' sums are added at the end.
std::tuple<at::Tensor, at::Tensor> backward_recurrence(const at::Tensor& grad, const at::Tensor& state,
                                                       const at::Tensor& inputs, const at::Tensor& WV4T) {
  check_buffers(grad, state);
  const int64_t rows = grad.size(0) - 1, hidden = state.size(2), width = grad.size(2), padded = WV4T.size(1);
  TORCH_CHECK(WV4T.size(0) == width && padded >= hidden, "engine weights disagree in shape");
  TORCH_CHECK(inputs.dim() == 3 && inputs.size(0) == rows && inputs.size(1) == grad.size(1) && inputs.is_contiguous(),
              "engine inputs disagree in shape with the buffers");
  const int64_t slices = slice_count(grad.size(1));
  std::vector<at::Tensor> dU(slices), dWV(slices);
  {
    pybind11::gil_scoped_release no_gil;
    over_batch_slices(grad.size(1), slices, [&](int64_t slice, int64_t begin, int64_t count) {
      const at::Tensor G = grad.narrow(1, begin, count), S = state.narrow(1, begin, count);
      const at::Tensor X = inputs.narrow(1, begin, count);
      at::Tensor scratch = at::empty({count, padded}, grad.options());
      at::Tensor u = at::zeros({inputs.size(2), hidden}, grad.options());
      at::Tensor w = at::zeros({hidden, width}, grad.options());
      w.addmm_(S.select(0, rows).t(), G.select(0, rows));  // the last row's logits
      const float* product = scratch.const_data_ptr<float>();
      for (int64_t k = rows - 1; k >= 0; --k) {
        at::mm_out(scratch, G.select(0, k + 1), WV4T);
        const at::Tensor g = G.select(0, k);
        float* out = g.data_ptr<float>();
        const float* r = S.select(0, k + 1).const_data_ptr<float>();
        for (int64_t i = 0; i < count; ++i) scale_by_slope(product + i * padded, r + i * hidden, out + i * width, hidden);
        if (k > 0) w.addmm_(S.select(0, k).t(), g);  // r_0 = 0
        u.addmm_(X.select(0, k).t(), g.narrow(1, 0, hidden));
      }
      dU[slice] = u;
      dWV[slice] = w;
    });
  }
  return {at::sum(at::stack(dU), 0), at::sum(at::stack(dWV), 0)};
}

// Each image's loss, -log of its mean softmax at the label, and the gradient of that loss in every
// logit z_t = fused[t][b][first..first + classes), t = 1..T, written to the same place in grad:
// dloss_b/dz_t[c] = -p_t[y] ([c == y] - p_t[c]) / (T m_y), with p_t = softmax(z_t), m = mean_t p_t.
// In PyTorch this was nine small operations (~0.5 ms a batch). Rows outermost, so that both passes
// walk the buffers in memory order; the first pass leaves p_t in grad for the second.
at::Tensor losses_and_logit_grads(const at::Tensor& fused, const at::Tensor& labels, const at::Tensor& grad,
                                  int64_t first, int64_t classes) {
  check_buffers(fused, grad);
  TORCH_CHECK(fused.sizes() == grad.sizes() && first + classes <= fused.size(2), "engine buffers disagree in shape");
  TORCH_CHECK(labels.device().is_cpu() && labels.scalar_type() == at::kLong && labels.dim() == 1 &&
                  labels.is_contiguous() && labels.numel() == fused.size(1),
              "labels must be one int64 per image, on the CPU");
  const int64_t rows = fused.size(0) - 1, batch = fused.size(1), width = fused.size(2);
  const int64_t* y = labels.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) TORCH_CHECK(y[b] >= 0 && y[b] < classes, "label out of range");
  at::Tensor losses = at::zeros({batch}, fused.options());
  const float* Z = fused.const_data_ptr<float>();
  float* G = grad.data_ptr<float>();
  float* loss = losses.data_ptr<float>();
  pybind11::gil_scoped_release no_gil;
  at::parallel_for(0, batch, kImagesPerTask, [&](int64_t begin, int64_t end) {
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
  });
  return losses;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_recurrence", &forward_recurrence);
  m.def("backward_recurrence", &backward_recurrence);
  m.def("losses_and_logit_grads", &losses_and_logit_grads);
}
