//! The CIFAR-10 binary format: records of 1 label byte then 3072 pixel bytes
//! (1024 red, 1024 green, 1024 blue, each row-major 32x32). Train: data_batch_1..5.bin; test: test_batch.bin.

use anyhow::{bail, Result};

pub const RECORD: usize = 1 + 3 * 32 * 32;
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const TEST_FILE: &str = "test_batch.bin";

/// Appends one batch file's records: pixels (CHW planes, as stored) and labels.
pub fn parse_batch(bytes: &[u8], name: &str, pixels: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<()> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        bail!(
            "{name}: {} bytes is not a whole number of CIFAR-10 records ({RECORD} bytes each): file truncated or not CIFAR-10 binary",
            bytes.len()
        );
    }
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] > 9 {
            bail!(
                "{name}: label {} in record {i} is out of range: expected 0..9",
                rec[0]
            );
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(())
}

/// Builds a batch file's bytes (used by tests to write files in the official layout).
pub fn encode_batch(labels: &[u8], pixels: &[u8]) -> Vec<u8> {
    assert_eq!(pixels.len(), labels.len() * (RECORD - 1));
    let mut out = Vec::with_capacity(labels.len() * RECORD);
    for (l, px) in labels.iter().zip(pixels.chunks_exact(RECORD - 1)) {
        out.push(*l);
        out.extend_from_slice(px);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_planes() {
        let px: Vec<u8> = (0..2 * 3072).map(|i| (i % 251) as u8).collect();
        let (mut p, mut l) = (vec![], vec![]);
        parse_batch(&encode_batch(&[3, 7], &px), "b", &mut p, &mut l).unwrap();
        assert_eq!(l, vec![3, 7]);
        assert_eq!(p, px);
    }

    #[test]
    fn rejects_partial_record_and_bad_label() {
        let (mut p, mut l) = (vec![], vec![]);
        let e = parse_batch(&[0; RECORD + 1], "b.bin", &mut p, &mut l)
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.bin") && e.contains("truncated"), "{e}");
        let mut rec = vec![0u8; RECORD];
        rec[0] = 10;
        let e = parse_batch(&rec, "b.bin", &mut p, &mut l)
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range"), "{e}");
    }
}
