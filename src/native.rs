//! Safe wrappers of src/native/ops.cpp: libtorch calls the tch crate does not expose.

use anyhow::{bail, Result};
use tch::Tensor;

/// A `torch::Tensor*` (what tch's `Tensor::as_ptr` returns).
type CTensor = *const std::ffi::c_void;

extern "C" {
    fn partrain_conv_weight_grad(
        grad_out: CTensor,
        input: CTensor,
        weight: CTensor,
        pad: i64,
        grad_weight: *mut *mut std::ffi::c_void,
        grad_bias: *mut *mut std::ffi::c_void,
        err: *mut std::ffi::c_char,
        err_len: usize,
    ) -> i32;
    fn partrain_backward_with_grad(
        output: CTensor,
        grad: CTensor,
        err: *mut std::ffi::c_char,
        err_len: usize,
    ) -> i32;
}

fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The gradients of a stride-1 convolution's weight and bias (libtorch's
/// `convolution_backward` with output mask [false, true, true]: the kernel autograd runs).
pub fn conv_weight_grad(
    grad_out: &Tensor,
    input: &Tensor,
    weight: &Tensor,
    pad: i64,
) -> Result<(Tensor, Tensor)> {
    let mut err = [0u8; 512];
    let (mut gw, mut gb) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: the three tensors are live tch tensors (their pointers are `torch::Tensor*`); on
    // success the shim returns two tensors it allocated with `new`, whose ownership tch takes.
    unsafe {
        let code = partrain_conv_weight_grad(
            grad_out.as_ptr() as CTensor,
            input.as_ptr() as CTensor,
            weight.as_ptr() as CTensor,
            pad,
            &mut gw,
            &mut gb,
            err.as_mut_ptr() as *mut std::ffi::c_char,
            err.len(),
        );
        if code != 0 {
            bail!("convolution_backward: {}", message(&err));
        }
        Ok((Tensor::from_ptr(gw as _), Tensor::from_ptr(gb as _)))
    }
}

/// Backward from `output` with `grad` as its gradient (autograd's `backward(grad)`).
pub fn backward_with_grad(output: &Tensor, grad: &Tensor) -> Result<()> {
    let mut err = [0u8; 512];
    // SAFETY: both are live tch tensors; the shim only reads them.
    let code = unsafe {
        partrain_backward_with_grad(
            output.as_ptr() as CTensor,
            grad.as_ptr() as CTensor,
            err.as_mut_ptr() as *mut std::ffi::c_char,
            err.len(),
        )
    };
    if code != 0 {
        bail!("backward: {}", message(&err));
    }
    Ok(())
}
