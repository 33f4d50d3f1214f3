//! Seed 003's experiment: one convolution layer's forward and backward over a batch split across
//! MPI ranks, for strong scaling (fixed total batch) and weak scaling (fixed batch per rank).
//!
//!   mpirun -np 4 partrain conv-bench --mode strong --batch 80 --channels 3 --size 1024
//!   bash scripts/conv_bench.sh        # 1, 2 and 4 ranks, both modes, both of seed 003's cases
//!
//! Each rank builds only its own share of the batch (seed 003's rank 0 held the whole input and
//! scattered it), runs forward + backward, and reports its time and peak memory; rank 0 appends
//! a row (time = max over ranks) to `<out>/conv_bench_<case>_<mode>.csv` and rewrites the
//! markdown table next to it.

use crate::comm::Comm;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Seed 003's two experiments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A fixed total batch, split across the ranks.
    Strong,
    /// The batch per rank fixed: the total grows with the ranks.
    Weak,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Strong => "strong",
            Mode::Weak => "weak",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvBenchRow {
    pub processes: usize,
    pub threads_per_rank: usize,
    pub mode: Mode,
    pub local_batch: String,
    /// Forward and backward, the slowest rank's (seed 003's "Execution Time (max)").
    pub seconds_max: f64,
    pub forward_seconds_max: f64,
    pub backward_seconds_max: f64,
    /// All ranks' FLOP (forward 2 x multiply-adds, backward twice that: input and weight
    /// gradients) over the slowest rank's time, and that over the peak of all ranks' cores.
    pub gflops: f64,
    pub fraction_of_peak: Option<f64>,
    /// Kernel time (page faults, zeroing fresh pages) in the timed region, the slowest rank's.
    pub system_seconds_max: f64,
    /// The whole process so far (start-up, building and faulting in the buffers, the untimed
    /// pass, the timed repeats): wall and kernel seconds, the slowest rank's.
    pub process_seconds_max: f64,
    pub process_system_seconds_max: f64,
    pub memory_mb_per_rank: String,
    pub memory_mb_total: f64,
    /// Per rank, the bytes its share of input, output and their gradients needs, in MiB.
    pub data_mb_per_rank: String,
    pub output_shape: String,
}

/// The command line of `partrain conv-bench`.
#[derive(Debug, Clone)]
pub struct ConvBench {
    /// Name of the case (output file names): e.g. large, small.
    pub case: String,
    /// strong (batch split across ranks) or weak (batch per rank).
    pub mode: Mode,
    pub batch: usize,
    pub channels: i64,
    pub out_channels: i64,
    /// Image height and width.
    pub size: i64,
    pub kernel: i64,
    pub repeats: usize,
    /// Advise the buffers as transparent huge pages before their first touch (`util::pages`).
    pub huge_pages: bool,
    /// libtorch threads per rank.
    pub threads: i32,
    /// Images per chunk: the batch is computed a chunk at a time, so no workspace grows with
    /// it (default: as many as fit 8 MiB of input, at least one).
    pub chunk: Option<usize>,
    pub out: std::path::PathBuf,
}

/// This rank's share of `batch` images: strong scaling splits it (the first `batch % size` ranks
/// take one more), weak scaling gives every rank `batch`.
pub fn local_batch(mode: Mode, batch: usize, rank: usize, size: usize) -> usize {
    match mode {
        Mode::Weak => batch,
        Mode::Strong => batch / size + usize::from(rank < batch % size),
    }
}

/// Seconds of kernel time this process has used (page faults, zeroing of fresh pages).
fn system_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_stime.tv_sec as f64 + u.ru_stime.tv_usec as f64 / 1e6
}

/// One rank's convolution: its share of the batch and every buffer, allocated once, written by
/// an untimed first pass (so the timed region faults no page in) and reused by every repeat.
/// The output's gradient (of the output's sum) is ones: one chunk of it serves every chunk.
struct Work {
    weight: Tensor,
    input: Tensor,
    output: Tensor,
    grad_output_chunk: Tensor,
    grad_input: Tensor,
    grad_weight: Tensor,
    chunk: i64,
    /// One input and one output channel: computed as a depthwise convolution over the chunk's
    /// images (oneDNN's grouped kernel: 10 ms against 166 for a plain one-channel convolution of
    /// 4,096 32x32 images on the development machine).
    depthwise: bool,
}

