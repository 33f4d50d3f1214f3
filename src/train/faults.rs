//! Test-only fault injection: `PARTRAIN_FAULT=<kind>:<rank>:<when>` makes rank `rank` misbehave,
//! so the tests can check that every failure ends the job quickly with a clear message.
//!
//! | kind | at | what the rank does |
//! |---|---|---|
//! | `stall` | global step `when` (1-based) | sleeps forever (the watchdog test) |
//! | `exit` | global step `when` | exits without finalising MPI (a crashed rank) |
//! | `nan` | global step `when` | poisons its input, so the loss is NaN |
//! | `panic` | global step `when` | panics (the panic hook must take the job down) |
//! | `exit-after-epoch` | after epoch `when`'s checkpoint | exits (the resume tests) |
//! | `skip-averaging` | global step `when` | skips that step's gradient averaging (a skipped collective) |
//!
//! and `PARTRAIN_FAULT=kill-in-write:<rank>:<file>:<n>[:mid]`: SIGKILL of that rank during its
//! n-th write of `<file>` (`checkpoint`, `summary` or `metrics`), after the temporary file is
//! written and before the rename, or with `:mid` halfway through its bytes (the crash tests).

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stall,
    Exit,
    Nan,
    Panic,
    ExitAfterEpoch,
    SkipAveraging,
}

#[derive(Debug, Clone, Copy)]
pub struct Fault {
    what: Option<(Kind, usize)>,
}

impl Fault {
    /// This rank's fault from `PARTRAIN_FAULT`, if it names this rank. A malformed value is an
    /// error, not silence: a fault test that injects nothing would pass for the wrong reason.
    pub fn from_env(rank: usize) -> Result<Fault> {
        let Ok(spec) = std::env::var("PARTRAIN_FAULT") else {
            return Ok(Fault { what: None });
        };
        if spec.starts_with("kill-in-write:") {
            // Installed at start-up by `install_kill_in_write`, before the run's first write.
            return Ok(Fault { what: None });
        }
        let parsed = parse(&spec).with_context(|| {
            format!(
                "PARTRAIN_FAULT={spec}: expected <kind>:<rank>:<when> with kind stall, exit, nan, panic, \
                 exit-after-epoch or skip-averaging"
            )
        })?;
        Ok(Fault {
            what: (parsed.1 == rank).then_some((parsed.0, parsed.2)),
        })
    }

    /// Acts at the start of global step `step`; returns true when the input is to be poisoned.
    pub fn at_step(&self, step: usize) -> bool {
        let Some((kind, at)) = self.what else {
            return false;
        };
        if step != at {
            return false;
        }
        match kind {
            Kind::Stall => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            Kind::Exit => {
                eprintln!("PARTRAIN_FAULT: exiting at step {step}");
                std::process::exit(7)
            }
            Kind::Panic => panic!("PARTRAIN_FAULT: panicking at step {step}"),
            Kind::Nan => true,
            Kind::ExitAfterEpoch | Kind::SkipAveraging => false,
        }
    }

    /// Whether this rank skips global step `step`'s gradient averaging.
    pub fn skips_averaging(&self, step: usize) -> bool {
        self.what == Some((Kind::SkipAveraging, step))
    }

    pub fn after_epoch(&self, epoch: usize) {
        if self.what == Some((Kind::ExitAfterEpoch, epoch)) {
            eprintln!("PARTRAIN_FAULT: exiting after epoch {epoch}");
            std::process::exit(7);
        }
    }
}

