//! The health gate: wait for health, then mark good, or report and roll back.
//!
//! The rule that keeps it from looping: the gate only reboots a slot that is
//! *not* the one it last marked good, and only when there is such a slot to
//! return to. The known-good slot, an unknown slot and a gateway that never
//! had a good boot are reported, not rebooted.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Error;
use crate::checks::{self, Failure};
use crate::config::Config;
use crate::slot::{self, State};

/// Why an unhealthy boot is not rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stay {
    /// The booted slot is the one last marked good: rebooting could loop.
    KnownGood(String),
    /// No slot was ever marked good: there is nothing to return to.
    NoKnownGood,
    /// The booted slot could not be determined.
    SlotUnknown(String),
}

/// What the gate does after the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Healthy: mark the booted slot good.
    MarkGood,
    /// Unhealthy fresh slot: mark it bad and reboot into the known-good one.
    MarkBadAndReboot {
        /// The slot booted.
        booted: String,
        /// The slot the bootloader should return to.
        known_good: String,
    },
    /// Unhealthy, but rebooting would not help: report only.
    Stay(Stay),
}

/// The decision, without I/O.
pub fn decide(healthy: bool, booted: &Result<String, Error>, last_good: Option<&str>) -> Action {
    if healthy {
        return Action::MarkGood;
    }
    let booted = match booted {
        Ok(b) => b,
        Err(e) => return Action::Stay(Stay::SlotUnknown(e.to_string())),
    };
    match last_good {
        None => Action::Stay(Stay::NoKnownGood),
        Some(good) if good == booted => Action::Stay(Stay::KnownGood(good.to_string())),
        Some(good) => Action::MarkBadAndReboot {
            booted: booted.clone(),
            known_good: good.to_string(),
        },
    }
}

/// The gate's result, for the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy and marked good.
    MarkedGood,
    /// Healthy but marking good failed.
    MarkGoodFailed,
    /// Unhealthy; marked bad and a reboot was requested.
    RolledBack,
    /// Unhealthy; no reboot (see the reason printed).
    Unhealthy,
}

/// Where the gate's lines go: the console and the journal (via tracing).
pub trait Report {
    /// One line an operator must see.
    fn line(&mut self, error: bool, text: &str);
}

/// Poll the checks until all have passed, round after round, for
/// `stable_s`, or the deadline passes. Returns what was unhealthy (empty =
/// healthy) and the time taken. At the deadline that is the last round's
/// failures or, when the last round passed but not for long enough, the
/// failures of the last round that did not, and [`Failure::Unstable`].
pub fn wait_healthy(config: &Config) -> (Vec<Failure>, Duration) {
    let start = Instant::now();
    let deadline = Duration::from_secs(config.deadline_s);
    let stable = Duration::from_secs(config.stable_s);
    let interval = Duration::from_millis(config.interval_ms);
    let mut passing_since: Option<Instant> = None;
    let mut last_broken: Vec<Failure> = Vec::new();
    loop {
        let failures = checks::run_all(config);
        let now = Instant::now();
        let elapsed = now.duration_since(start);
        if failures.is_empty() {
            let since = *passing_since.get_or_insert(now);
            if now.duration_since(since) >= stable {
                return (failures, elapsed);
            }
            if elapsed >= deadline {
                let mut unhealthy = last_broken;
                unhealthy.push(Failure::Unstable {
                    passing_ms: u64::try_from(now.duration_since(since).as_millis())
                        .unwrap_or(u64::MAX),
                    required_s: config.stable_s,
                });
                return (unhealthy, elapsed);
            }
        } else {
            passing_since = None;
            if elapsed >= deadline {
                return (failures, elapsed);
            }
            last_broken = failures.clone();
        }
        tracing::debug!(
            failing = failures.len(),
            elapsed_ms = elapsed.as_millis() as u64,
            "not healthy yet"
        );
        std::thread::sleep(interval.min(deadline.saturating_sub(elapsed)));
    }
}

