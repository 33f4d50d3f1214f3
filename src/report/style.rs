//! How every chart labels its axes: tick texts that never run into each other (thousands
//! separators, a k suffix from 10,000, only as many decimals as the tick step needs), integer axes
//! without decimals, node counts on a log2 axis, fonts readable at the size README shows the PNGs.
//!
//! `labels` returns the texts a chart draws for an axis range: plotters picks the tick positions
//! (`key_points`), these functions write them; the tests check that text for typical ranges.

use plotters::coord::ranged1d::Ranged;
use plotters::coord::types::RangedCoordf64;

/// Font sizes: caption, axis descriptions, tick labels, legend.
pub const CAPTION: u32 = 26;
pub const AXIS: u32 = 18;
pub const TICKS: u32 = 16;
pub const LEGEND: u32 = 16;

use crate::util::format::grouped;
pub use crate::util::format::{count, number, percent};

/// A tick on a log2 axis of node counts (the axis holds log2 of the count): `1`, `2`, `4`, ...
pub fn nodes(log2: f64) -> String {
    if (log2 - log2.round()).abs() < 1e-9 && log2 >= 0.0 {
        grouped(1u64 << log2.round() as u32)
    } else {
        String::new()
    }
}

/// How many ticks to ask for on an axis of whole counts up to `max`: one per count while they fit,
/// at most 10, so no unlabelled tick sits between two labelled ones.
pub fn whole_ticks(max: f64) -> usize {
    (max.round().max(0.0) as usize + 1).min(10)
}

/// The tick texts a chart draws for `range` with at most `max` ticks, written by `fmt` (given the
/// value and the tick step).
pub fn labels(range: std::ops::Range<f64>, max: usize, fmt: impl Fn(f64, f64) -> String) -> Vec<String> {
    let points = RangedCoordf64::from(range).key_points(max);
    let step = points
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::INFINITY, f64::min);
    points
        .iter()
        .map(|&v| fmt(v, step))
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_axis_reads_as_thousands() {
        assert_eq!(
            labels(0.0..5_000.0, 6, number),
            ["0", "1,000", "2,000", "3,000", "4,000", "5,000"]
        );
        assert_eq!(
            labels(0.0..3_300.0, 8, number),
            ["0", "500", "1,000", "1,500", "2,000", "2,500", "3,000"]
        );
        assert_eq!(labels(0.0..60_000.0, 4, number), ["0", "20k", "40k", "60k"]);
        assert_eq!(number(12_500.0, 2_500.0), "12.5k");
    }

    #[test]
    fn percent_and_fraction_axes() {
        assert_eq!(
            labels(0.0..100.0, 6, percent),
            ["0%", "20%", "40%", "60%", "80%", "100%"]
        );
        assert_eq!(
            labels(0.0..1.2, 7, number),
            ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0", "1.2"]
        );
        assert_eq!(number(0.25, 0.05), "0.25");
        assert_eq!(number(1.999, 0.1), "2.0");
    }

    #[test]
    fn integer_axes_have_no_decimals() {
        // Cores 1..4 on an axis padded by half a core: only the whole counts are labelled.
        assert_eq!(
            labels(0.5..4.5, whole_ticks(4.0), |v, _| count(v)),
            ["1", "2", "3", "4"]
        );
        assert_eq!(
            labels(0.5..64.5, whole_ticks(64.0), |v, _| count(v)),
            ["10", "20", "30", "40", "50", "60"]
        );
        // 1..32 nodes on a log2 axis (the axis holds 0..5), every tick labelled.
        assert_eq!(
            labels(-0.3..5.3, whole_ticks(5.0), |v, _| nodes(v)),
            ["1", "2", "4", "8", "16", "32"]
        );
        assert_eq!(
            labels(-0.3..2.3, whole_ticks(2.0), |v, _| nodes(v)),
            ["1", "2", "4"]
        );
        assert_eq!(count(2.5), "");
    }
}
