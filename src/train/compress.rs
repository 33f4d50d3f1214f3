//! Compressed gradient averaging (`sync.compress`), the averager's codecs.
//!
//! `bf16`: the gradients travel as bf16 both ways and are summed in f32, as a reduce-scatter
//! then an all-gather (what a ring all-reduce does, with the arithmetic in between ours):
//! 1. every rank rounds its gradient to bf16 (round to nearest even) and sends chunk r to rank r
//!    (MPI_Alltoall);
//! 2. each rank sums the R copies of its chunk in f32, in rank order, divides by R and rounds the
//!    mean to bf16;
//! 3. an all-gather hands every rank every chunk's mean, widened back to f32.
//!
//! Per rank that sends (R-1)/R of the gradient's bf16 bytes twice: half of the f32 ring
//! all-reduce's 2 (R-1)/R x 4 bytes per element. Every rank ends with the same bits (the sums run
//! in a fixed order on one rank), so runs repeat exactly. PyTorch's `bf16_compress_hook` sums in
//! bf16 instead; the f32 sum keeps the mean within one bf16 rounding of the exact mean.

use crate::comm::Comm;

/// f32 -> bf16 bits, rounding to nearest even (NaN stays NaN).
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// bf16 bits -> f32 (exact).
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// The buffers of bf16 averaging, allocated once (chunks padded to a multiple of the ranks).
#[derive(Default)]
pub struct Bf16Mean {
    send: Vec<u16>,
    recv: Vec<u16>,
    chunk: Vec<u16>,
    gathered: Vec<u16>,
}

impl Bf16Mean {
    /// Elements per rank's chunk for `n` elements over `ranks`.
    pub fn chunk_len(n: usize, ranks: usize) -> usize {
        n.div_ceil(ranks)
    }

    /// Bytes one rank sends to average `n` elements over `ranks`: bf16 chunks in the
    /// all-to-all and again in the all-gather.
    pub fn sent_bytes(n: usize, ranks: usize) -> f64 {
        (2 * (ranks - 1) * Self::chunk_len(n, ranks) * 2) as f64
    }

    /// The mean over `group` of every rank's `grads` into `mean` (the same bits on every rank).
    pub fn average(&mut self, grads: &[f32], mean: &mut [f32], group: &Comm) {
        let ranks = group.size();
        let c = Self::chunk_len(grads.len(), ranks);
        self.send.clear();
        self.send.extend(grads.iter().map(|&g| to_bf16(g)));
        self.send.resize(c * ranks, 0);
        self.recv.resize(c * ranks, 0);
        group.all_to_all(&self.send, &mut self.recv);
        self.chunk.clear();
        self.chunk.extend((0..c).map(|j| {
            let sum: f32 = (0..ranks).map(|r| from_bf16(self.recv[r * c + j])).sum();
            to_bf16(sum / ranks as f32)
        }));
        self.gathered.resize(c * ranks, 0);
        group.all_gather_into(&self.chunk, &mut self.gathered);
        for (m, &b) in mean.iter_mut().zip(&self.gathered) {
            *m = from_bf16(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_widens_exactly() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(0x3f80), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        // Relative error of one rounding to nearest: at most half the spacing, 2^-8 (7 mantissa bits).
        for x in [0.1f32, 2.71, -7.77e-5, 12345.678] {
            assert!(((from_bf16(to_bf16(x)) - x) / x).abs() <= 1.0 / 256.0);
        }
    }

    #[test]
    fn one_rank_averages_to_its_own_gradient_rounded_to_bf16() {
        let grads = [0.5f32, -1.25, 3.0e-3, 7.0];
        let mut mean = [0f32; 4];
        Bf16Mean::default().average(&grads, &mut mean, &Comm::solo());
        let rounded: Vec<f32> = grads.iter().map(|&g| from_bf16(to_bf16(g))).collect();
        assert_eq!(mean.to_vec(), rounded);
    }

    #[test]
    fn bf16_sends_half_the_bytes_of_the_f32_ring() {
        let n = 421_642;
        for ranks in [2usize, 4, 8] {
            let ring = 2.0 * (ranks - 1) as f64 / ranks as f64 * 4.0 * n as f64;
            let ratio = Bf16Mean::sent_bytes(n, ranks) / ring;
            assert!((ratio - 0.5).abs() < 1e-4, "{ranks} ranks: {ratio}");
        }
    }
}
