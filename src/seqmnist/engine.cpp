// The engine's sequential loops and losses, compiled (see engine.py for the math, the buffers and
// how Python drives them: autograd, the optimiser, the buffers' allocation, one call per layer).
//
// One layer of an elementwise recurrent cell, any of:
//   s_{k+1} = phi(x_k U + b + s_k W)        dense recurrence (vanilla: phi = tanh; relu, irnn: max(0, .))
//   s_{k+1} = phi(x_k U + b + w * s_k)      diagonal recurrence (indrnn), elementwise
// with, on the top layer, the logits z_k = s_k V + c of every step and the loss of a readout of them.
// The state kept is r = s / sigma (tanh: sigma = 2 and r = sigmoid(2a) - 1/2, see engine.py; relu:
// sigma = 1), the factors folded into the step weights M. The seed's model (tanh, dense, no bias,
// one layer, mean-softmax) runs exactly the operations it ran before this file served other cells.
//
// Its layout, and why (docs/speed.md has what each part was measured to buy, and where):
//
// * Fused elementwise passes: the activation and the slope scaling are one pass each over the rows
//   a multiply just wrote, while they are in cache.
// * One slice of the batch per thread: images are independent through the recurrence, so each
//   thread runs all steps on its own rows with single-threaded multiplies: two fork/joins a batch
//   and layer instead of one per operation, and the elementwise passes run on every core.
// * The weight gradients summed step by step, per slice, while the step's gradient is in cache.
// * The loss and its gradient in one pass per row of logits, inside the forward pass's slices.
// * BLAS called directly with raw pointers, skipping ATen's dispatch and views for each of a batch's
//   many small multiplies; the slices' sums added and scaled in one serial pass.
// * Each step reads [r_k | x_k | 1] (engine.Workspace): the input projection and the bias join the
//   step's multiply, dU and db the weight-gradient multiply (BLAS runs an inner dimension of 28 poorly).
// * Each step's product lands in a small buffer of the slice's own, reused every step and so in cache;
//   only the logits, in compact (T + 1, batch, classes) buffers, are written out.
// * A diagonal recurrence is not a multiply: its step multiplies only [x_k | 1] (and r_k by V for
//   the logits), and w * r_k is one more elementwise pass.

#if defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include "library.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

// BLAS's own multiply, which PyTorch's CPU library carries and exports (MKL in the x86 wheels),
// declared as PyTorch itself declares and calls it (32-bit integers). Called directly, each of the
// ~170 small multiplies of a batch skips ATen's dispatch and the tensor views around it. Where
// PyTorch exports no sgemm_, this module fails to load and the model falls back to PyTorch's own
// modules, with one line saying so.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc);

