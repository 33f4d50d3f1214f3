//! Data sets loaded once into resident, normalised tensors.

pub mod cifar;
pub mod fetch;
pub mod idx;
pub mod sampler;

use crate::config::{DataConfig, DatasetName};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub const NUM_CLASSES: u8 = 10;

/// MNIST / Fashion-MNIST file names (uncompressed IDX), as the official archives name them.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// A split held in memory: images `[N, C, H, W]` f32 normalised, labels `[N]` i64.
pub struct Split {
    pub images: Tensor,
    pub labels: Tensor,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Dataset {
    pub name: DatasetName,
    pub train: Split,
    pub test: Split,
    /// Hash of what was loaded (sizes + a sample of bytes): compared across ranks at start-up.
    pub fingerprint: u64,
}

/// Per-channel (mean, std) of the training set, on the [0, 1] scale.
pub fn normalisation(name: DatasetName) -> (Vec<f64>, Vec<f64>) {
    match name {
        DatasetName::Mnist => (vec![0.1307], vec![0.3081]),
        DatasetName::FashionMnist => (vec![0.2860], vec![0.3530]),
        DatasetName::Cifar10 => (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]),
    }
}

fn fetch_hint(name: DatasetName) -> String {
    match name {
        DatasetName::Cifar10 => "run `partrain data fetch cifar10` (needs internet) or copy the official \
            cifar-10-batches-bin/*.bin files there"
            .into(),
        n => format!("run `partrain data fetch {}`", n.as_str()),
    }
}

fn read_file(path: &Path, name: DatasetName) -> Result<Vec<u8>> {
    if !path.exists() {
        bail!("data file {} is missing: {}", path.display(), fetch_hint(name));
    }
    std::fs::read(path).with_context(|| format!("cannot read data file {}", path.display()))
}

/// Raw bytes of one split: pixels (N x C x H x W, u8) and labels.
type RawSplit = (Vec<u8>, Vec<u8>);

/// One IDX image file and its label file, checked against each other.
fn read_idx_split(dir: &Path, name: DatasetName, img: &str, lab: &str) -> Result<RawSplit> {
    let (ip, lp) = (dir.join(img), dir.join(lab));
    let images = idx::parse_images(read_file(&ip, name)?, &ip.display().to_string())?;
    let labels = idx::parse_labels(&read_file(&lp, name)?, &lp.display().to_string(), NUM_CLASSES)?;
    if images.n != labels.len() {
        bail!(
            "{} has {} images but {} has {} labels: the counts must agree",
            ip.display(),
            images.n,
            lp.display(),
            labels.len()
        );
    }
    if [images.rows, images.cols] != [28, 28] {
        bail!(
            "{}: images are {}x{}, expected 28x28",
            ip.display(),
            images.rows,
            images.cols
        );
    }
    Ok((images.pixels, labels))
}

