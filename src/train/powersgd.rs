//! PowerSGD (Vogels et al., NeurIPS 2019) as PyTorch's `powerSGD_hook` does it
//! (`sync.compress: powersgd`): each weight's gradient, seen as a matrix M of (output channels x
//! the rest), travels as two thin factors of rank r.
//!
//! A step, on the flat gradient buffer:
//! 1. error feedback: M += e (this rank's residual of the last step);
//! 2. P = M Q (Q from the last step: warm start), all-reduced (sum) together with the tensors
//!    left uncompressed (biases, and matrices where (rows + cols) r x 2 >= rows x cols, PyTorch's
//!    `min_compression_rate`), then P orthogonalised (Gram-Schmidt, column by column);
//! 3. Q = M^T P, all-reduced and divided by the ranks: the mean of M projected on P;
//! 4. the mean is approximated by P Q^T; e = M - P Q^T stays on the rank.
//!
//! The first `sync.compress_after_steps` steps average plainly (no error feedback), as PyTorch's
//! `start_powerSGD_iter`. Q starts from a normal draw of a generator seeded by the run's seed (the
//! same on every rank) and is orthogonalised. The error feedback here covers the compressed
//! matrices only: PyTorch also feeds back an uncompressed tensor's local-minus-mean, whose mean
//! over the ranks is zero, so the averaged gradients are the same.
//!
//! A matrix's rows are its span of the flat buffer in memory order, so a channels-last conv
//! weight's rows are its output channels with the columns permuted, which a low-rank
//! approximation does not mind.

use crate::comm::Comm;
use tch::{Kind, Tensor};

/// One parameter's place in the flat buffer and how it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: i64,
    pub numel: i64,
    /// Rows and columns when it is compressed.
    pub matrix: Option<(i64, i64)>,
}

/// Which parameters are compressed at rank `r`: those of two or more dimensions whose factors
/// are less than half their size.
pub fn spans(params: &[(i64, Vec<i64>)], r: i64) -> Vec<Span> {
    params
        .iter()
        .map(|(offset, shape)| {
            let numel: i64 = shape.iter().product();
            let rows = shape[0];
            let cols = numel / rows.max(1);
            let worth = shape.len() >= 2 && (rows + cols) * r * 2 < rows * cols;
            Span {
                offset: *offset,
                numel,
                matrix: worth.then_some((rows, cols)),
            }
        })
        .collect()
}

pub struct PowerSgd {
    spans: Vec<Span>,
    rank: i64,
    /// Plain averaging for steps before this one.
    after: usize,
    /// This rank's residual, laid out like the gradients (compressed spans only are used).
    pub error: Tensor,
    /// Every compressed matrix's Q (cols x r), one after another; carried between steps.
    pub q: Tensor,
    /// Whether `q` holds a previous step's factors (else it is drawn at the first compressed step).
    pub warm: bool,
    seed: u64,
    /// The first all-reduce's buffer: the uncompressed spans, then every P.
    first: Tensor,
    ranks: usize,
}

impl PowerSgd {
    pub fn new(spans: Vec<Span>, len: i64, rank: i64, after: usize, seed: u64, ranks: usize) -> PowerSgd {
        let opts = (Kind::Float, tch::Device::Cpu);
        let q_len: i64 = spans.iter().filter_map(|s| s.matrix).map(|(_, c)| c * rank).sum();
        let first_len: i64 = spans
            .iter()
            .map(|s| s.matrix.map_or(s.numel, |(rows, _)| rows * rank))
            .sum();
        PowerSgd {
            spans,
            rank,
            after,
            error: Tensor::zeros([len], opts),
            q: Tensor::zeros([q_len], opts),
            warm: false,
            seed,
            first: Tensor::zeros([first_len], opts),
            ranks,
        }
    }

    /// f32 elements one rank hands to the two all-reduces of a compressed step.
    pub fn elements_per_step(&self) -> (i64, i64) {
        (self.first.numel() as i64, self.q.numel() as i64)
    }

    /// Whether step `step` (0-based) is compressed.
    pub fn compresses(&self, step: usize) -> bool {
        step >= self.after
    }

