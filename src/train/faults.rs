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
    }
}
