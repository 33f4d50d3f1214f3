//! The one way partrain writes a file: the bytes go to a temporary file in the same folder, which
//! is fsync'd, renamed over the target, and the folder is fsync'd. A reader (or a resumed run)
//! sees the old file or the new one, never half of one, even when the process is killed or the
//! node dies in the middle (PostgreSQL's and SQLite's rule; the crash tests kill a rank at each
//! point, tests/crash.rs).
//!
//! A test hook (`set_hook`, installed by `train::faults` for `PARTRAIN_FAULT=kill-in-write:...`) is
//! called with the target's path when half the bytes are in the temporary file and when all are,
//! before the rename.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where a write stands when the hook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Half of the bytes are in the temporary file.
    Mid,
    /// All bytes are in the temporary file, fsync'd; the rename is next.
    BeforeRename,
}

static HOOK: OnceLock<fn(&Path, Phase)> = OnceLock::new();

/// Installs the test hook (once per process).
pub fn set_hook(hook: fn(&Path, Phase)) {
    let _ = HOOK.set(hook);
}

fn hook(path: &Path, phase: Phase) {
    if let Some(h) = HOOK.get() {
        h(path, phase);
    }
}

/// The temporary file a write of `path` goes through: `.<stem>.tmp.<extension>` beside it (the
/// extension kept, for libraries that choose the format by it).
pub fn temporary(path: &Path) -> PathBuf {
    let part = |p: Option<&std::ffi::OsStr>| p.map(|n| n.to_string_lossy().to_string());
    let name = match (part(path.file_stem()), part(path.extension())) {
        (Some(stem), Some(ext)) => format!(".{stem}.tmp.{ext}"),
        (Some(stem), None) => format!(".{stem}.tmp"),
        _ => ".tmp".to_string(),
    };
    path.with_file_name(name)
}

/// `rows` as a CSV file with a header, written atomically.
pub fn write_csv<T: serde::Serialize>(path: &Path, rows: impl IntoIterator<Item = T>) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)
            .with_context(|| format!("{}: a row does not serialise", path.display()))?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    write(path, &bytes)
}

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    replace(path, false, |tmp| {
        let mut f = std::fs::File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let half = bytes.len() / 2;
        f.write_all(&bytes[..half])
            .and_then(|_| f.flush())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        hook(path, Phase::Mid);
        f.write_all(&bytes[half..])
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// Atomically replaces `path` with what `fill` writes into the temporary file it is given (for
/// files another library writes: safetensors, PNG).
pub fn write_with(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    replace(path, true, fill)
}

/// The temporary filled, fsync'd, renamed over `path`, the folder fsync'd; `foreign`: `fill`
/// did not call the hook's `Mid` point itself.
fn replace(path: &Path, foreign: bool, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temporary(path);
    fill(&tmp)?;
    if foreign && HOOK.get().is_some() {
        mid_of_foreign_file(path, &tmp)?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&tmp)
        .with_context(|| format!("cannot reopen {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot fsync {}", tmp.display()))?;
    hook(path, Phase::BeforeRename);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    sync_folder(path)
}

/// For the test hook's `Mid` point in a file written by another library: the temporary file cut
/// to half its bytes while the hook runs (a kill there leaves a torn temporary), then restored.
fn mid_of_foreign_file(path: &Path, tmp: &Path) -> Result<()> {
    let bytes = std::fs::read(tmp).with_context(|| format!("cannot read {}", tmp.display()))?;
    if bytes.len() < 2 {
        return Ok(());
    }
    std::fs::write(tmp, &bytes[..bytes.len() / 2])?;
    hook(path, Phase::Mid);
    std::fs::write(tmp, &bytes)?;
    Ok(())
}

/// fsync of the folder holding `path`, so the rename itself survives a crash.
pub fn sync_folder(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let d = std::fs::File::open(dir).with_context(|| format!("cannot open folder {}", dir.display()))?;
    d.sync_all()
        .with_context(|| format!("cannot fsync folder {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files_and_leave_no_temporary() {
        let dir = std::env::temp_dir().join(format!("partrain-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("summary.json");
        write(&p, b"first").unwrap();
        write(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        write_with(&p, |tmp| Ok(std::fs::write(tmp, b"third")?)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"third");
        assert!(!temporary(&p).exists());
        assert_eq!(temporary(&p).file_name().unwrap(), ".summary.tmp.json");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
