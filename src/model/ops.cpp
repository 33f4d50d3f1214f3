// libtorch entry points that the tch crate does not expose, for src/model/native.rs.
//
// - partrain_conv_backward: at::convolution_backward for the gradients asked for (the fused first
//   block asks for the weight and bias only: its input needs none), the same kernel autograd runs,
//   so the gradients are bit for bit autograd's; conv-bench asks for the input and the weight.
// - partrain_backward_with_grad: backward from a non-scalar tensor with a given gradient (what a
//   pipeline stage does with its neighbour's gradient), without the extra product and sum.
//
// Tensors cross as `torch::Tensor*` (what tch's C_tensor points to). Results are heap tensors
// that tch takes ownership of. Errors come back as a message, never as a C++ exception.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <cstdio>
#include <exception>

extern "C" int partrain_conv_backward(const at::Tensor *grad_out, const at::Tensor *input,
                                     const at::Tensor *weight, int64_t pad, int64_t groups, int want_input,
                                     int want_weight,
                                     int want_bias, at::Tensor **grad_input, at::Tensor **grad_weight,
                                     at::Tensor **grad_bias, char *err, size_t err_len) {
  try {
    std::vector<int64_t> bias_sizes{weight->size(0)};
    auto grads = at::convolution_backward(
        *grad_out, *input, *weight,
        want_bias ? at::OptionalIntArrayRef(bias_sizes) : at::OptionalIntArrayRef(c10::nullopt), {1, 1},
        {pad, pad}, {1, 1}, false, {0, 0}, groups, {want_input != 0, want_weight != 0, want_bias != 0});
    *grad_input = want_input ? new at::Tensor(std::get<0>(grads)) : nullptr;
    *grad_weight = want_weight ? new at::Tensor(std::get<1>(grads)) : nullptr;
    *grad_bias = want_bias ? new at::Tensor(std::get<2>(grads)) : nullptr;
    return 0;
  } catch (const std::exception &e) {
    std::snprintf(err, err_len, "%s", e.what());
    return 1;
  }
}

extern "C" int partrain_backward_with_grad(const at::Tensor *output, const at::Tensor *grad, char *err,
                                           size_t err_len) {
  try {
    torch::autograd::backward({*output}, {*grad});
    return 0;
  } catch (const std::exception &e) {
    std::snprintf(err, err_len, "%s", e.what());
    return 1;
  }
}