namespace {

using Vec = at::vec::Vectorized<float>;

// A slice smaller than this gives the multiply too few rows to run well.
constexpr int64_t kMinSliceRows = 32;
// The backward pass leaves blank rows out of a slice of at most this many (ActiveRows).
constexpr int64_t kMaxExactSumRows = 128;

enum Activation : int64_t { kTanh = 0, kRelu = 1 };
enum Readout : int64_t { kMeanSoftmax = 0, kLast = 1, kMeanLogits = 2 };

// C = alpha op(A) B + beta C for row-major matrices with row strides lda, ldb, ldc; op(A) is
// m x k, stored k x m when transposed. (Column-major BLAS sees each matrix transposed:
// C^T = B^T op(A)^T.) BLAS takes 32-bit sizes: every size and stride passed here is bounded by one
// that its entry point checked with check_blas_sizes, so the narrowing keeps every value.
void gemm(bool transpose_a, int64_t m, int64_t n, int64_t k, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
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

// r = phi(p) for n floats.
void activate(int64_t activation, const float* p, float* r, int64_t n) {
  if (activation == kTanh) {
    centred_sigmoid(p, r, n);
  } else {
    for (int64_t j = 0; j < n; ++j) r[j] = std::max(p[j], 0.f);
  }
}

// g *= phi'(a) / kappa for n floats, from the state r: tanh' = 1 - s^2 = 4 (1/4 - r^2), the 4 (kappa)
// being in the backward weights; relu' = [r > 0], kappa = 1.
void scale_by_slope(int64_t activation, float* g, const float* r, int64_t n) {
  if (activation == kTanh) {
    for (int64_t j = 0; j < n; ++j) g[j] *= 0.25f - r[j] * r[j];
  } else {
    for (int64_t j = 0; j < n; ++j) g[j] = r[j] > 0.f ? g[j] : 0.f;
  }
}

// sigma (s = sigma r), rho (the multiply yields rho a) and kappa (phi' = kappa slope(r)) of an activation.
struct Factors {
  double sigma, rho, kappa;
};

Factors factors(int64_t activation) {
  return activation == kTanh ? Factors{2.0, 2.0, 4.0} : Factors{1.0, 1.0, 1.0};
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

// The rows of a slice that step k must compute. Without a bias, an image whose first rows are blank
// keeps r = 0 and z = 0 exactly until it reads its first inked row: phi(0 U + 0 W) = 0. Its rows of
// those steps add exact zeros to every sum, so they are left out: MNIST's first ~5 rows are blank
// (17% of the 28-row model's row-steps, 60% of the 8-row one's, nearly all the 2-row one's).
// What is computed keeps its bits: the rows left keep their order; the weight gradients' sums over
// the batch only lose terms that are zero (up to kMaxExactSumRows rows, one block of MKL's); the
// first kMinActive rows of a slice are always computed, because MKL multiplies fewer than 4 rows
// another way (other roundings), while from 4 up each row's product is the same bits whatever rows
// share the multiply. Tests hold the engine with and without skipping to the same bits.
class ActiveRows {
 public:
  static constexpr int64_t kMinActive = 4;

  // lead[i]: image i's first inked step (first_inked_steps; nullptr: every row, every step).
  ActiveRows(const int64_t* lead, int64_t begin, int64_t count) : lead_(lead), begin_(begin), every_(count) {
    std::iota(every_.begin(), every_.end(), 0);
    for (int64_t i = kMinActive; lead && i < count; ++i) everyone_from_ = std::max(everyone_from_, lead[begin + i]);
  }
  bool all(int64_t k) const { return k >= everyone_from_; }
  bool active(int64_t i, int64_t k) const { return all(k) || i < kMinActive || lead_[begin_ + i] <= k; }
  // Every row of the slice, 0..count-1.
  const std::vector<int64_t>& every() const { return every_; }
  // The active rows of step k, in order (slice-relative); valid until the next call.
  const std::vector<int64_t>& at(int64_t k) {
    if (all(k)) return every_;
    rows_.clear();
    for (int64_t i : every_)
      if (active(i, k)) rows_.push_back(i);
    return rows_;
  }

 private:
  const int64_t* lead_;
  int64_t begin_, everyone_from_ = 0;
  std::vector<int64_t> every_, rows_;
};

// [r_k | x_k | 1] (`reads` floats a row, row stride `stride`) of the rows a step computes, one after
// another: the slice's own rows s where it computes all of them, else those rows copied into `buffer`.
const float* rows_read(const float* s, const std::vector<int64_t>& rows, bool all, int64_t reads, int64_t stride,
                       std::vector<float>& buffer) {
  if (all) return s;
  for (size_t j = 0; j < rows.size(); ++j) std::copy_n(s + rows[j] * stride, reads, buffer.data() + j * stride);
  return buffer.data();
}

// --- argument checks: each entry point runs them once, before it reads or writes any buffer -------------

// (library.h has those every source shares)

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, "engine: ", name, " must be shaped ", shape, ", not ", t.sizes());
}

// BLAS takes 32-bit sizes (gemm): a larger one would wrap around into a wrong, unchecked size.
void check_blas_sizes(std::initializer_list<int64_t> sizes) {
  for (const int64_t n : sizes)
    TORCH_CHECK(n <= std::numeric_limits<int>::max(), "engine: size ", n, " exceeds BLAS's 32-bit sizes");
}

// Each image's first step with any nonzero input (the number of steps where none): until then a
// cell without a bias keeps a state of exactly zero (ActiveRows). A scan that stops at the first ink
// reads a few rows of each image, where PyTorch's reductions would read them all.
at::Tensor first_inked_steps(const at::Tensor& x) {
  seqmnist::check_tensor("engine", x, "x", at::kFloat, 3);
  TORCH_CHECK(x.stride(2) == 1, "engine: x's rows must be contiguous (stride(2) == 1)");
  const int64_t batch = x.size(0), steps = x.size(1), n = x.size(2);
  at::Tensor lead = at::empty({batch}, x.options().dtype(at::kLong));
  int64_t* out = lead.data_ptr<int64_t>();
  const float* X = x.const_data_ptr<float>();
  for (int64_t i = 0; i < batch; ++i) {
    int64_t k = 0;
    for (; k < steps; ++k) {
      const float* row = X + i * x.stride(0) + k * x.stride(1);
      if (std::any_of(row, row + n, [](float v) { return v != 0.f; })) break;
    }
    out[i] = k;
  }
  return lead;
}

// The first-inked steps a layer may skip by, checked; nullptr without them (every row, every step).
const int64_t* first_inked(const std::optional<at::Tensor>& lead, int64_t batch, bool bias) {
  if (!lead) return nullptr;
  TORCH_CHECK(!bias, "engine: with a bias, blank steps are not zero (phi(b), c) and cannot be skipped");
  seqmnist::check_tensor("engine", *lead, "inked_from", at::kLong, 1);
  TORCH_CHECK(lead->is_contiguous(), "engine: inked_from must be contiguous");
  check_shape(*lead, "inked_from", {batch});
  return lead->const_data_ptr<int64_t>();
}

const float* data_or_null(const std::optional<at::Tensor>& t) {
  return t ? t->const_data_ptr<float>() : nullptr;
}

// One layer's weights and sizes, checked before any is read, once per call.
struct Layer {
  const float *U, *W, *b, *V, *c;
  int64_t inputs, hidden, classes, reads, activation;
  bool diagonal, bias;
  double input_scale;  // the inputs are the layer below's r: their true value is input_scale times it
  Factors f;

