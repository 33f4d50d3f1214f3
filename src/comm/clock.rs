//! Aligning clocks for traces, and gathering bytes on rank 0.

use super::{Comm, Tag};

impl Comm {
    /// Offsets that put each rank's monotonic clock on rank 0's (microseconds to add), measured
    /// by ping-pong with rank 0 (the exchange with the shortest round trip of `rounds`), on rank 0;
    /// other ranks get zeros. Collective.
    pub fn clock_offsets(&self, rounds: usize) -> Vec<f64> {
        let mut offsets = vec![0.0; self.size];
        for (r, offset) in offsets.iter_mut().enumerate().skip(1) {
            let mut best = (f64::INFINITY, 0.0);
            for _ in 0..rounds {
                if self.rank == 0 {
                    let t0 = crate::diag::trace::now_us();
                    self.send(r, Tag::Clock, &[t0]);
                    let mut t1 = [0.0f64];
                    self.recv(r, Tag::Clock, &mut t1);
                    let t2 = crate::diag::trace::now_us();
                    if t2 - t0 < best.0 {
                        best = (t2 - t0, (t0 + t2) / 2.0 - t1[0]);
                    }
                } else if self.rank == r {
                    let mut t0 = [0.0f64];
                    self.recv(0, Tag::Clock, &mut t0);
                    self.send(0, Tag::Clock, &[crate::diag::trace::now_us()]);
                }
            }
            *offset = best.1;
        }
        offsets
    }

    /// Every rank's bytes on rank 0 (in rank order); None elsewhere. Collective.
    pub fn gather_bytes(&self, mine: &[u8]) -> Option<Vec<Vec<u8>>> {
        let lens = self.all_gather(mine.len() as u64);
        if self.rank != 0 {
            self.send(0, Tag::Trace, mine);
            return None;
        }
        let mut all = vec![mine.to_vec()];
        for (r, &len) in lens.iter().enumerate().skip(1) {
            let mut buf = vec![0u8; len as usize];
            self.recv(r, Tag::Trace, &mut buf);
            all.push(buf);
        }
        Some(all)
    }
}