/// `PARTRAIN_FAULT=kill-in-write:...` for this rank: the atomic writer's hook that kills it.
/// Called at start-up, before the run folder's first write.
pub fn install_kill_in_write(rank: usize) -> Result<()> {
    let Ok(spec) = std::env::var("PARTRAIN_FAULT") else {
        return Ok(());
    };
    let Some(rest) = spec.strip_prefix("kill-in-write:") else {
        return Ok(());
    };
    let kill = parse_kill(rest).with_context(|| {
        format!(
            "PARTRAIN_FAULT={spec}: expected kill-in-write:<rank>:<file>:<n>[:mid] with file checkpoint, summary \
             or metrics"
        )
    })?;
    if kill.rank == rank {
        let _ = KILL.set(kill);
        crate::util::atomic::set_hook(kill_in_write);
    }
    Ok(())
}

/// Where `kill-in-write` kills: this rank's n-th write of a file, at a phase of the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KillInWrite {
    rank: usize,
    file: &'static str,
    n: usize,
    phase: crate::util::atomic::Phase,
}

static KILL: std::sync::OnceLock<KillInWrite> = std::sync::OnceLock::new();
static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn parse_kill(spec: &str) -> Result<KillInWrite> {
    use crate::util::atomic::Phase;
    let parts: Vec<&str> = spec.split(':').collect();
    let (rank, file, n, phase) = match parts.as_slice() {
        [r, f, n] => (r, f, n, Phase::BeforeRename),
        [r, f, n, "mid"] => (r, f, n, Phase::Mid),
        _ => bail!("{} fields", parts.len()),
    };
    let file = match *file {
        "checkpoint" => crate::train::checkpoint::FILE,
        "summary" => crate::record::summary::FILE,
        "metrics" => crate::record::metrics_csv::FILE,
        other => bail!("unknown file `{other}`"),
    };
    Ok(KillInWrite {
        rank: rank.parse()?,
        file,
        n: n.parse()?,
        phase,
    })
}

/// The atomic writer's hook: counts this rank's writes of the file (each write passes `Mid`
/// first) and kills the process at the n-th one's phase.
fn kill_in_write(path: &std::path::Path, phase: crate::util::atomic::Phase) {
    let Some(kill) = KILL.get() else { return };
    if path.file_name().is_none_or(|f| f != kill.file) {
        return;
    }
    let n = match phase {
        crate::util::atomic::Phase::Mid => WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
        _ => WRITES.load(std::sync::atomic::Ordering::SeqCst),
    };
    if n == kill.n && phase == kill.phase {
        eprintln!(
            "PARTRAIN_FAULT: killing this rank in write {n} of {} ({phase:?})",
            kill.file
        );
        // SAFETY: kill(2) of this process: the point of the fault.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

fn parse(spec: &str) -> Result<(Kind, usize, usize)> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [kind, rank, when] = parts.as_slice() else {
        bail!("{} fields", parts.len());
    };
    let kind = match *kind {
        "stall" => Kind::Stall,
        "exit" => Kind::Exit,
        "nan" => Kind::Nan,
        "panic" => Kind::Panic,
        "exit-after-epoch" => Kind::ExitAfterEpoch,
        "skip-averaging" => Kind::SkipAveraging,
        other => bail!("unknown kind `{other}`"),
    };
    Ok((kind, rank.parse()?, when.parse()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_fail_loudly() {
        assert_eq!(parse("stall:1:5").unwrap(), (Kind::Stall, 1, 5));
        assert_eq!(
            parse("exit-after-epoch:0:1").unwrap(),
            (Kind::ExitAfterEpoch, 0, 1)
        );
        assert!(parse("explode:0:1").is_err());
        assert!(parse("stall:1").is_err());
        assert!(parse("stall:x:1").is_err());
        let k = parse_kill("1:metrics:3:mid").unwrap();
        assert_eq!(
            (k.rank, k.file, k.n, k.phase),
            (1, "metrics.csv", 3, crate::util::atomic::Phase::Mid)
        );
        assert_eq!(
            parse_kill("0:checkpoint:2").unwrap().phase,
            crate::util::atomic::Phase::BeforeRename
        );
        assert!(parse_kill("0:model:2").is_err());
        assert!(parse_kill("0:summary:2:late").is_err());
    }
}