    /// The compressed mean of every rank's `grads` into `mean` (the same on every rank).
    pub fn average(&mut self, grads: &Tensor, mean: &Tensor, group: &Comm) {
        if !self.warm {
            self.q = self.initial_q();
            self.warm = true;
        }
        let _ = self.error.g_add_(grads);
        let m = self.error.shallow_clone(); // M = g + e; e is rewritten at the end
        let qs = self.q_views();
        self.fill_first(&m, &qs);
        all_reduce_sum(&self.first, group);
        let (uncompressed, ps) = self.unpack_first();
        for p in &ps {
            orthogonalise(p);
        }
        self.fill_q(&m, &ps, &qs);
        all_reduce_sum(&self.q, group);
        let _ = self.q.g_div_scalar_(self.ranks as f64);
        let ranks = self.ranks as f64;
        let mut k = 0;
        tch::no_grad(|| {
            for (s, u) in self.spans.iter().zip(&uncompressed) {
                let out = mean.narrow(0, s.offset, s.numel);
                match (s.matrix, u) {
                    (None, Some(u)) => {
                        out.shallow_clone().copy_(&(u / ranks));
                        let _ = m.narrow(0, s.offset, s.numel).zero_();
                    }
                    (Some((rows, cols)), _) => {
                        let approx = ps[k].matmul(&qs[k].tr());
                        out.shallow_clone().copy_(&approx.view([rows * cols]));
                        let _ = m.narrow(0, s.offset, s.numel).view([rows, cols]).g_sub_(&approx);
                        k += 1;
                    }
                    (None, None) => unreachable!("uncompressed spans travel whole"),
                }
            }
        });
    }

    /// Each compressed matrix's Q (cols x r), a view into `q`.
    fn q_views(&self) -> Vec<Tensor> {
        let mut off = 0;
        self.spans
            .iter()
            .filter_map(|s| s.matrix)
            .map(|(_, cols)| {
                let v = self.q.narrow(0, off, cols * self.rank).view([cols, self.rank]);
                off += cols * self.rank;
                v
            })
            .collect()
    }

    /// The first all-reduce's buffer: the uncompressed spans of `m`, then P = M Q for each matrix.
    fn fill_first(&self, m: &Tensor, qs: &[Tensor]) {
        let (mut off, mut k) = (0, 0);
        tch::no_grad(|| {
            for s in &self.spans {
                let src = m.narrow(0, s.offset, s.numel);
                match s.matrix {
                    None => {
                        self.first.narrow(0, off, s.numel).copy_(&src);
                        off += s.numel;
                    }
                    Some((rows, cols)) => {
                        let p = src.view([rows, cols]).matmul(&qs[k]);
                        self.first.narrow(0, off, rows * self.rank).copy_(&p.view([-1]));
                        off += rows * self.rank;
                        k += 1;
                    }
                }
            }
        });
    }

    /// The summed uncompressed spans (per span, None for matrices) and each P (rows x r), views
    /// into the first buffer.
    fn unpack_first(&self) -> (Vec<Option<Tensor>>, Vec<Tensor>) {
        let (mut off, mut ps, mut u) = (0, Vec::new(), Vec::new());
        for s in &self.spans {
            match s.matrix {
                None => {
                    u.push(Some(self.first.narrow(0, off, s.numel)));
                    off += s.numel;
                }
                Some((rows, _)) => {
                    u.push(None);
                    ps.push(
                        self.first
                            .narrow(0, off, rows * self.rank)
                            .view([rows, self.rank]),
                    );
                    off += rows * self.rank;
                }
            }
        }
        (u, ps)
    }

    /// Q = M^T P for each matrix, into `q`.
    fn fill_q(&self, m: &Tensor, ps: &[Tensor], qs: &[Tensor]) {
        let mats = self
            .spans
            .iter()
            .filter_map(|s| s.matrix.map(|rc| (s.offset, rc)));
        tch::no_grad(|| {
            for ((off, (rows, cols)), (p, q)) in mats.zip(ps.iter().zip(qs)) {
                let mm = m.narrow(0, off, rows * cols).view([rows, cols]);
                q.shallow_clone().copy_(&mm.tr().matmul(p));
            }
        });
    }

    /// Normal draws from a generator seeded by the run's seed (identical on every rank), each
    /// matrix's Q orthogonalised.
    fn initial_q(&self) -> Tensor {
        let mut state = crate::util::mix_seed(&[self.seed, 0x504f_5745_5253_4744]);
        let n = self.q.numel();
        let draws: Vec<f32> = (0..n).map(|_| normal(&mut state)).collect();
        let q = Tensor::from_slice(&draws);
        let mut off = 0;
        for (_, cols) in self.spans.iter().filter_map(|s| s.matrix) {
            orthogonalise(&q.narrow(0, off, cols * self.rank).view([cols, self.rank]));
            off += cols * self.rank;
        }
        q
    }
}

fn all_reduce_sum(t: &Tensor, group: &Comm) {
    let n = t.numel();
    let mut send = vec![0f32; n];
    t.copy_data(&mut send, n);
    let mut recv = vec![0f32; n];
    group.all_reduce_sum(&send, &mut recv);
    tch::no_grad(|| t.shallow_clone().copy_(&Tensor::from_slice(&recv)));
}

