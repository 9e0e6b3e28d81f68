//! `faults_happened`: every fault the scenario planned (`RunMeta::planned_faults`,
//! by name, counted) has as many `Start`s and `End`s in the history, and no fault
//! `Failed`. Otherwise the run did not test what it claims: unknown, never
//! invalid (the system under test did nothing wrong).

use std::collections::BTreeMap;

use super::{nemesis_json, Ctx, Findings};
use crate::history::NemesisPhase;

pub(crate) const NAME: &str = "faults_happened";

pub(crate) fn check(ctx: &Ctx<'_>) -> super::CheckResult {
    let mut f = Findings::new(NAME);
    let mut planned: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &ctx.run.meta.planned_faults {
        *planned.entry(p.as_str()).or_default() += 1;
    }
    let mut starts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ends: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &ctx.nemesis {
        match n.phase {
            NemesisPhase::Start => *starts.entry(n.fault.as_str()).or_default() += 1,
            NemesisPhase::End => *ends.entry(n.fault.as_str()).or_default() += 1,
            NemesisPhase::Failed => f.unknown(
                format!("fault {} could not be injected", n.fault),
                vec![nemesis_json(n)],
            ),
        }
    }
    for (fault, want) in &planned {
        let s = starts.get(fault).copied().unwrap_or(0);
        let e = ends.get(fault).copied().unwrap_or(0);
        if s < *want || e < *want {
            f.unknown(
                format!("planned fault {fault} x{want} happened with {s} start(s) and {e} end(s)"),
                ctx.nemesis
                    .iter()
                    .filter(|n| n.fault == *fault)
                    .map(|n| nemesis_json(n))
                    .collect(),
            );
        }
    }
    f.finish(format!(
        "all {} planned faults started and ended",
        ctx.run.meta.planned_faults.len()
    ))
}
