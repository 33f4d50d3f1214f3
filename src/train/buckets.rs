//! The buckets of overlapped gradient averaging (`sync.overlap`), as DDP's reducer makes them:
//! consecutive parameters in reverse layer order, at least `sync.bucket_mb` each, so that a
//! bucket's all-reduce starts as soon as backward has finished its last (first in layer order)
//! parameter, while backward goes on through the layers before it.
//!
//! A bucket is whole blocks (`Net::param_blocks`: a layer with parameters and the parameter-free
//! layers after it), since backward finishes parameters a block at a time. A bucket's
//! parameters are consecutive in the flat gradient buffer, so it travels as one span with no
//! copy. Larger buckets cost fewer all-reduce calls (each pays the link's latency); smaller ones
//! start sooner and leave less to wait for after backward.

use crate::model::ParamBlock;
use std::ops::Range;

/// One bucket: the block whose backward finishes it, and its parameters (indices into the
/// stage's `parameters()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub first_block: usize,
    pub params: Range<usize>,
}

/// The buckets of `blocks` in the order backward finishes them: walking back from the last
/// block, a bucket closes once it holds at least `cap_bytes` (`param_bytes[p]`: parameter p's
/// gradient bytes); whatever is left at the first block is the last bucket. A cap of 0 makes
/// every block its own bucket.
pub fn buckets(blocks: &[ParamBlock], param_bytes: &[usize], cap_bytes: usize) -> Vec<Bucket> {
    let mut out = Vec::new();
    let mut open: Option<(usize, usize)> = None; // (params end, bytes so far)
    for (b, block) in blocks.iter().enumerate().rev() {
        let (end, bytes) = open.unwrap_or((block.params.end, 0));
        let bytes = bytes + param_bytes[block.params.clone()].iter().sum::<usize>();
        if bytes >= cap_bytes || b == 0 {
            out.push(Bucket {
                first_block: b,
                params: block.params.start..end,
            });
            open = None;
        } else {
            open = Some((end, bytes));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed 001's net in blocks: conv1 (+ReLU, pool), conv2 (+ReLU, pool, flatten), fc1 (+ReLU,
    /// dropout), fc2, with their weight and bias bytes.
    fn mnist() -> (Vec<ParamBlock>, Vec<usize>) {
        let blocks = vec![
            ParamBlock {
                layers: 0..3,
                params: 0..2,
            },
            ParamBlock {
                layers: 3..7,
                params: 2..4,
            },
            ParamBlock {
                layers: 7..10,
                params: 4..6,
            },
            ParamBlock {
                layers: 10..11,
                params: 6..8,
            },
        ];
        let bytes = [288, 32, 18_432, 64, 401_408, 128, 1_280, 10]
            .map(|n| 4 * n)
            .to_vec();
        (blocks, bytes)
    }

    #[test]
    fn buckets_close_at_the_cap_walking_back() {
        let (blocks, bytes) = mnist();
        // 1 MB: fc2 + fc1 (1.6 MB) finish together; conv2 + conv1 are what is left.
        assert_eq!(
            buckets(&blocks, &bytes, 1 << 20),
            [
                Bucket {
                    first_block: 2,
                    params: 4..8
                },
                Bucket {
                    first_block: 0,
                    params: 0..4
                }
            ]
        );
        // 0: every block alone, last first.
        let each: Vec<usize> = buckets(&blocks, &bytes, 0)
            .iter()
            .map(|b| b.first_block)
            .collect();
        assert_eq!(each, [3, 2, 1, 0]);
        // 25 MB (DDP's default): one bucket.
        assert_eq!(
            buckets(&blocks, &bytes, 25 << 20),
            [Bucket {
                first_block: 0,
                params: 0..8
            }]
        );
    }

    #[test]
    fn every_parameter_is_in_exactly_one_bucket() {
        let (blocks, bytes) = mnist();
        for cap in [0, 1000, 80_000, 1 << 20, 1 << 30] {
            let mut covered: Vec<usize> = buckets(&blocks, &bytes, cap)
                .into_iter()
                .flat_map(|b| b.params)
                .collect();
            covered.sort();
            assert_eq!(covered, (0..8).collect::<Vec<_>>(), "cap {cap}");
        }
        // A stage that starts with parameter-free layers: its first block holds no parameters.
        let blocks = vec![
            ParamBlock {
                layers: 0..2,
                params: 0..0,
            },
            ParamBlock {
                layers: 2..3,
                params: 0..2,
            },
        ];
        let b = buckets(&blocks, &[40, 8], 0);
        assert_eq!(
            b,
            [
                Bucket {
                    first_block: 1,
                    params: 0..2
                },
                Bucket {
                    first_block: 0,
                    params: 0..0
                }
            ]
        );
    }
}