  Layer(const at::Tensor& U_, const at::Tensor& W_, const std::optional<at::Tensor>& b_,
        const std::optional<at::Tensor>& V_, const std::optional<at::Tensor>& c_, int64_t activation_,
        double input_scale_) {
    seqmnist::check_dense("engine", U_, "U", at::kFloat, 2);
    inputs = U_.size(0), hidden = U_.size(1);
    TORCH_CHECK(inputs > 0 && hidden > 0, "engine: U must be (inputs, hidden), neither 0, not ", U_.sizes());
    diagonal = W_.dim() == 1;
    seqmnist::check_dense("engine", W_, "W", at::kFloat, diagonal ? 1 : 2);
    TORCH_CHECK(W_.size(0) == hidden && (diagonal || W_.size(1) == hidden), "engine: W must be (", hidden, ", ",
                hidden, ") or (", hidden, ",) as U has ", hidden, " columns, not ", W_.sizes());
    bias = b_.has_value();
    if (b_) {
      seqmnist::check_dense("engine", *b_, "b", at::kFloat, 1);
      check_shape(*b_, "b", {hidden});
    }
    classes = 0;
    if (V_) {
      seqmnist::check_dense("engine", *V_, "V", at::kFloat, 2);
      TORCH_CHECK(V_->size(0) == hidden && V_->size(1) > 0, "engine: V must be (", hidden,
                  ", classes > 0), not ", V_->sizes());
      classes = V_->size(1);
    }
    if (c_) {
      // c rides on the bias column of [r | x | 1]: without b that column, and c's gradient row, do not exist.
      TORCH_CHECK(V_ && b_, "engine: c needs V and b");
      seqmnist::check_dense("engine", *c_, "c", at::kFloat, 1);
      check_shape(*c_, "c", {classes});
    }
    TORCH_CHECK(activation_ == kTanh || activation_ == kRelu, "engine: unknown activation ", activation_);
    reads = hidden + inputs + bias;
    activation = activation_;
    input_scale = input_scale_;
    f = factors(activation_);
    U = U_.const_data_ptr<float>(), W = W_.const_data_ptr<float>(), b = data_or_null(b_);
    V = data_or_null(V_), c = data_or_null(c_);
  }
};

// The rows (T + 1, batch) of a layer's states, at least one step of at least one image, and their
// stride, wide enough for [r_k | x_k | 1].
void check_state(const at::Tensor& state, const Layer& L) {
  seqmnist::check_dense("engine", state, "state", at::kFloat, 3);
  TORCH_CHECK(state.size(0) >= 2 && state.size(1) >= 1, "engine: state must be (T + 1, batch, stride) with T and ",
              "batch at least 1, not ", state.sizes());
  TORCH_CHECK(state.size(2) >= L.reads, "engine: state's rows (", state.size(2), ") are narrower than [r | x | 1] (",
              L.reads, ")");
}

// The step weights (engine.Workspace): one multiply of [r_k | x_k | 1] by
//   [[rho sigma W | sigma V | 0], [rho input_scale U | 0 | 0], [rho b | c | 0]]
// gives [rho a_{k+1} | z_k]. For tanh on the seed's model: [[4W | 2V], [2U | 0]]. A diagonal
// recurrence leaves the W block zero (its steps do not multiply it). The zeros were written when M
// was made.
void fill_step_weights(const Layer& L, const at::Tensor& M) {
  const int64_t H = L.hidden, C = L.classes, width = M.size(1);
  float* m = M.data_ptr<float>();
  const float rs = L.f.rho * L.f.sigma, s = L.f.sigma, ru = L.f.rho * L.input_scale, r = L.f.rho;
  for (int64_t i = 0; i < H; ++i) {
    if (!L.diagonal)
      for (int64_t j = 0; j < H; ++j) m[i * width + j] = rs * L.W[i * H + j];
    for (int64_t k = 0; k < C; ++k) m[i * width + H + k] = s * L.V[i * C + k];
  }
  for (int64_t f = 0; f < L.inputs; ++f)
    for (int64_t j = 0; j < H; ++j) m[(H + f) * width + j] = ru * L.U[f * H + j];
  if (L.bias) {
    float* row = m + (H + L.inputs) * width;
    for (int64_t j = 0; j < H; ++j) row[j] = r * L.b[j];
    for (int64_t k = 0; k < C; ++k) row[H + k] = L.c ? L.c[k] : 0.f;
  }
}

// The backward step weights: kappa [W | V]^T in the first `padded` columns (the W block left zero for
// a diagonal recurrence), then, when the layer below needs its gradient, kappa_below U^T (the layer
// below wants kappa_below times the gradient in its true states, which are this layer's true inputs).
void fill_backward_weights(const Layer& L, const at::Tensor& Bt, int64_t padded, double kappa_below) {
  const int64_t H = L.hidden, C = L.classes, cols = Bt.size(1);
  float* out = Bt.data_ptr<float>();
  const float k = L.f.kappa, ku = kappa_below;
  for (int64_t j = 0; j < H; ++j) {
    if (!L.diagonal)
      for (int64_t i = 0; i < H; ++i) out[j * cols + i] = k * L.W[i * H + j];
    if (cols > padded)
      for (int64_t f = 0; f < L.inputs; ++f) out[j * cols + padded + f] = ku * L.U[f * H + j];
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < H; ++i) out[(H + c) * cols + i] = k * L.V[i * C + c];
}

// --- losses: rows begin..end of the batch, logits z_t = z[t][b], t = 1..T ----------------------------------
// Each writes every image's loss and the gradient of that loss in every logit to the same place in
// grad. Rows outermost, so that the passes walk the buffers in memory order.

// The seed's: -log of the mean softmax at the label.
// dloss_b/dz_t[c] = -p_t[y] ([c == y] - p_t[c]) / (T m_y), with p_t = softmax(z_t), m = mean_t p_t.
// One pass where PyTorch takes nine small operations; the first pass leaves p_t in grad for the second.
void mean_softmax_losses(const at::Tensor& z, const int64_t* y, const at::Tensor& grad, float* loss, int64_t begin,
                         int64_t end) {
  const int64_t rows = z.size(0) - 1, batch = z.size(1), classes = z.size(2);
  const float* Z = z.const_data_ptr<float>();
  float* G = grad.data_ptr<float>();
  std::vector<float> mean_y(end - begin, 0.f);
  for (int64_t t = 1; t <= rows; ++t) {
    for (int64_t b = begin; b < end; ++b) {
      const float* zt = Z + (t * batch + b) * classes;
      float* p = G + (t * batch + b) * classes;
      const float top = *std::max_element(zt, zt + classes);
      float sum = 0.f;
      for (int64_t c = 0; c < classes; ++c) sum += p[c] = std::exp(zt[c] - top);
      for (int64_t c = 0; c < classes; ++c) p[c] /= sum;
      mean_y[b - begin] += p[y[b]] / rows;
    }
  }
  for (int64_t b = begin; b < end; ++b) loss[b] = -std::log(mean_y[b - begin]);
  for (int64_t t = 1; t <= rows; ++t) {
    for (int64_t b = begin; b < end; ++b) {
      float* g = G + (t * batch + b) * classes;
      const float py = g[y[b]], scale = -py / (rows * mean_y[b - begin]);
      for (int64_t c = 0; c < classes; ++c) g[c] = scale * ((c == y[b]) - g[c]);
    }
  }
}

// Cross-entropy of softmax(m) at y, m = the mean of the logits over the steps (mean-logits) or the last
// step's (last): dloss/dm = softmax(m) - onehot(y), shared out over the steps m averages.
void averaged_logit_losses(const at::Tensor& z, const int64_t* y, const at::Tensor& grad, float* loss, int64_t begin,
                           int64_t end, bool last_only) {
  const int64_t rows = z.size(0) - 1, batch = z.size(1), classes = z.size(2);
  const int64_t from = last_only ? rows : 1;
  const float share = 1.f / (rows - from + 1);
  const float* Z = z.const_data_ptr<float>();
  float* G = grad.data_ptr<float>();
  std::vector<float> m(classes);
  for (int64_t b = begin; b < end; ++b) {
    std::fill(m.begin(), m.end(), 0.f);
    for (int64_t t = from; t <= rows; ++t) {
      const float* zt = Z + (t * batch + b) * classes;
      for (int64_t c = 0; c < classes; ++c) m[c] += zt[c];
    }
    for (int64_t c = 0; c < classes; ++c) m[c] *= share;
    const float top = *std::max_element(m.begin(), m.end()), at_label = m[y[b]] - top;
    float sum = 0.f;
    for (int64_t c = 0; c < classes; ++c) sum += m[c] = std::exp(m[c] - top);
    loss[b] = std::log(sum) - at_label;  // log-sum-exp minus the label's logit, shifted: never log(0)
    for (int64_t c = 0; c < classes; ++c) m[c] = share * (m[c] / sum - (c == y[b]));
    for (int64_t t = 1; t <= rows; ++t) {
      float* g = G + (t * batch + b) * classes;
      if (t < from)
        std::fill(g, g + classes, 0.f);
      else
        std::copy(m.begin(), m.end(), g);
    }
  }
}

// Adds the slices' sums of [r_k | x_k | 1]^T g_k into the first slice's, here, on this thread (they
// are small, and ATen would hand them to the thread pool); then the gradients, scaled by `scale`:
// dW = sigma r^T G, dV = sigma r^T G_z (s = sigma r), dU = input_scale x^T G, db = 1^T G, dc = 1^T G_z,
// and for a diagonal recurrence dw = sigma diag(r^T G).
std::vector<at::Tensor> weight_gradients(const Layer& L, const at::Tensor& sums, double scale) {
  const int64_t slices = sums.size(0), width = sums.size(2), n = L.reads * width;
  const int64_t H = L.hidden, C = L.classes;
  float* total = sums.data_ptr<float>();
  for (int64_t s = 1; s < slices; ++s) {
    const float* part = total + s * n;
    for (int64_t i = 0; i < n; ++i) total[i] += part[i];
  }
  const auto options = sums.options();
  const at::Tensor dU = at::empty({L.inputs, H}, options);
  const at::Tensor dW = L.diagonal ? at::empty({H}, options) : at::empty({H, H}, options);
  float *u = dU.data_ptr<float>(), *w = dW.data_ptr<float>();
  const float by_r = L.f.sigma * scale, by_x = L.input_scale * scale, by_1 = scale;
  for (int64_t i = 0; i < H; ++i) {
    const float* row = total + i * width;
    if (L.diagonal)
      w[i] = by_r * row[i];
    else
      for (int64_t j = 0; j < H; ++j) w[i * H + j] = by_r * row[j];
  }
  for (int64_t f = 0; f < L.inputs; ++f) {
    const float* row = total + (H + f) * width;
    for (int64_t j = 0; j < H; ++j) u[f * H + j] = by_x * row[j];
  }
  std::vector<at::Tensor> grads = {dU, dW};
  const float* ones = total + (H + L.inputs) * width;
  if (L.bias) {
    const at::Tensor db = at::empty({H}, options);
    float* d = db.data_ptr<float>();
    for (int64_t j = 0; j < H; ++j) d[j] = by_1 * ones[j];
    grads.push_back(db);
  }
  if (C > 0) {
    const at::Tensor dV = at::empty({H, C}, options);
    float* v = dV.data_ptr<float>();
    for (int64_t i = 0; i < H; ++i)
      for (int64_t k = 0; k < C; ++k) v[i * C + k] = by_r * total[i * width + H + k];
    grads.push_back(dV);
    if (L.c) {
      const at::Tensor dc = at::empty({C}, options);
      float* d = dc.data_ptr<float>();
      for (int64_t k = 0; k < C; ++k) d[k] = by_1 * ones[H + k];
      grads.push_back(dc);
    }
  }
  return grads;
}

}  // namespace