impl Work {
    fn new(b: &ConvBench, images: i64) -> Work {
        let opts = (Kind::Float, tch::Device::Cpu);
        let (c, k, s, o) = (b.channels, b.kernel, b.size, b.size - b.kernel + 1);
        let images = images.max(0);
        // Channels-last for several channels: oneDNN's direct kernel, no im2col workspace (on
        // 3 x 1024 x 1024 images 6x faster forward and 9x backward than NCHW, measured). Buffers
        // are made in that layout directly (a conversion would allocate and fault in a copy).
        // With --huge-pages every buffer is advised as huge pages before its first touch
        // (`util::pages`: opt-in, as measured there). Filled in place: randn = empty + normal_.
        let alloc = |s: [i64; 4]| match b.huge_pages {
            true => crate::util::pages::empty_huge(&s, Kind::Float),
            false => Tensor::empty(s, opts),
        };
        let make = |shape: [i64; 4], f: &dyn Fn([i64; 4]) -> Tensor| {
            if c > 1 {
                f([shape[0], shape[2], shape[3], shape[1]]).permute([0, 3, 1, 2])
            } else {
                f(shape)
            }
        };
        let randn = |s: [i64; 4]| {
            let mut t = alloc(s);
            let _ = t.normal_(0.0, 1.0);
            t
        };
        // Output and input gradient are zero-filled here, in one sequential pass, not left empty
        // for the first chunked pass to fault in: on the development machine (a gVisor sandbox)
        // faulting them in chunk by chunk under the convolution cost 2.9 s of kernel time,
        // zero-filling 1.2 s (whole process 3.95 -> 2.72 s of system time, 11.4 -> 9.3 s wall).
        let zeros = |s: [i64; 4]| alloc(s).zero_();
        let ones = |s: [i64; 4]| alloc(s).fill_(1.0);
        let chunk = b
            .chunk
            .unwrap_or(((8 << 20) / (4 * c * s * s).max(1)).max(1) as usize) as i64;
        let chunk = chunk.clamp(1, images.max(1));
        Work {
            weight: make([b.out_channels, c, k, k], &randn) * 0.1,
            input: make([images, c, s, s], &randn),
            output: make([images, b.out_channels, o, o], &zeros),
            grad_output_chunk: make([chunk, b.out_channels, o, o], &ones),
            grad_input: make([images, c, s, s], &zeros),
            grad_weight: Tensor::zeros([b.out_channels, c, k, k], opts),
            chunk,
            depthwise: c == 1 && b.out_channels == 1,
        }
    }

    fn chunks(&self) -> impl Iterator<Item = (i64, i64)> {
        let (n, chunk) = (self.input.size()[0], self.chunk);
        (0..n).step_by(chunk as usize).map(move |s| (s, chunk.min(n - s)))
    }

    /// A chunk as depthwise operands: images as channels of one "image".
    fn as_groups(t: &Tensor) -> Tensor {
        let s = t.size();
        t.reshape([1, s[0], s[2], s[3]])
    }

    fn forward(&self) {
        tch::no_grad(|| {
            for (s, n) in self.chunks() {
                let x = self.input.narrow(0, s, n);
                let y = if self.depthwise {
                    let w = self.weight.expand([n, 1, -1, -1], false).contiguous();
                    Self::as_groups(&x)
                        .conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], n)
                        .reshape(self.output.narrow(0, s, n).size())
                } else {
                    x.conv2d(&self.weight, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
                };
                self.output.narrow(0, s, n).copy_(&y);
            }
        })
    }

    fn backward(&self) -> Result<()> {
        let _ = self.grad_weight.shallow_clone().zero_();
        for (s, n) in self.chunks() {
            let (gy, x) = (self.grad_output_chunk.narrow(0, 0, n), self.input.narrow(0, s, n));
            let want = |groups| crate::model::native::Wanted {
                input: true,
                weight: true,
                bias: false,
                groups,
            };
            let (gx, gw) = if self.depthwise {
                let w = self.weight.expand([n, 1, -1, -1], false).contiguous();
                let (gx, gw, _) = crate::model::native::conv_backward(
                    &Self::as_groups(&gy),
                    &Self::as_groups(&x),
                    &w,
                    0,
                    want(n),
                )?;
                let gw = gw.map(|g| g.sum_dim_intlist([0i64].as_slice(), true, Kind::Float));
                (gx.map(|g| g.reshape(x.size())), gw)
            } else {
                let (gx, gw, _) = crate::model::native::conv_backward(&gy, &x, &self.weight, 0, want(1))?;
                (gx, gw)
            };
            tch::no_grad(|| {
                self.grad_input
                    .narrow(0, s, n)
                    .copy_(&gx.expect("input gradient"));
                let _ = self
                    .grad_weight
                    .shallow_clone()
                    .g_add_(&gw.expect("weight gradient"));
            });
        }
        Ok(())
    }

    /// MiB of this rank's share of input, output and their gradients (the output's gradient as
    /// large as the output, though one chunk of it is kept).
    fn data_mb(&self) -> f64 {
        (2 * self.input.numel() + 2 * self.output.numel()) as f64 * 4.0 / (1024.0 * 1024.0)
    }
}

