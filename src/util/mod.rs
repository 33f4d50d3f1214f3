//! Small helpers shared by every strategy: a stable hash, a seeded RNG, peak memory.

pub mod atomic;
pub mod format;
pub mod machine;
pub mod pages;
pub mod run_files;
pub mod version;

/// FNV-1a 64-bit: a stable hash for comparing configs and data headers across ranks.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64: tiny, seedable and identical on every rank and platform, so every rank derives the
/// same epoch permutation from (seed, epoch) without communicating.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n) without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
}

/// Mixes several values into one seed (for per-epoch and per-step seeds).
/// Held while seeding libtorch's one global generator and drawing from it: two threads of one
/// process (the unit tests) would otherwise interleave their draws and get each other's numbers
/// (a CI run saw a stage's weights differ from the whole net's that way).
pub fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn mix_seed(parts: &[u64]) -> u64 {
    let mut rng = SplitMix64::new(0x5eed);
    let mut acc = 0u64;
    for p in parts {
        rng = SplitMix64::new(rng.next_u64() ^ p);
        acc = rng.next_u64();
    }
    acc
}

/// True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16), which oneDNN uses for
/// bf16 convolutions and matrix multiplies.
pub fn cpu_has_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.split_whitespace()
                .any(|f| f == "avx512_bf16" || f == "amx_bf16")
        })
        .unwrap_or(false)
}

/// Whether bf16 compute may run here: on native bf16, or on any CPU with PARTRAIN_EMULATED_BF16=1
/// (bf16's steps to a target do not depend on the kernels' speed, so a CPU without bf16 can still
/// measure them, slowly).
pub fn bf16_runs_here() -> bool {
    cpu_has_bf16() || std::env::var("PARTRAIN_EMULATED_BF16").as_deref() == Ok("1")
}

/// Seconds since this process started (from /proc: start time in clock ticks since boot).
pub fn seconds_since_process_start() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0);
    // Field 22 (starttime) counted after the `(comm)` field, which may contain spaces.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let start_ticks: f64 = after
        .split_whitespace()
        .nth(19)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0);
    (uptime - start_ticks / 100.0).max(0.0)
}

/// Peak resident set size of this process in MiB (VmHWM), 0 where /proc is unavailable.
pub fn peak_rss_mb() -> f64 {
    read_status_kb("VmHWM:")
        .map(|kb| kb as f64 / 1024.0)
        .unwrap_or(0.0)
}

/// This process's resident memory now, in MiB (the soak benchmark samples it).
pub fn rss_mb() -> f64 {
    read_status_kb("VmRSS:")
        .map(|kb| kb as f64 / 1024.0)
        .unwrap_or(0.0)
}

fn read_status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Today's date (UTC) as YYYY-MM-DD.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A hash of this kernel's boot id: the same for every process of one machine, fake nodes (UTS
/// namespaces) included.
pub fn machine_id() -> u64 {
    fnv1a(
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .as_bytes(),
    )
}

/// This machine's host name (its UTS name, which an emulated node sets per namespace).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Online CPUs of this node (sysconf), whatever this process is bound to.
pub fn node_cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// The median of `v` (the mean of the middle two for an even count); None when empty or when it
/// is not finite (an infinite entry stands for "never").
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    m.is_finite().then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = SplitMix64::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = SplitMix64::new(7);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(mix_seed(&[1, 2]), mix_seed(&[2, 1]));
    }

    #[test]
    fn today_is_a_date() {
        let t = today();
        assert_eq!(t.len(), 10);
        assert!(t.as_str() >= "2026-01-01", "{t}");
    }

    #[test]
    fn peak_rss_is_positive() {
        assert!(peak_rss_mb() > 0.0);
    }
}
