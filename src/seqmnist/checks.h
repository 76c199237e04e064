// Argument checks the library's sources share (engine.cpp, scan.cpp, gate.cpp): each entry point runs
// them before it reads or writes any buffer, and a failure is one line naming the operation and the
// argument (PyTorch raises it as a RuntimeError).
#pragma once

#include <torch/extension.h>

namespace seqmnist {

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
