//! Ping-pong between two ranks: the one way the preflight (node leaders' links) and `calibrate`
//! (links inside and between nodes) measure a link. One-way time of 8 bytes gives the latency; of
//! 4 MiB, less the latency, the bandwidth; each the median of `repeats` round trips after two
//! untimed ones.

use super::{Comm, Tag};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// A link's latency and bandwidth, between two ranks of one node or of two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub latency_us: f64,
    pub bandwidth_gbs: f64,
}

/// As a person reads a link: `25.0 us latency, 1.10 GB/s (8.80 Gbit/s)`; rates below 1 GB/s
/// in MB/s (`11.9 MB/s (95.2 Mbit/s)`).
impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bits = self.bandwidth_gbs * 8.0;
        let (rate, bits) = if self.bandwidth_gbs >= 1.0 {
            (
                format!("{:.2} GB/s", self.bandwidth_gbs),
                format!("{bits:.2} Gbit/s"),
            )
        } else {
            (
                format!("{:.1} MB/s", self.bandwidth_gbs * 1e3),
                format!("{:.1} Mbit/s", bits * 1e3),
            )
        };
        write!(f, "{:.1} us latency, {rate} ({bits})", self.latency_us)
    }
}

/// The emulated cluster's link rate (`scripts/cluster.sh up N --link RATE` exports it as
/// `PARTRAIN_LINK`, e.g. `100mbit`), which runs and calibrations record beside what they
/// measure; None off such a cluster or on its unshaped loopback.
pub fn emulated_link() -> Option<String> {
    std::env::var("PARTRAIN_LINK").ok().filter(|s| !s.is_empty())
}

impl Link {
    /// Seconds to move `bytes` one way.
    pub fn seconds(&self, bytes: f64) -> f64 {
        self.latency_us * 1e-6 + bytes / (self.bandwidth_gbs * 1e9)
    }
}

impl Comm {
    /// The link between ranks `a` and `b`, on every rank (collective: the others wait at the
    /// broadcast of `a`'s result).
    pub fn link(&self, a: usize, b: usize, repeats: usize) -> Link {
        self.link_sized(a, b, repeats, 4)
    }

    /// As `link`, with a bandwidth message of `mib` MiB.
    pub fn link_sized(&self, a: usize, b: usize, repeats: usize, mib: usize) -> Link {
        let big = mib.max(1) << 18;
        let mut out = [self.one_way(a, b, 2, repeats), self.one_way(a, b, big, repeats)];
        self.broadcast(&mut out, a);
        let [small, large] = out;
        Link {
            latency_us: small * 1e6,
            bandwidth_gbs: (4.0 * big as f64) / (large - small).max(1e-9) / 1e9,
        }
    }

    /// Median one-way seconds of `len` f32 between `a` and `b` (meaningful on `a` and `b`).
    fn one_way(&self, a: usize, b: usize, len: usize, repeats: usize) -> f64 {
        let me = self.rank();
        let mut buf = vec![0f32; len];
        let mut times = Vec::new();
        for _ in 0..repeats.max(1) + 2 {
            let t = Instant::now();
            if me == a {
                self.send(b, Tag::Calibrate, &buf);
                self.recv(b, Tag::Calibrate, &mut buf);
            } else if me == b {
                self.recv(a, Tag::Calibrate, &mut buf);
                self.send(a, Tag::Calibrate, &buf);
            }
            times.push(t.elapsed().as_secs_f64() / 2.0);
        }
        crate::util::median(times[2..].to_vec()).unwrap_or(0.0)
    }
}