impl ConvBench {
    fn check(&self) -> Result<()> {
        if self.batch == 0
            || self.size < self.kernel
            || self.kernel < 1
            || self.channels < 1
            || self.out_channels < 1
        {
            bail!(
                "conv-bench: batch, channels and kernel must be positive and the image at least kernel-sized"
            );
        }
        if self.chunk == Some(0) {
            bail!("--chunk: must be at least 1 image");
        }
        Ok(())
    }

    /// FLOP of a forward over `images`: 2 x multiply-adds.
    fn forward_flop(&self, images: f64) -> f64 {
        let o = (self.size - self.kernel + 1) as f64;
        2.0 * images * (self.out_channels * self.channels * self.kernel * self.kernel) as f64 * o * o
    }

    pub fn run(&self, comm: &Comm) -> Result<ConvBenchRow> {
        self.check()?;
        tch::set_num_threads(self.threads);
        let (rank, size) = (comm.rank(), comm.size());
        let images = local_batch(self.mode, self.batch, rank, size) as i64;
        tch::manual_seed(rank as i64);
        let work = Work::new(self, images);
        // One untimed pass: oneDNN creates its kernels, the allocator's free lists fill.
        work.forward();
        work.backward()?;
        comm.barrier();
        let sys0 = system_seconds();
        let (mut fwd, mut bwd) = (0.0, 0.0);
        for _ in 0..self.repeats.max(1) {
            let t = Instant::now();
            work.forward();
            fwd += t.elapsed().as_secs_f64();
            let t = Instant::now();
            work.backward()?;
            bwd += t.elapsed().as_secs_f64();
        }
        let reps = self.repeats.max(1) as f64;
        let (fwd, bwd, sys) = (fwd / reps, bwd / reps, (system_seconds() - sys0) / reps);
        let max = |v: f64| comm.all_gather(v).into_iter().fold(0.0, f64::max);
        let (fwd_max, bwd_max, sys_max, total_max) = (max(fwd), max(bwd), max(sys), max(fwd + bwd));
        let mem = comm.all_gather(crate::util::peak_rss_mb());
        let data = comm.all_gather(work.data_mb());
        let locals = comm.all_gather(images as u64);
        let total_images: u64 = locals.iter().sum();
        let gflops = 3.0 * self.forward_flop(total_images as f64) / total_max / 1e9;
        let peak = crate::record::peak::job_peak_from_env("fp32", self.threads as usize, &comm.shape())?;
        let o = self.size - self.kernel + 1;
        let join = |v: &[f64]| v.iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>().join(";");
        let row = ConvBenchRow {
            processes: size,
            threads_per_rank: tch::get_num_threads() as usize,
            mode: self.mode,
            local_batch: locals.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(";"),
            seconds_max: total_max,
            forward_seconds_max: fwd_max,
            backward_seconds_max: bwd_max,
            gflops,
            fraction_of_peak: peak.map(|p| gflops / p),
            system_seconds_max: sys_max,
            process_seconds_max: max(crate::util::seconds_since_process_start()),
            process_system_seconds_max: max(system_seconds()),
            memory_mb_per_rank: join(&mem),
            memory_mb_total: mem.iter().sum(),
            data_mb_per_rank: join(&data),
            output_shape: format!("({total_images}, {}, {o}, {o})", self.out_channels),
        };
        if comm.is_root() {
            self.append(&self.out, &row)?;
        }
        Ok(row)
    }