/// CIFAR-10's binary batches (in `dir` or its `cifar-10-batches-bin/`), appended in order.
fn read_cifar_split(dir: &Path, files: &[&str]) -> Result<RawSplit> {
    let base = if dir.join("cifar-10-batches-bin").is_dir() {
        dir.join("cifar-10-batches-bin")
    } else {
        dir.to_path_buf()
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in files {
        let p = base.join(f);
        let bytes = read_file(&p, DatasetName::Cifar10)?;
        cifar::parse_batch(&bytes, &p.display().to_string(), &mut pixels, &mut labels)?;
    }
    Ok((pixels, labels))
}

/// Resident, normalised tensors of a split of `shape` images.
/// The images as normalised floats ((byte / 255 - mean) / std per channel) and the labels. One
/// pass through a table of each channel's 256 values instead of five whole-tensor passes (cast,
/// scale, shift, divide, copy), each of which touched 188 MB of fresh pages for MNIST's training
/// set: the start-up of every run. The table is computed by the same libtorch ops, so the floats
/// are the same bit for bit (`tests::byte_table_matches_the_tensor_formula`).
fn to_split((px, lab): RawSplit, shape: [i64; 3], name: DatasetName) -> Split {
    let n = lab.len() as i64;
    let plane = (shape[1] * shape[2]) as usize;
    let table = byte_table(shape[0], name);
    let mut values = Vec::<f32>::with_capacity(px.len());
    for (k, image_plane) in px.chunks(plane).enumerate() {
        let t = &table[k % table.len()];
        values.extend(image_plane.iter().map(|&b| t[b as usize]));
    }
    let images = Tensor::from_slice(&values).reshape([n, shape[0], shape[1], shape[2]]);
    let labels = Tensor::from_slice(&lab).to_kind(Kind::Int64);
    Split { images, labels }
}

/// Per channel, the normalised float of each byte value 0..=255, by the elementwise tensor ops
/// the images used to go through.
fn byte_table(channels: i64, name: DatasetName) -> Vec<Vec<f32>> {
    let (mean, std) = normalisation(name);
    let bytes = Tensor::arange(256, (Kind::Uint8, tch::Device::Cpu)).to_kind(Kind::Float) / 255.0;
    (0..channels as usize)
        .map(|c| {
            let m = Tensor::from_slice(&mean[c..c + 1]).to_kind(Kind::Float);
            let s = Tensor::from_slice(&std[c..c + 1]).to_kind(Kind::Float);
            Vec::<f32>::try_from(&((&bytes - m) / s)).expect("a table of 256 values")
        })
        .collect()
}

/// Hash of what was loaded (sizes, labels, every 97th pixel): compared across ranks.
fn fingerprint(splits: [&RawSplit; 2]) -> u64 {
    let mut fp = Vec::new();
    for s in splits {
        fp.extend_from_slice(&(s.1.len() as u64).to_le_bytes());
        fp.extend_from_slice(&s.1);
        fp.extend(s.0.iter().step_by(97));
    }
    crate::util::fnv1a(&fp)
}

pub fn load(cfg: &DataConfig) -> Result<Dataset> {
    let dir = PathBuf::from(cfg.dir());
    if !dir.is_dir() {
        bail!(
            "data folder {} not found (data.dir): {}",
            dir.display(),
            fetch_hint(cfg.dataset)
        );
    }
    let (mut train, mut test) = match cfg.dataset {
        DatasetName::Mnist | DatasetName::FashionMnist => (
            read_idx_split(&dir, cfg.dataset, IDX_FILES[0], IDX_FILES[1])?,
            read_idx_split(&dir, cfg.dataset, IDX_FILES[2], IDX_FILES[3])?,
        ),
        DatasetName::Cifar10 => (
            read_cifar_split(&dir, &cifar::TRAIN_FILES)?,
            read_cifar_split(&dir, &[cifar::TEST_FILE])?,
        ),
    };
    let shape = cfg.dataset.image_shape();
    let per_image = shape.iter().product::<i64>() as usize;
    for (split, limit) in [(&mut train, cfg.train_limit), (&mut test, cfg.test_limit)] {
        if let Some(l) = limit {
            let n = l.min(split.1.len());
            split.0.truncate(n * per_image);
            split.1.truncate(n);
        }
    }
    Ok(Dataset {
        name: cfg.dataset,
        fingerprint: fingerprint([&train, &test]),
        train: to_split(train, shape, cfg.dataset),
        test: to_split(test, shape, cfg.dataset),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formula the images went through before the table: cast, scale, shift, divide.
    fn by_tensor_ops(px: &[u8], n: i64, shape: [i64; 3], name: DatasetName) -> Tensor {
        let (mean, std) = normalisation(name);
        let c = shape[0];
        let images = Tensor::from_slice(px)
            .reshape([n, shape[0], shape[1], shape[2]])
            .to_kind(Kind::Float)
            / 255.0;
        let m = Tensor::from_slice(&mean).to_kind(Kind::Float).view([1, c, 1, 1]);
        let s = Tensor::from_slice(&std).to_kind(Kind::Float).view([1, c, 1, 1]);
        ((images - m) / s).contiguous()
    }

    #[test]
    fn byte_table_matches_the_tensor_formula() {
        for (name, shape) in [
            (DatasetName::Mnist, [1, 28, 28]),
            (DatasetName::FashionMnist, [1, 28, 28]),
            (DatasetName::Cifar10, [3, 32, 32]),
        ] {
            let n = 5;
            let len = (n * shape[0] * shape[1] * shape[2]) as usize;
            // Every byte value in every channel, in a scrambled order.
            let px: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(7919) % 256) as u8).collect();
            let split = to_split((px.clone(), vec![0; n as usize]), shape, name);
            let want = by_tensor_ops(&px, n, shape, name);
            assert_eq!(split.images.size(), want.size());
            let flat = |t: &Tensor| Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap();
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(bits(flat(&split.images)), bits(flat(&want)), "{name:?}");
        }
    }
}