/// Gram-Schmidt on the columns of `p` (rows x r), in place, as PyTorch's hook with epsilon 0.
pub fn orthogonalise(p: &Tensor) {
    let r = p.size()[1];
    tch::no_grad(|| {
        for i in 0..r {
            let col = p.narrow(1, i, 1);
            let _ = col.shallow_clone().g_div_(&col.norm());
            if i + 1 < r {
                let rest = p.narrow(1, i + 1, r - i - 1);
                let dots = (&col * &rest).sum_dim_intlist([0i64].as_slice(), true, Kind::Float);
                let _ = rest.shallow_clone().g_sub_(&(dots * &col));
            }
        }
    });
}

/// A standard normal draw (Box-Muller) from a splitmix64 state.
fn normal(state: &mut u64) -> f32 {
    let mut next = || {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let (u1, u2) = (next().max(1e-300), next());
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
        (a - b).abs().max().double_value(&[]) < tol
    }

    #[test]
    fn which_tensors_are_compressed_follows_pytorchs_rate() {
        // seed 001's net at rank 2: every weight; the biases travel whole.
        let shapes = [
            vec![32, 1, 3, 3],
            vec![32],
            vec![64, 32, 3, 3],
            vec![128, 3136],
            vec![10, 128],
        ];
        let params: Vec<(i64, Vec<i64>)> = shapes.iter().map(|s| (0, s.clone())).collect();
        let s = spans(&params, 2);
        let m: Vec<Option<(i64, i64)>> = s.iter().map(|s| s.matrix).collect();
        assert_eq!(
            m,
            [
                Some((32, 9)),
                None,
                Some((64, 288)),
                Some((128, 3136)),
                Some((10, 128))
            ]
        );
        // At rank 4 the first conv's factors, (32 + 9) x 4 x 2 = 328 >= 288, are not worth it.
        assert_eq!(spans(&params, 4)[0].matrix, None);
    }

    #[test]
    fn gram_schmidt_gives_orthonormal_columns() {
        let p = Tensor::from_slice(&[3.0f32, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0]).view([3, 3]);
        orthogonalise(&p);
        let eye = Tensor::eye(3, (Kind::Float, tch::Device::Cpu));
        assert!(close(&p.tr().matmul(&p), &eye, 1e-5));
    }

    /// On one rank a matrix of rank <= r is recovered exactly (P spans its columns), a bias
    /// travels whole, and the error feedback holds what the approximation missed.
    #[test]
    fn closed_forms_on_one_rank() {
        // [[1, 2, 3], [2, 4, 6]] has rank 1; a 4 x 4 identity at rank 1 cannot be (error 3/4).
        let rank1 = [1.0f32, 2.0, 3.0, 2.0, 4.0, 6.0];
        let bias = [0.5f32, -0.25];
        let mut flat: Vec<f32> = rank1.to_vec();
        flat.extend(bias);
        let g = Tensor::from_slice(&flat);
        let s = vec![
            Span {
                offset: 0,
                numel: 6,
                matrix: Some((2, 3)),
            },
            Span {
                offset: 6,
                numel: 2,
                matrix: None,
            },
        ];
        let mut psgd = PowerSgd::new(s, 8, 1, 0, 7, 1);
        let mean = g.zeros_like();
        psgd.average(&g, &mean, &Comm::solo());
        assert!(close(&mean, &g, 1e-5), "{mean:?}");
        assert!(psgd.error.abs().max().double_value(&[]) < 1e-5);
        // Identity: the rank-1 approximation keeps one direction; error = I - approx, and the
        // approximation plus the error is the input.
        let eye = Tensor::eye(4, (Kind::Float, tch::Device::Cpu)).view([16]);
        let mut psgd = PowerSgd::new(
            vec![Span {
                offset: 0,
                numel: 16,
                matrix: Some((4, 4)),
            }],
            16,
            1,
            0,
            7,
            1,
        );
        let mean = eye.zeros_like();
        psgd.average(&eye, &mean, &Comm::solo());
        assert!(close(&(&mean + &psgd.error), &eye, 1e-5));
        let kept = mean.view([4, 4]);
        assert!(
            (kept.trace().double_value(&[]) - 1.0).abs() < 1e-5,
            "a rank-1 projection keeps trace 1"
        );
        // The next step feeds the error back: the two approximations add up to more of I.
        let mean2 = eye.zeros_like();
        psgd.average(&eye.zeros_like(), &mean2, &Comm::solo());
        assert!(close(&(&mean2 + &psgd.error), &(&eye - &mean), 1e-5));
    }

    #[test]
    fn the_same_seed_draws_the_same_q() {
        let s = spans(&[(0, vec![64, 288])], 2);
        let a = PowerSgd::new(s.clone(), 64 * 288, 2, 0, 42, 2).initial_q();
        let b = PowerSgd::new(s.clone(), 64 * 288, 2, 0, 42, 2).initial_q();
        let c = PowerSgd::new(s, 64 * 288, 2, 0, 43, 2).initial_q();
        assert!(a.equal(&b) && !a.equal(&c));
    }
}
