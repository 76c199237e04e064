// What the library's sources share: the argument checks each entry point runs before it reads or writes
// any buffer (a failure is one line naming the operation and the argument; PyTorch raises it as a
// RuntimeError), and the entry points of scan.cpp and gate.cpp, which engine.cpp binds to Python. Only
// engine.cpp includes torch/extension.h (the C++ API and pybind11, most of a build's time); the others
// need ATen's tensors alone.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

namespace seqmnist {

// scan.cpp: the LRU's complex diagonal recurrence and the IndRNN's relu one.
at::Tensor scan_forward(const at::Tensor& x, const at::Tensor& lambda);
std::vector<at::Tensor> scan_backward(const at::Tensor& g, const at::Tensor& h, const at::Tensor& lambda);
at::Tensor relu_scan_forward(const at::Tensor& a, const at::Tensor& w, const at::Tensor& b);
std::vector<at::Tensor> relu_scan_backward(const at::Tensor& g, const at::Tensor& h, const at::Tensor& w,
                                           const at::Tensor& b);

// gate.cpp: the position-wise ends of the linear cells' blocks.
at::Tensor gate_forward(const at::Tensor& u, const at::Tensor& z, const at::Tensor& b);
std::vector<at::Tensor> gate_backward(const at::Tensor& g, const at::Tensor& z, const at::Tensor& b);
at::Tensor skip_forward(const at::Tensor& m, const at::Tensor& v, const at::Tensor& D);
std::vector<at::Tensor> skip_backward(const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
                                      const at::Tensor& D);

// t on the CPU, of `type`, with `dims` dimensions (any number where dims < 0).
inline void check_tensor(const char* op, const at::Tensor& t, const char* name, at::ScalarType type, int64_t dims) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be on the CPU, not ", t.device());
  TORCH_CHECK(t.scalar_type() == type, op, ": ", name, " must be ", type, ", not ", t.scalar_type());
  TORCH_CHECK(dims < 0 || t.dim() == dims, op, ": ", name, " must have ", dims, " dimensions, not ", t.dim());
}

// As check_tensor, and contiguous: the loops index it as a dense row-major array of its sizes.
inline void check_dense(const char* op, const at::Tensor& t, const char* name, at::ScalarType type, int64_t dims) {
  check_tensor(op, t, name, type, dims);
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

}  // namespace seqmnist
