//! Large tensors touched once, as transparent huge pages where the kernel allows it (on these
//! machines transparent huge pages are `madvise`-only: /sys/kernel/mm/transparent_hugepage/enabled
//! reads `always [madvise] never`), so that a 3 GB buffer is not faulted in 4 KiB at a time.
//!
//! Opt-in (`conv-bench --huge-pages`), because on the machine it was measured on it costs more
//! than it saves: seed 003's large case, 1 rank, 11 runs with and 13 without, interleaved
//! (2026-12-07, "AMD EPYC" family 25 model 1, a Firecracker VM, kernel 6.18): kernel time median
//! 19.8 s (9.3-30.3) and wall 28.6 s (17.5-39.6) with huge pages, against 5.4 s (4.0-18.1) and
//! 13.1 s (11.3-26.3) without; the convolutions alike (2.74-3.07 s). The kernel gave every huge
//! page asked for (`thp_fault_alloc` rose, no fallback, no compaction stall): zeroing 2 MiB pages
//! of a VM's lazily backed memory is what cost. On bare metal the 4 KiB faults are the cost this
//! removes.

use tch::{Kind, Tensor};

/// A huge page's size on x86-64.
const HUGE_PAGE: usize = 2 << 20;

/// Tensors smaller than this are left alone (the allocator may reuse their pages from its pools).
const MIN_BYTES: usize = 8 * HUGE_PAGE;

/// An uninitialised tensor whose whole 2 MiB pages are advised as huge before anything touches
/// them; the caller fills it (`normal_`, `zero_`, `fill_`).
pub fn empty_huge(shape: &[i64], kind: Kind) -> Tensor {
    let t = Tensor::empty(shape, (kind, tch::Device::Cpu));
    advise_huge(&t);
    t
}

/// Advises the whole huge pages inside `t`'s storage as huge (MADV_HUGEPAGE); false where the
/// tensor is small or the kernel refused (the tensor then works as before, in small pages).
pub fn advise_huge(t: &Tensor) -> bool {
    let bytes = t.numel() * t.kind().elt_size_in_bytes();
    if bytes < MIN_BYTES {
        return false;
    }
    let start = t.data_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + bytes) / HUGE_PAGE * HUGE_PAGE;
    if end <= first {
        return false;
    }
    // SAFETY: [first, end) lies inside the tensor's storage, which `t` keeps alive for the call;
    // madvise changes only how the kernel backs those pages, never their contents.
    unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Advised or not, a tensor holds what is written to it; small tensors are left alone.
    #[test]
    fn advised_tensors_hold_their_values() {
        let mut t = empty_huge(&[64, 1024, 1024], Kind::Float);
        let _ = t.zero_();
        assert_eq!(t.sum(Kind::Double).double_value(&[]), 0.0);
        let _ = t.fill_(1.5);
        assert_eq!(
            t.sum(Kind::Double).double_value(&[]),
            1.5 * 64.0 * 1024.0 * 1024.0
        );
        assert!(!advise_huge(&Tensor::zeros(
            [16],
            (Kind::Float, tch::Device::Cpu)
        )));
    }
}
