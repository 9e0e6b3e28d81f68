//! Scenarios: a named, fixed plan of faults. The seed chooses durations, gaps and
//! targets; the plan is written to `run.json` before the run starts, and every planned
//! fault must show up in the history with a start and an end.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// One kind of fault (see [`crate::nemesis`] for what each does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Fault {
    KillLeader,
    KillFollower,
    KillTwo,
    PauseLeader,
    PartitionLeader,
    PartitionFollower,
    PartitionBridge,
    PartitionOneWay,
    LeaderWorkersCut,
    ClientLeaderCut,
    LinkDelay,
    WorkerKill,
    ClockJump,
    StaleDispatch,
    ZombieLeader,
}

pub const ALL_FAULTS: &[Fault] = &[
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::KillTwo,
    Fault::PauseLeader,
    Fault::PartitionLeader,
    Fault::PartitionFollower,
    Fault::PartitionBridge,
    Fault::PartitionOneWay,
    Fault::LeaderWorkersCut,
    Fault::ClientLeaderCut,
    Fault::LinkDelay,
    Fault::WorkerKill,
    Fault::ClockJump,
    Fault::StaleDispatch,
    Fault::ZombieLeader,
];

impl Fault {
    /// The name used in the history and in `run.json`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::KillTwo => "kill-two",
            Fault::PauseLeader => "pause-leader",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionFollower => "partition-follower",
            Fault::PartitionBridge => "partition-bridge",
            Fault::PartitionOneWay => "partition-one-way",
            Fault::LeaderWorkersCut => "leader-workers-cut",
            Fault::ClientLeaderCut => "client-leader-cut",
            Fault::LinkDelay => "link-delay",
            Fault::WorkerKill => "worker-kill",
            Fault::ClockJump => "clock-jump",
            Fault::StaleDispatch => "stale-dispatch",
            Fault::ZombieLeader => "zombie-leader",
        }
    }

    /// How long the fault lasts, in ms (range for the seed). Leader faults outlast
    /// the election timeout (about 1 s with the harness's timings) so leadership
    /// moves; dispatch cuts outlast lease + grace (2.2 s) so attempts are lost.
    fn duration_ms(self) -> (u64, u64) {
        match self {
            Fault::KillLeader | Fault::KillFollower | Fault::KillTwo => (1000, 3000),
            Fault::PauseLeader => (2000, 3500),
            Fault::PartitionLeader
            | Fault::PartitionFollower
            | Fault::PartitionBridge
            | Fault::PartitionOneWay => (3000, 6000),
            Fault::LeaderWorkersCut => (3000, 5000),
            Fault::ClientLeaderCut => (3000, 5000),
            Fault::LinkDelay => (4000, 6000),
            Fault::WorkerKill => (2000, 4000),
            Fault::ClockJump => (3000, 5000),
            // After the 1.5 s in which dispatches are held but the leader still leads.
            Fault::StaleDispatch => (3500, 5000),
            // An election, then lease + grace, then a retry elsewhere.
            Fault::ZombieLeader => (4500, 6500),
        }
    }
}

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    /// The faults, in order; repeated while the time limit allows. Empty: `mixed`
    /// (a seeded draw from every fault).
    pub cycle: &'static [Fault],
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "kill-leader",
        about: "kill -9 the leader, restart it after 1-3 s",
        cycle: &[Fault::KillLeader],
    },
    Scenario {
        name: "kill-follower",
        about: "kill -9 a follower, restart it after 1-3 s",
        cycle: &[Fault::KillFollower],
    },
    Scenario {
        name: "kill-two",
        about: "kill -9 the leader and a follower (quorum lost), restart both",
        cycle: &[Fault::KillTwo],
    },
    Scenario {
        name: "pause-leader",
        about: "SIGSTOP the leader for 2-3.5 s (beyond the election timeout), then SIGCONT",
        cycle: &[Fault::PauseLeader],
    },
    Scenario {
        name: "partition-leader",
        about: "cut the leader's Raft links both ways (leader in the minority; clients and workers still reach it)",
        cycle: &[Fault::PartitionLeader],
    },
    Scenario {
        name: "partition-follower",
        about: "cut one follower's Raft links both ways (leader keeps a majority)",
        cycle: &[Fault::PartitionFollower],
    },
    Scenario {
        name: "partition-bridge",
        about: "cut the leader from one follower; the other follower sees both",
        cycle: &[Fault::PartitionBridge],
    },
    Scenario {
        name: "partition-one-way",
        about: "the leader can send to its peers but receives nothing from them",
        cycle: &[Fault::PartitionOneWay],
    },
    Scenario {
        name: "leader-workers-cut",
        about: "cut the links between the leader and every worker; Raft links intact",
        cycle: &[Fault::LeaderWorkersCut],
    },
    Scenario {
        name: "client-leader-cut",
        about: "clients cannot reach the leader's api port (connections refused)",
        cycle: &[Fault::ClientLeaderCut],
    },
    Scenario {
        name: "link-delay",
        about: "delay every Raft link by 20-60 ms each way",
        cycle: &[Fault::LinkDelay],
    },
    Scenario {
        name: "worker-kill",
        about: "kill -9 a worker while it runs attempts, restart it after 2-4 s",
        cycle: &[Fault::WorkerKill],
    },
    Scenario {
        name: "clock-jump",
        about: "jump the leader's wall clock forward or back by 5-30 s, then restore it",
        cycle: &[Fault::ClockJump],
    },
    Scenario {
        name: "stale-dispatch",
        about: "hold the leader's dispatches to workers, then cut it from its peers; the held dispatches arrive after a new leader took over",
        cycle: &[Fault::StaleDispatch],
    },
    Scenario {
        name: "zombie-leader",
        about: "cut the leader from its peers and from one worker; the other worker stays with the deposed leader",
        cycle: &[Fault::ZombieLeader],
    },
    Scenario {
        name: "mixed",
        about: "a seeded sequence drawn from every fault above",
        cycle: &[],
    },
];