/// Run a configured command; the error names it and says how it failed.
pub fn run_command(argv: &[String]) -> Result<(), Error> {
    let (program, args) = argv
        .split_first()
        .ok_or(Error::EmptyCommand("empty command"))?;
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            command: format!("`{}`", argv.join(" ")),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Failed {
            command: format!("`{}`", argv.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The whole gate: checks, decision, action.
pub fn run(config: &Config, report: &mut dyn Report) -> Verdict {
    let booted = slot::booted(config.booted_slot, &config.cmdline, &config.rauc_status);
    let state = slot::read_state(&config.state_dir).unwrap_or_else(|e| {
        report.line(
            true,
            &format!("cannot read the gate's state ({e}); treating it as empty"),
        );
        State::default()
    });
    let slot_name = booted.as_deref().unwrap_or("?").to_string();
    tracing::info!(slot = %slot_name, last_good = ?state.last_good_slot, deadline_s = config.deadline_s, "health gate started");

    let (failures, elapsed) = wait_healthy(config);
    let secs = elapsed.as_secs_f64();
    let action = decide(
        failures.is_empty(),
        &booted,
        state.last_good_slot.as_deref(),
    );
    match action {
        Action::MarkGood => {
            match run_command(&config.mark_good) {
                Ok(()) => {
                    report.line(
                        false,
                        &format!("healthy after {secs:.1} s: slot {slot_name} marked good"),
                    );
                    if let Ok(b) = &booted {
                        let new = State {
                            last_good_slot: Some(b.clone()),
                            marked_at: Some(now_unix()),
                        };
                        if let Err(e) = slot::write_state(&config.state_dir, &new) {
                            report.line(true, &format!("slot {b} was marked good but the gate's state was not saved: {e}"));
                        }
                    }
                    Verdict::MarkedGood
                }
                Err(e) => {
                    report.line(true, &format!("healthy after {secs:.1} s but marking slot {slot_name} good failed: {e}"));
                    Verdict::MarkGoodFailed
                }
            }
        }
        Action::MarkBadAndReboot { booted, known_good } => {
            report_failures(report, &failures, &slot_name, secs);
            report.line(true, &format!("slot {booted} is not the known-good slot {known_good}: marking it bad and rebooting"));
            if let Err(e) = run_command(&config.mark_bad) {
                // The boot counter still runs out and returns to the good slot.
                report.line(
                    true,
                    &format!("marking slot {booted} bad failed ({e}); rebooting anyway"),
                );
            }
            if let Err(e) = run_command(&config.reboot) {
                report.line(true, &format!("reboot failed: {e}"));
            }
            Verdict::RolledBack
        }
        Action::Stay(why) => {
            report_failures(report, &failures, &slot_name, secs);
            let line = match why {
                Stay::KnownGood(s) => format!("slot {s} is the known-good slot: not rebooting (no loop); fix the failures above"),
                Stay::NoKnownGood => "no slot has been marked good yet, so there is nothing to return to: not rebooting".to_string(),
                Stay::SlotUnknown(e) => format!("the booted slot is unknown ({e}): not rebooting"),
            };
            report.line(true, &line);
            Verdict::Unhealthy
        }
    }
}

fn report_failures(report: &mut dyn Report, failures: &[Failure], slot: &str, secs: f64) {
    report.line(
        true,
        &format!(
            "UNHEALTHY: slot {slot} after {secs:.1} s, {} check(s) failed:",
            failures.len()
        ),
    );
    for f in failures {
        report.line(true, &format!("  {f}"));
    }
}

fn now_unix() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Result<String, Error> {
        Ok(s.to_string())
    }

    #[test]
    fn healthy_always_marks_good() {
        for last in [None, Some("A"), Some("B")] {
            assert_eq!(decide(true, &ok("A"), last), Action::MarkGood);
        }
        assert_eq!(
            decide(true, &Err(Error::EmptyCommand("x")), None),
            Action::MarkGood
        );
    }

    #[test]
    fn unhealthy_fresh_slot_rolls_back() {
        assert_eq!(
            decide(false, &ok("B"), Some("A")),
            Action::MarkBadAndReboot {
                booted: "B".into(),
                known_good: "A".into()
            }
        );
    }

    #[test]
    fn unhealthy_known_good_slot_never_reboots() {
        assert_eq!(
            decide(false, &ok("A"), Some("A")),
            Action::Stay(Stay::KnownGood("A".into()))
        );
    }

    #[test]
    fn nothing_to_return_to_never_reboots() {
        assert_eq!(
            decide(false, &ok("A"), None),
            Action::Stay(Stay::NoKnownGood)
        );
        assert_eq!(
            decide(
                false,
                &Err(Error::NoSlotOnCmdline("/proc/cmdline".into())),
                Some("A")
            ),
            Action::Stay(Stay::SlotUnknown("no rauc.slot= in /proc/cmdline".into()))
        );
    }

    /// The sequence of an update that fails and rolls back, then a fixed
    /// update: every step follows from the previous one's state.
    #[test]
    fn update_rollback_update_sequence() {
        // First boot of A, healthy.
        assert_eq!(decide(true, &ok("A"), None), Action::MarkGood);
        // Update to B, unhealthy: back to A.
        assert!(matches!(
            decide(false, &ok("B"), Some("A")),
            Action::MarkBadAndReboot { .. }
        ));
        // A again but now something is broken on A too: stay.
        assert!(matches!(
            decide(false, &ok("A"), Some("A")),
            Action::Stay(_)
        ));
        // A fixed, then a good update to B; then A is the fresh one.
        assert_eq!(decide(true, &ok("B"), Some("A")), Action::MarkGood);
        assert!(matches!(
            decide(false, &ok("A"), Some("B")),
            Action::MarkBadAndReboot { .. }
        ));
    }
}