// One layer, k = 0..T-1: [rho a_{k+1} | z_k] = [r_k | x_k | 1] M (a diagonal recurrence adds
// rho sigma w * r_k), then r_{k+1} = phi(rho a_{k+1}); on the top layer (V given), the last step's
// logits too. Each step's product goes to a buffer of the slice's own; only z_k reaches z, a compact
// (T + 1, batch, classes) buffer.
// r_0 = 0, x_T = 0, the bias column's ones and the padding are in state already (engine.Workspace).
// Each slice copies its images' inputs into its states: x is (batch, T, inputs) with any row
// strides (the layer below's states, for a layer above).
// With labels (training; top layer only), each slice goes on to its images' losses and the logits'
// gradients (into grad), while its logits are in cache; returns the losses.
std::optional<at::Tensor> forward_layer(const std::optional<at::Tensor>& z, const at::Tensor& state,
                                        const at::Tensor& x, const at::Tensor& U, const at::Tensor& W,
                                        const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& V,
                                        const std::optional<at::Tensor>& c, const at::Tensor& M, int64_t activation,
                                        double input_scale, const std::optional<at::Tensor>& labels,
                                        const std::optional<at::Tensor>& grad, int64_t readout,
                                        const std::optional<at::Tensor>& inked_from) {
  const Layer L(U, W, b, V, c, activation, input_scale);
  check_state(state, L);
  seqmnist::check_dense("engine", M, "M", at::kFloat, 2);
  const int64_t rows = state.size(0) - 1, batch = state.size(1), stride = state.size(2), width = M.size(1);
  const int64_t H = L.hidden, C = L.classes, n = L.inputs, reads = L.reads;
  TORCH_CHECK(M.size(0) == reads && width >= H + C, "engine: M must be (", reads, ", at least ", H + C, "), not ",
              M.sizes());
  seqmnist::check_tensor("engine", x, "x", at::kFloat, 3);
  check_shape(x, "x", {batch, rows, n});
  TORCH_CHECK(x.stride(2) == 1, "engine: x's rows must be contiguous (stride(2) == 1)");
  TORCH_CHECK(z.has_value() == (C > 0), "engine: z goes with V (the top layer), and only with it");
  if (z) {
    seqmnist::check_dense("engine", *z, "z", at::kFloat, 3);
    check_shape(*z, "z", {rows + 1, batch, C});
  }
  TORCH_CHECK(labels.has_value() == grad.has_value(), "engine: labels and grad go together");
  TORCH_CHECK(!labels || C > 0, "engine: the loss needs the top layer (V)");
  TORCH_CHECK(readout == kMeanSoftmax || readout == kLast || readout == kMeanLogits, "engine: unknown readout ",
              readout);
  std::optional<at::Tensor> losses;
  const int64_t* y = nullptr;
  if (labels) {
    seqmnist::check_dense("engine", *grad, "grad", at::kFloat, 3);
    check_shape(*grad, "grad", z->sizes());
    seqmnist::check_tensor("engine", *labels, "labels", at::kLong, 1);
    TORCH_CHECK(labels->is_contiguous(), "engine: labels must be contiguous");
    check_shape(*labels, "labels", {batch});
    y = labels->const_data_ptr<int64_t>();
    for (int64_t i = 0; i < batch; ++i)
      TORCH_CHECK(y[i] >= 0 && y[i] < C, "engine: label ", y[i], " of image ", i, " is not in [0, ", C, ")");
    losses = at::empty({batch}, state.options());
  }
  const int64_t* lead = first_inked(inked_from, batch, L.bias || L.c);
  check_blas_sizes({batch, stride, width});  // bound every size gemm sees: reads, H, C, n <= stride or width
  fill_step_weights(L, M);
  std::vector<float> diagonal(L.diagonal ? H : 0);  // rho sigma w
  for (int64_t j = 0; j < (L.diagonal ? H : 0); ++j) diagonal[j] = L.f.rho * L.f.sigma * L.W[j];
  float* Z = z ? z->data_ptr<float>() : nullptr;
  float* S = state.data_ptr<float>();
  const float* X = x.const_data_ptr<float>();
  const int64_t sx_image = x.stride(0), sx_step = x.stride(1);
  const float* weights = M.const_data_ptr<float>();
  float* loss = losses ? losses->data_ptr<float>() : nullptr;
  pybind11::gil_scoped_release no_gil;
  over_batch_slices(batch, slice_count(batch), [&](int64_t, int64_t begin, int64_t count) {
    // Each step's product lands in this slice's own small buffer, which stays in cache; only the
    // logits go on to z (the activation consumes the rest at once).
    std::vector<float> product(count * width);
    float* f = product.data();
    ActiveRows active(lead, begin, count);
    std::vector<float> gathered(active.all(0) ? 0 : count * stride);
    for (int64_t k = 0; k < rows; ++k) {
      float* s = S + (k * batch + begin) * stride;
      for (int64_t i = 0; i < count; ++i)
        std::copy_n(X + (begin + i) * sx_image + k * sx_step, n, s + i * stride + H);
      const bool all = active.all(k);
      const std::vector<int64_t>& some = active.at(k);
      const int64_t m = some.size();
      const float* a = rows_read(s, some, all, reads, stride, gathered);
      if (k == 0 || L.diagonal) {  // r_0 = 0, or a diagonal recurrence: [x_k | 1] alone is multiplied
        gemm(false, m, width, reads - H, 1.f, a + H, stride, weights + H * width, width, 0.f, f, width);
        if (k > 0 && C > 0)  // z_k's s_k V part
          gemm(false, m, C, H, 1.f, a, stride, weights + H, width, 1.f, f + H, width);
      } else {
        gemm(false, m, width, reads, 1.f, a, stride, weights, width, 0.f, f, width);
      }
      for (int64_t j = 0; j < m; ++j) {
        const int64_t i = some[j];
        float* p = f + j * width;
        if (L.diagonal && k > 0)
          for (int64_t h = 0; h < H; ++h) p[h] += diagonal[h] * a[j * stride + h];
        activate(L.activation, p, s + (batch + i) * stride, H);
        if (C) std::copy_n(p + H, C, Z + (k * batch + begin + i) * C);
      }
      for (int64_t i = 0; i < count && !all; ++i) {
        if (active.active(i, k)) continue;  // still blank: r_{k+1} = 0, z_k = 0
        std::fill_n(s + (batch + i) * stride, H, 0.f);
        if (C) std::fill_n(Z + (k * batch + begin + i) * C, C, 0.f);
      }
    }
    if (C) {  // the last step's logits: [r_T | 0 | 1] [sigma V ; 0 ; c] (without a bias, r_T alone)
      gemm(false, count, width - H, L.bias ? reads : H, 1.f, S + (rows * batch + begin) * stride, stride,
           weights + H, width, 0.f, f + H, width);
      for (int64_t i = 0; i < count; ++i) std::copy_n(f + i * width + H, C, Z + (rows * batch + begin + i) * C);
    }
    if (y) {
      if (readout == kMeanSoftmax)
        mean_softmax_losses(*z, y, *grad, loss, begin, begin + count);
      else
        averaged_logit_losses(*z, y, *grad, loss, begin, begin + count, readout == kLast);
    }
  });
  return losses;
}

