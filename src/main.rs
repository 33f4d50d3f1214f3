//! partrain command line: parse and dispatch (the commands are in `cli/`).
//!
//!   partrain serial  --config configs/base.yaml [--set train.epochs=3] [--out DIR] [--overwrite]
//!   mpirun -np 2 partrain dp --config configs/data_parallel.yaml [--set ...] [--out DIR]
//!   mpirun -np 4 partrain hybrid --config configs/hybrid_pipeline.yaml [--set ...]
//!   partrain inspect --config configs/hybrid_pipeline.yaml [--np 4] [--ranks-per-node 4]
//!   partrain report [--runs results/runs] [--out results]
//!   partrain data fetch mnist|fashion-mnist|cifar10 [--source registry|mirror] [--dir DIR]

mod cli;

use clap::Parser;
use std::process::ExitCode;

/// Keeps freed activation buffers in the heap for the next step. By default glibc adapts its
/// mmap threshold as blocks are freed, and depending on the order of the first allocations a run
/// either reuses heap memory or maps, faults in and unmaps fresh pages for every multi-MB
/// activation of every step: measured here, MNIST serial ran at ~2,100 instead of ~3,900
/// images/s in the bad case. A fixed 16 MiB threshold (activations of the seed nets stay below
/// it) with a 64 MiB trim threshold was both the fastest and the smallest in peak RSS of the
/// settings tried (CIFAR net: 656 MB against 697 untuned and 1,012 with 256 MiB / 1 GiB).
fn tune_malloc() {
    // SAFETY: mallopt only changes allocator thresholds; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() -> ExitCode {
    tune_malloc();
    if let Err(e) = partrain::train::stop::install() {
        return cli::train::fail(anyhow::anyhow!("cannot install the signal handlers: {e}"));
    }
    cli::dispatch(cli::Cli::parse().command)
}
