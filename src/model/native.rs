//! Safe wrappers of src/model/ops.cpp: libtorch calls the tch crate does not expose.

use anyhow::{bail, Result};
use tch::Tensor;

/// A `torch::Tensor*` (what tch's `Tensor::as_ptr` returns).
type CTensor = *const std::ffi::c_void;

extern "C" {
    #[allow(clippy::too_many_arguments)] // a C signature: out-parameters and the error buffer
    fn partrain_conv_backward(
        grad_out: CTensor,
        input: CTensor,
        weight: CTensor,
        pad: i64,
        groups: i64,
        want_input: i32,
        want_weight: i32,
        want_bias: i32,
        grad_input: *mut *mut std::ffi::c_void,
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

/// Which gradients `conv_backward` computes, and the convolution's groups.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    pub input: bool,
    pub weight: bool,
    pub bias: bool,
    pub groups: i64,
}

/// The gradients of a stride-1 convolution (libtorch's `convolution_backward`: the kernel autograd
/// runs) that `want` asks for, as (input, weight, bias).
pub fn conv_backward(
    grad_out: &Tensor,
    input: &Tensor,
    weight: &Tensor,
    pad: i64,
    want: Wanted,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let mut err = [0u8; 512];
    let (mut gi, mut gw, mut gb) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: the three tensors are live tch tensors (their pointers are `torch::Tensor*`); on
    // success the shim returns the asked-for tensors, allocated with `new`, whose ownership tch
    // takes, and null for the others.
    unsafe {
        let code = partrain_conv_backward(
            grad_out.as_ptr() as CTensor,
            input.as_ptr() as CTensor,
            weight.as_ptr() as CTensor,
            pad,
            want.groups,
            want.input as i32,
            want.weight as i32,
            want.bias as i32,
            &mut gi,
            &mut gw,
            &mut gb,
            err.as_mut_ptr() as *mut std::ffi::c_char,
            err.len(),
        );
        if code != 0 {
            bail!("convolution_backward: {}", message(&err));
        }
        let own = |p: *mut std::ffi::c_void| (!p.is_null()).then(|| Tensor::from_ptr(p as _));
        Ok((own(gi), own(gw), own(gb)))
    }
}

/// The gradients of a stride-1 convolution's weight and bias only.
pub fn conv_weight_grad(
    grad_out: &Tensor,
    input: &Tensor,
    weight: &Tensor,
    pad: i64,
) -> Result<(Tensor, Tensor)> {
    let want = Wanted {
        input: false,
        weight: true,
        bias: true,
        groups: 1,
    };
    match conv_backward(grad_out, input, weight, pad, want)? {
        (_, Some(w), Some(b)) => Ok((w, b)),
        _ => bail!("convolution_backward returned no weight or bias gradient"),
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