// One layer, k = T-1..0: g_k = [dL/da_{k+1} | dL/dz_k | 0] with
//   dL/da_{k+1} = (g_{k+1} kappa [W | V]^T + kappa E_{k+1}) * slope(r_{k+1})
// (a diagonal recurrence: kappa (w * g_{k+1} + dz_{k+1} V^T)), dL/dz_k from the loss (grad, laid out
// like z; top layer) and E, the gradient in the states from the layer above (lower layers; `above`
// holds kappa E, scaled by the layer above). Returns the gradients of U, W (or w), b, V, c (those the layer has), from the sums
// of [r_k | x_k | 1]^T g_k, scaled by `scale`. With `below` (the layer below's E, (T + 1, batch, inputs)),
// also writes kappa_below times the gradient in each input x_k to below[k + 1].
//
// g_k lives only while steps k and k - 1 need it, in two rows per slice that stay in cache (writing
// to the whole gradient buffer, out of cache, was slower). Bt has zero columns up to a multiple
// of 16: MKL runs the step multiply faster so; the logits' gradients overwrite the extra columns.
// Each slice sums its own weight gradients (see the header); the slices' sums are added at the end.
std::vector<at::Tensor> backward_layer(const std::optional<at::Tensor>& grad, const std::optional<at::Tensor>& above,
                                       const at::Tensor& state, const at::Tensor& U, const at::Tensor& W,
                                       const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& V,
                                       const std::optional<at::Tensor>& c, const at::Tensor& Bt, int64_t padded,
                                       int64_t activation, double input_scale, double scale,
                                       const std::optional<at::Tensor>& below, double kappa_below,
                                       const std::optional<at::Tensor>& inked_from) {
  const Layer L(U, W, b, V, c, activation, input_scale);
  check_state(state, L);
  seqmnist::check_dense("engine", Bt, "Bt", at::kFloat, 2);
  const int64_t rows = state.size(0) - 1, batch = state.size(1), stride = state.size(2);
  const int64_t H = L.hidden, C = L.classes, n = L.inputs, reads = L.reads, width = Bt.size(0), cols = Bt.size(1);
  TORCH_CHECK(padded >= H, "engine: padded (", padded, ") is less than hidden (", H, ")");
  TORCH_CHECK(width >= H + C && cols == (below ? padded + n : padded), "engine: Bt must be (at least ", H + C, ", ",
              below ? padded + n : padded, "), not ", Bt.sizes());
  // The top layer's gradient comes from its logits (grad), a lower layer's from the layer above (above).
  TORCH_CHECK(grad.has_value() == (C > 0), "engine: grad goes with V (the top layer), and only with it");
  TORCH_CHECK(above.has_value() == (C == 0), "engine: above goes with a layer without V, and only with it");
  if (grad) {
    seqmnist::check_dense("engine", *grad, "grad", at::kFloat, 3);
    check_shape(*grad, "grad", {rows + 1, batch, C});
  }
  if (above) {
    seqmnist::check_dense("engine", *above, "above", at::kFloat, 3);
    check_shape(*above, "above", {rows + 1, batch, H});
  }
  if (below) {
    seqmnist::check_dense("engine", *below, "below", at::kFloat, 3);
    check_shape(*below, "below", {rows + 1, batch, n});
  }
  const int64_t* lead = first_inked(inked_from, batch, L.bias || L.c);
  check_blas_sizes({batch, stride, width, cols});  // bound every size gemm sees: reads, H, C, n, padded
  // Columns of the step multiply: hidden, rounded up, but no further than the logits' columns.
  const int64_t columns = std::min(padded, H + C);
  fill_backward_weights(L, Bt, padded, kappa_below);
  const int64_t slices = slice_count(batch);
  // Each slice's own sums, added up at the end: first written with beta 0, so no zeroing pass.
  at::Tensor sums = at::empty({slices, reads, width}, state.options());
  const float* dZ = grad ? grad->const_data_ptr<float>() : nullptr;
  const float* E = above ? above->const_data_ptr<float>() : nullptr;
  float* D = below ? below->data_ptr<float>() : nullptr;
  const float* S = state.const_data_ptr<float>();
  const float* weights = Bt.const_data_ptr<float>();
  const float kappa = L.f.kappa;
  std::vector<float> diagonal(L.diagonal ? H : 0);  // kappa w
  for (int64_t j = 0; j < (L.diagonal ? H : 0); ++j) diagonal[j] = kappa * L.W[j];
  {
    pybind11::gil_scoped_release no_gil;
    over_batch_slices(batch, slices, [&](int64_t slice, int64_t begin, int64_t count) {
      float* sum = sums.data_ptr<float>() + slice * reads * width;
      // g_k's rows are those of the rows step k computed (ActiveRows), in order: all of them for g_T.
      std::vector<float> two_rows(2 * count * width, 0.f);  // g_T's dL/da_{T+1} = 0 and the padding stay 0
      auto g_row = [&](int64_t k) { return two_rows.data() + (k % 2) * count * width; };
      // Past ~192 rows MKL sums the batch in blocks, whose bounds the left-out rows would move.
      ActiveRows active(count <= kMaxExactSumRows ? lead : nullptr, begin, count);
      std::vector<int64_t> before = active.every();  // the rows of g_{k+1}
      const bool skips = !active.all(0);
      std::vector<float> gathered(skips ? count * stride : 0), inputs(skips && D ? count * n : 0);
      auto with_logit_grads = [&](float* g, int64_t k, const std::vector<int64_t>& some) {
        for (size_t j = 0; j < some.size(); ++j)
          std::copy_n(dZ + (k * batch + begin + some[j]) * C, C, g + j * width + H);
      };
      auto inputs_gradient = [&](const float* g, int64_t k, const std::vector<int64_t>& some, bool all) {
        // kappa_below dL/dx_k into below[k + 1]; 0 for a row still blank (the layer below leaves it out too)
        float* d = D + ((k + 1) * batch + begin) * n;
        if (all) {
          gemm(false, count, n, H, 1.f, g, width, weights + padded, cols, 0.f, d, n);
          return;
        }
        gemm(false, some.size(), n, H, 1.f, g, width, weights + padded, cols, 0.f, inputs.data(), n);
        std::fill_n(d, count * n, 0.f);
        for (size_t j = 0; j < some.size(); ++j) std::copy_n(inputs.data() + j * n, n, d + some[j] * n);
      };
      const float* last = S + (rows * batch + begin) * stride;
      if (C) with_logit_grads(g_row(rows), rows, before);
      gemm(true, reads, width, count, 1.f, last, stride, g_row(rows), width, 0.f, sum, width);
      for (int64_t k = rows - 1; k >= 0; --k) {
        float* g = g_row(k);
        const float* next = g_row(k + 1);
        const bool all = active.all(k);
        const std::vector<int64_t>& some = active.at(k);
        const int64_t m = some.size();
        if (m < static_cast<int64_t>(before.size())) {  // keep g_{k+1}'s rows of the rows step k computes
          // Every row step k computes, step k + 1 computed (ActiveRows: a row, once active, stays so).
          float* kept = g_row(k + 1);
          for (size_t j = 0, from = 0; j < some.size(); ++j, ++from) {
            while (from < before.size() && before[from] != some[j]) ++from;
            TORCH_INTERNAL_ASSERT(from < before.size(), "engine: step ", k, " computes a row step ", k + 1, " left out");
            if (from != j) std::copy_n(kept + from * width, width, kept + j * width);
          }
        }
        const float* s = S + (k * batch + begin) * stride;
        const float* r = s + batch * stride;  // r_{k+1}
        float beta = 0.f;
        if (E) {  // kappa E_{k+1} (the layer above scaled it), to which the recurrence's part is added
          for (int64_t j = 0; j < m; ++j) std::copy_n(E + ((k + 1) * batch + begin + some[j]) * H, H, g + j * width);
          beta = 1.f;
        }
        if (!L.diagonal) {
          gemm(false, m, columns, width, 1.f, next, width, weights, cols, beta, g, width);
        } else {
          if (C > 0) gemm(false, m, H, C, 1.f, next + H, width, weights + H * cols, cols, beta, g, width);
          for (int64_t j = 0; j < m; ++j) {
            float* gj = g + j * width;
            const float* nj = next + j * width;
            for (int64_t h = 0; h < H; ++h) gj[h] = (C > 0 || E ? gj[h] : 0.f) + diagonal[h] * nj[h];
          }
        }
        for (int64_t j = 0; j < m; ++j) scale_by_slope(L.activation, g + j * width, r + some[j] * stride, H);
        if (C) with_logit_grads(g, k, some);
        if (D) inputs_gradient(g, k, some, all);
        const float* a = rows_read(s, some, all, reads, stride, gathered);
        if (k == 0) {  // r_0 = 0: only [x_0 | 1] adds to the sums
          gemm(true, reads - H, width, m, 1.f, a + H, stride, g, width, 1.f, sum + H * width, width);
        } else {
          gemm(true, reads, width, m, 1.f, a, stride, g, width, 1.f, sum, width);
        }
        before = some;
      }
    });
  }
  return weight_gradients(L, sums, scale);
}

