//! The IDX format of MNIST and Fashion-MNIST: a big-endian header (magic, dimensions) then bytes.
//! Images: magic 0x00000803, dims (n, rows, cols). Labels: magic 0x00000801, dims (n).

use anyhow::{bail, Result};

pub const IMAGES_MAGIC: u32 = 0x0000_0803;
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Images as one byte per pixel, row-major, `n * rows * cols` long.
#[derive(Debug)]
pub struct IdxImages {
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses an IDX image file. `name` is used in error messages (the file path).
pub fn parse_images(bytes: Vec<u8>, name: &str) -> Result<IdxImages> {
    if bytes.len() < 16 {
        bail!(
            "{name}: truncated IDX image file: {} bytes, the header alone needs 16",
            bytes.len()
        );
    }
    let magic = be_u32(&bytes, 0);
    if magic != IMAGES_MAGIC {
        bail!("{name}: wrong magic number 0x{magic:08x}, expected 0x{IMAGES_MAGIC:08x} (IDX images)");
    }
    let (n, rows, cols) = (
        be_u32(&bytes, 4) as usize,
        be_u32(&bytes, 8) as usize,
        be_u32(&bytes, 12) as usize,
    );
    // Checked: three u32 header fields multiply past usize (a garbled header must not wrap to a
    // size that happens to match).
    let want = n
        .checked_mul(rows)
        .and_then(|x| x.checked_mul(cols))
        .and_then(|x| x.checked_add(16));
    let Some(want) = want.filter(|&w| w == bytes.len()) else {
        let need = want.map_or("more than a machine can address".to_string(), |w| w.to_string());
        bail!(
            "{name}: {} bytes but the header ({n} images of {rows}x{cols}) needs {need}: file truncated or corrupt",
            bytes.len()
        );
    };
    debug_assert_eq!(want, bytes.len());
    let mut bytes = bytes;
    bytes.drain(..16);
    Ok(IdxImages {
        n,
        rows,
        cols,
        pixels: bytes,
    })
}

/// Parses an IDX label file; every label must be below `num_classes`.
pub fn parse_labels(bytes: &[u8], name: &str, num_classes: u8) -> Result<Vec<u8>> {
    if bytes.len() < 8 {
        bail!(
            "{name}: truncated IDX label file: {} bytes, the header alone needs 8",
            bytes.len()
        );
    }
    let magic = be_u32(bytes, 0);
    if magic != LABELS_MAGIC {
        bail!("{name}: wrong magic number 0x{magic:08x}, expected 0x{LABELS_MAGIC:08x} (IDX labels)");
    }
    let n = be_u32(bytes, 4) as usize;
    if bytes.len() - 8 != n {
        bail!(
            "{name}: {} bytes but the header ({n} labels) needs {}: file truncated or corrupt",
            bytes.len(),
            8 + n
        );
    }
    let labels = bytes[8..].to_vec();
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l >= num_classes) {
        bail!(
            "{name}: label {l} at index {i} is out of range: expected 0..{}",
            num_classes - 1
        );
    }
    Ok(labels)
}

/// Builds IDX bytes (used by tests and the test fixtures' writers).
pub fn encode_images(n: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + pixels.len());
    for v in [IMAGES_MAGIC, n as u32, rows as u32, cols as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let px: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let img = parse_images(encode_images(2, 3, 4, &px), "x").unwrap();
        assert_eq!((img.n, img.rows, img.cols), (2, 3, 4));
        assert_eq!(img.pixels, px);
        assert_eq!(
            parse_labels(&encode_labels(&[1, 9]), "y", 10).unwrap(),
            vec![1, 9]
        );
    }

    #[test]
    fn wrong_magic() {
        let mut b = encode_images(1, 2, 2, &[0; 4]);
        b[3] = 0x01;
        let e = parse_images(b, "f.idx").unwrap_err().to_string();
        assert!(e.contains("f.idx") && e.contains("magic"), "{e}");
        let e = parse_labels(&encode_images(1, 1, 1, &[0]), "l.idx", 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn truncated() {
        let mut b = encode_images(2, 2, 2, &[0; 8]);
        b.pop();
        assert!(parse_images(b, "f")
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(parse_images(vec![0; 5], "f")
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        let mut l = encode_labels(&[1, 2, 3]);
        l.pop();
        assert!(parse_labels(&l, "l", 10)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }

    #[test]
    fn label_out_of_range() {
        let e = parse_labels(&encode_labels(&[1, 10]), "l", 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range") && e.contains("index 1"), "{e}");
    }
}
