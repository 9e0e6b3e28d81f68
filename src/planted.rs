//! Planted bugs: known misbehaviours that jepsen-lite's checkers must catch, so a
//! checker that can never fail is noticed (like tikv's failpoints).
//!
//! They exist only in builds with the `planted-bugs` cargo feature, which only the
//! `raftjob-planted` binary requires (`cargo build --bin raftjob-planted --features
//! planted-bugs`). `RAFTJOB_PLANTED_BUG=<name>` picks one at start-up. Without the
//! feature [`active`] is a `const fn` returning `false`, so every call site compiles
//! to nothing and the normal `raftjob` binary cannot contain a planted bug.

/// One planted bug. The enum exists in every build so call sites read the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The worker accepts dispatches from a lower term than it has seen.
    SkipTermCheck,
    /// The API answers a create or run before its write commits, and never proposes
    /// every fifth one.
    AckBeforeCommit,
    /// Apply accepts a `Fire` for a time at or before the job's fire cursor.
    IgnoreFireCursor,
    /// The leader renews attempt leases without having heard from a quorum.
    RenewWithoutQuorum,
    /// The leader sends each dispatch to a second worker as well.
    DuplicateDispatch,
}

/// The environment variable that picks a planted bug.
pub const ENV: &str = "RAFTJOB_PLANTED_BUG";

impl Bug {
    pub const ALL: [Bug; 5] = [
        Bug::SkipTermCheck,
        Bug::AckBeforeCommit,
        Bug::IgnoreFireCursor,
        Bug::RenewWithoutQuorum,
        Bug::DuplicateDispatch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipTermCheck => "skip-term-check",
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::IgnoreFireCursor => "ignore-fire-cursor",
            Bug::RenewWithoutQuorum => "renew-without-quorum",
            Bug::DuplicateDispatch => "duplicate-dispatch",
        }
    }

    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name.trim())
    }
}

#[cfg(feature = "planted-bugs")]
static ACTIVE: std::sync::OnceLock<Option<Bug>> = std::sync::OnceLock::new();

/// Whether `bug` was picked at start-up.
#[cfg(feature = "planted-bugs")]
pub fn active(bug: Bug) -> bool {
    ACTIVE.get().copied().flatten() == Some(bug)
}

/// Always `false`: this build has no planted bugs.
#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub const fn active(_bug: Bug) -> bool {
    false
}

/// The planted bug this process runs with, if any (for start-up warnings).
pub fn current() -> Option<Bug> {
    Bug::ALL.into_iter().find(|b| active(*b))
}

/// Reads [`ENV`] once, at start-up, before any server or worker runs. An unknown name
/// is an error, and so is any name in a build without the feature (the harness would
/// otherwise test a bug that is not there).
pub fn init_from_env() -> Result<Option<Bug>, String> {
    let Some(raw) = std::env::var(ENV).ok().filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    if !cfg!(feature = "planted-bugs") {
        return Err(format!(
            "{ENV}={raw:?} is set, but this binary has no planted bugs; run raftjob-planted (cargo build --bin raftjob-planted --features planted-bugs)"
        ));
    }
    let bug = Bug::parse(&raw).ok_or_else(|| {
        format!(
            "{ENV}={raw:?} is not a planted bug; known: {}",
            Bug::ALL.map(Bug::name).join(", ")
        )
    })?;
    #[cfg(feature = "planted-bugs")]
    if ACTIVE.set(Some(bug)).is_err() && !active(bug) {
        return Err(format!("{ENV}: another planted bug was already set"));
    }
    Ok(Some(bug))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_is_active_by_default() {
        for b in Bug::ALL {
            assert_eq!(Bug::parse(b.name()), Some(b));
        }
        assert_eq!(Bug::parse("skip-term"), None);
        if !cfg!(feature = "planted-bugs") {
            assert!(Bug::ALL.into_iter().all(|b| !active(b)));
        }
    }
}