// Each entry point checks every argument, and every combination of them, before it reads or writes
// a buffer: a wrong call from Python raises (tests/test_engine_checks.py) rather than reading or
// writing out of bounds.

// The codes and factors are written here alone: engine.py reads the activations' from `activations`, and
// native.py checks `readout_codes` against seqmnist.readouts when it loads the library.

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_layer", &forward_layer);
  m.def("backward_layer", &backward_layer);
  m.def("first_inked_steps", &first_inked_steps);
  pybind11::dict readouts;
  readouts["mean-softmax"] = static_cast<int64_t>(kMeanSoftmax);
  readouts["last"] = static_cast<int64_t>(kLast);
  readouts["mean-logits"] = static_cast<int64_t>(kMeanLogits);
  m.attr("readout_codes") = readouts;
  pybind11::dict activations;  // name: (code, sigma, kappa)
  for (const auto& [name, code] : {std::pair<const char*, Activation>{"tanh", kTanh}, {"relu", kRelu}}) {
    const Factors f = factors(code);
    activations[name] = pybind11::make_tuple(static_cast<int64_t>(code), f.sigma, f.kappa);
  }
  m.attr("activations") = activations;
  m.def("scan_forward", &seqmnist::scan_forward);
  m.def("scan_backward", &seqmnist::scan_backward);
  m.def("relu_scan_forward", &seqmnist::relu_scan_forward);
  m.def("relu_scan_backward", &seqmnist::relu_scan_backward);
  m.def("gate_forward", &seqmnist::gate_forward);
  m.def("gate_backward", &seqmnist::gate_backward);
  m.def("skip_forward", &seqmnist::skip_forward);
  m.def("skip_backward", &seqmnist::skip_backward);
}
