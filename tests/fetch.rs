//! The mirror download path, tested against a loopback HTTP server that serves small archives in
//! the official layouts (gzipped IDX files; CIFAR-10's binary tarball). Nothing leaves 127.0.0.1.
mod common;
use common::*;
use partrain::config::{DataConfig, DatasetName};
use partrain::data::{cifar, fetch, idx, IDX_FILES};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

/// Serves `files` (URL path -> body) over HTTP/1.0 on 127.0.0.1 until the test process ends.
fn serve(files: HashMap<String, Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
            match files.get(&path) {
                Some(body) => {
                    let _ = write!(
                        s,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(body);
                }
                None => {
                    let _ = s.write_all(
                        b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
        }
    });
    format!("http://{addr}")
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Small IDX files cut from the real MNIST data.
fn small_mnist() -> Vec<(&'static str, Vec<u8>)> {
    let src = mnist_dir();
    let mut out = Vec::new();
    for (img, lab, n) in [
        (IDX_FILES[0], IDX_FILES[1], 128usize),
        (IDX_FILES[2], IDX_FILES[3], 32),
    ] {
        let images = idx::parse_images(std::fs::read(src.join(img)).unwrap(), img).unwrap();
        let labels = idx::parse_labels(&std::fs::read(src.join(lab)).unwrap(), lab, 10).unwrap();
        out.push((img, idx::encode_images(n, 28, 28, &images.pixels[..n * 784])));
        out.push((lab, idx::encode_labels(&labels[..n])));
    }
    out
}

#[test]
fn mnist_mirror_layout_downloads_verifies_and_loads() {
    let files = small_mnist();
    let mut served = HashMap::new();
    for (name, bytes) in &files {
        served.insert(format!("/mnist/{name}.gz"), gz(bytes));
    }
    served.insert(
        "/corrupt/train-images-idx3-ubyte.gz".into(),
        b"not gzip at all".to_vec(),
    );
    let base = serve(served);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    let sums: Vec<(&str, String)> = files.iter().map(|(n, b)| (*n, fetch::sha256_hex(b))).collect();
    let sums_ref: Vec<(&str, &str)> = sums.iter().map(|(n, s)| (*n, s.as_str())).collect();
    fetch::fetch_gz_files(&format!("{base}/mnist"), &sums_ref, &dir).unwrap();
    for (name, bytes) in &files {
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes);
    }
    let data = partrain::data::load(&DataConfig {
        dataset: DatasetName::Mnist,
        dir: Some(dir.display().to_string()),
        train_limit: None,
        test_limit: None,
    })
    .unwrap();
    assert_eq!(data.train.images.size(), vec![128, 1, 28, 28]);

    // Through the CLI with the real checksums: the small files do not match, nothing is written.
    let cli_dir = tmp.path().join("cli");
    let o = partrain(&[
        "data",
        "fetch",
        "mnist",
        "--source",
        "mirror",
        "--mirror",
        &format!("{base}/mnist"),
        "--dir",
        cli_dir.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("sha256") && text(&o).contains("train-images-idx3-ubyte"),
        "{}",
        text(&o)
    );
    assert!(!cli_dir.join("train-images-idx3-ubyte").exists());
    // A missing file (404) and a corrupt gzip stream are clear errors too.
    let e = fetch::fetch_gz_files(&format!("{base}/nothing"), &sums_ref, &tmp.path().join("x")).unwrap_err();
    assert!(format!("{e:#}").contains("404"), "{e:#}");
    let e =
        fetch::fetch_gz_files(&format!("{base}/corrupt"), &sums_ref[..1], &tmp.path().join("y")).unwrap_err();
    assert!(format!("{e:#}").contains("not a valid gzip"), "{e:#}");
}

/// A tarball in the official layout: cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin.
fn cifar_tarball(per_file: usize) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut names: Vec<&str> = cifar::TRAIN_FILES.to_vec();
    names.push(cifar::TEST_FILE);
    for (f, name) in names.iter().enumerate() {
        let labels: Vec<u8> = (0..per_file).map(|i| ((i + f) % 10) as u8).collect();
        // Red plane 255, green 0, blue 128 in the first image of each file; others a ramp.
        let mut pixels: Vec<u8> = (0..per_file * 3072).map(|i| (i % 256) as u8).collect();
        pixels[..1024].fill(255);
        pixels[1024..2048].fill(0);
        pixels[2048..3072].fill(128);
        let body = cifar::encode_batch(&labels, &pixels);
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), &body[..])
            .unwrap();
    }
    let meta = b"airplane\nautomobile\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(meta.len() as u64);
    h.set_cksum();
    tar.append_data(&mut h, "cifar-10-batches-bin/batches.meta.txt", &meta[..])
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

#[test]
fn cifar10_mirror_layout_downloads_loads_and_trains() {
    let archive = cifar_tarball(40);
    let sha = fetch::sha256_hex(&archive);
    let mut served = HashMap::new();
    served.insert(format!("/kriz/{}", fetch::CIFAR_ARCHIVE), archive);
    let base = serve(served);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar10");
    fetch::fetch_cifar_archive(&format!("{base}/kriz/{}", fetch::CIFAR_ARCHIVE), &sha, &dir).unwrap();
    for f in cifar::TRAIN_FILES.iter().chain([&cifar::TEST_FILE]) {
        assert!(dir.join(f).exists(), "{f}");
    }
    let data = partrain::data::load(&DataConfig {
        dataset: DatasetName::Cifar10,
        dir: Some(dir.display().to_string()),
        train_limit: None,
        test_limit: None,
    })
    .unwrap();
    assert_eq!(data.train.images.size(), vec![200, 3, 32, 32]);
    assert_eq!(data.test.images.size(), vec![40, 3, 32, 32]);
    // Planes land in channels R, G, B and are normalised per channel.
    let (mean, std) = partrain::data::normalisation(DatasetName::Cifar10);
    for (c, raw) in [(0i64, 255.0), (1, 0.0), (2, 128.0)] {
        let got = data.train.images.double_value(&[0, c, 5, 7]);
        let want = (raw / 255.0 - mean[c as usize]) / std[c as usize];
        assert!((got - want).abs() < 1e-5, "channel {c}: {got} vs {want}");
    }
    // The CIFAR-10 config trains on it end to end.
    let out = tmp.path().join("run");
    let o = partrain(&[
        "serial",
        "--config",
        &config("cifar10.yaml"),
        "--set",
        &format!("data.dir={}", dir.display()),
        "--set",
        "train.epochs=1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ok(&o);
    assert_eq!(summary(&out)["parameters"], 1_070_794);

    // Through the CLI the real checksum is required: the test archive is refused, nothing written.
    let cli_dir = tmp.path().join("cli");
    let o = partrain(&[
        "data",
        "fetch",
        "cifar10",
        "--source",
        "mirror",
        "--mirror",
        &format!("{base}/kriz"),
        "--dir",
        cli_dir.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("sha256") && text(&o).contains(fetch::CIFAR_ARCHIVE_SHA256),
        "{}",
        text(&o)
    );
    assert!(!Path::new(&cli_dir).join("data_batch_1.bin").exists());
}