/// The smoke selection `make test` runs (`tests/smoke.rs`): together under four
/// minutes on 2 cores with a 20 s time limit each.
pub const SMOKE: &[&str] = &[
    "kill-leader",
    "pause-leader",
    "zombie-leader",
    "stale-dispatch",
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// One planned fault.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub fault: Fault,
    /// From the start of the workload.
    pub at_ms: u64,
    pub duration_ms: u64,
    /// A seeded number the nemesis uses to pick targets and amounts.
    pub pick: u64,
}

/// How long the workload runs before the first fault.
pub fn warmup(time_limit: Duration) -> Duration {
    (time_limit / 6).clamp(Duration::from_secs(2), Duration::from_secs(5))
}

/// The fault plan: faults back to back with 2-4 s gaps (time to recover and show it),
/// from the warm-up until the time limit, each fault at least once.
pub fn plan(s: &Scenario, seed: u64, time_limit: Duration) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0ffa);
    let limit = time_limit.as_millis() as u64;
    let mut t = warmup(time_limit).as_millis() as u64;
    let mut out = Vec::new();
    let mixed: Vec<Fault> = if s.cycle.is_empty() {
        let mut all = ALL_FAULTS.to_vec();
        all.shuffle(&mut rng);
        all
    } else {
        Vec::new()
    };
    let cycle: &[Fault] = if s.cycle.is_empty() { &mixed } else { s.cycle };
    let mut i = 0usize;
    loop {
        let fault = cycle[i % cycle.len()];
        let (lo, hi) = fault.duration_ms();
        let duration_ms = rng.gen_range(lo..=hi);
        // Stop once the time is used up, but plan every fault of a fixed cycle once.
        if t + duration_ms > limit && (i >= cycle.len() || s.cycle.is_empty()) && !out.is_empty() {
            break;
        }
        out.push(Planned {
            fault,
            at_ms: t,
            duration_ms,
            pick: rng.gen(),
        });
        t += duration_ms + rng.gen_range(2000..=4000);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_seeded_and_fit() {
        for s in SCENARIOS {
            let a = plan(s, 7, Duration::from_secs(30));
            let b = plan(s, 7, Duration::from_secs(30));
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                serde_json::to_string(&b).unwrap()
            );
            assert!(!a.is_empty(), "{}", s.name);
            for p in &a {
                assert!(p.at_ms >= warmup(Duration::from_secs(30)).as_millis() as u64);
            }
            if !s.cycle.is_empty() {
                assert!(a.iter().all(|p| s.cycle.contains(&p.fault)), "{}", s.name);
            }
        }
        assert!(SMOKE.iter().all(|n| find(n).is_some()));
        let mixed = plan(find("mixed").unwrap(), 1, Duration::from_secs(60));
        assert!(mixed.len() >= 4, "{mixed:?}");
    }
}