    fn append(&self, out: &Path, row: &ConvBenchRow) -> Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let stem = out.join(format!("conv_bench_{}_{}", self.case, self.mode.name()));
        let csv_path = stem.with_extension("csv");
        let mut rows: Vec<ConvBenchRow> = if csv_path.exists() {
            csv::Reader::from_path(&csv_path)?
                .deserialize()
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        rows.retain(|r| r.processes != row.processes || r.threads_per_rank != row.threads_per_rank);
        rows.push(row.clone());
        rows.sort_by_key(|r| (r.threads_per_rank, r.processes));
        crate::util::atomic::write_csv(&csv_path, &rows)?;
        let mut md = format!(
            "Case `{}`: conv {} -> {} channels, kernel {k}x{k}, {} scaling, batch {} {}, {}x{} images\n\n\
             | # Processes | Threads/rank | Execution Time (max) | forward / backward s | system s (timed) | process wall / system s | GFLOP/s | fraction of peak | Local batch per rank | Memory Usage per Rank (MB) | its data (MB) | Total Memory Usage (MB) | Output Shape |\n\
             |---:|---:|---|---|---:|---|---:|---:|---|---|---|---:|---|\n",
            self.case,
            self.channels,
            self.out_channels,
            self.mode.name(),
            self.batch,
            if self.mode == Mode::Weak { "per rank" } else { "in total" },
            self.size,
            self.size,
            k = self.kernel
        );
        for r in &rows {
            md += &format!(
                "| {} | {} | {:.3} sec | {:.3} / {:.3} | {:.3} | {:.1} / {:.1} | {:.1} | {} | {} | [{}] | [{}] | {:.1} | {} |\n",
                r.processes,
                r.threads_per_rank,
                r.seconds_max,
                r.forward_seconds_max,
                r.backward_seconds_max,
                r.system_seconds_max,
                r.process_seconds_max,
                r.process_system_seconds_max,
                r.gflops,
                r.fraction_of_peak.map_or("-".into(), |f| format!("{f:.2}")),
                r.local_batch.replace(';', ", "),
                r.memory_mb_per_rank.replace(';', ", "),
                r.data_mb_per_rank.replace(';', ", "),
                r.memory_mb_total,
                r.output_shape
            );
        }
        crate::util::atomic::write(&stem.with_extension("md"), md.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked (and, with one channel, depthwise) computation against libtorch's plain
    /// convolution under autograd: the same output and gradients up to float rounding.
    #[test]
    fn chunked_convolution_matches_the_plain_one() {
        // Draws from libtorch's global generator: one test at a time.
        let _rng = crate::util::torch_rng();
        for (channels, size, images, chunk) in [(3i64, 16i64, 5i64, 2usize), (1, 12, 7, 3)] {
            let b = ConvBench {
                case: "test".into(),
                mode: Mode::Strong,
                batch: images as usize,
                channels,
                out_channels: channels,
                size,
                kernel: 3,
                repeats: 1,
                threads: 1,
                chunk: Some(chunk),
                huge_pages: chunk == 2,
                out: std::env::temp_dir(),
            };
            let work = Work::new(&b, images);
            work.forward();
            work.backward().unwrap();
            let x = crate::model::dense(&work.input).set_requires_grad(true);
            let w = crate::model::dense(&work.weight).set_requires_grad(true);
            let y = x.conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
            y.sum(Kind::Float).backward();
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let scale = b.abs().max().double_value(&[]).max(1.0);
                let d = (a - b).abs().max().double_value(&[]);
                assert!(
                    d <= 1e-5 * scale,
                    "{channels} channel(s): {what} differs by {d} (of {scale})"
                );
            };
            close(&work.output, &y, "output");
            close(&work.grad_input, &x.grad(), "input gradient");
            close(&work.grad_weight, &w.grad(), "weight gradient");
        }
    }

    #[test]
    fn strong_splits_weak_repeats() {
        let shares: Vec<usize> = (0..3).map(|r| local_batch(Mode::Strong, 80, r, 3)).collect();
        assert_eq!(shares, vec![27, 27, 26]);
        assert_eq!(shares.iter().sum::<usize>(), 80);
        assert_eq!(local_batch(Mode::Weak, 10, 2, 4), 10);
    }
}
