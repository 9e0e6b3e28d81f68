//! `replicas_identical`: all nodes report the same state digest at the same
//! applied index (`final.json` `digests`: node -> `{"applied_index", "digest"}`).
//! Nodes at equal indexes with different digests are invalid. If the indexes
//! differ, digests at different indexes prove nothing: unknown; so is a node
//! (of those `run.json` lists under `extra.nodes`) that gave no digest.

use std::collections::BTreeMap;

use serde_json::Value;

use super::view;
use super::{Ctx, Findings};

pub(crate) const NAME: &str = "replicas_identical";

pub(crate) fn check(ctx: &Ctx<'_>) -> super::CheckResult {
    let mut f = Findings::new(NAME);
    let Some(fin) = ctx.final_state.as_ref() else {
        f.unknown("final.json is missing", vec![]);
        return f.finish("");
    };
    let digests = &fin.state.digests;
    if digests.is_empty() {
        f.unknown("final.json has no state digests", vec![]);
        return f.finish("");
    }
    // The harness lists the nodes in run.json; a node that gave no digest leaves
    // its replica unchecked.
    let nodes = ctx
        .run
        .meta
        .extra
        .get("nodes")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if digests.len() < nodes {
        f.unknown(
            format!("only {} of {nodes} nodes reported a digest", digests.len()),
            vec![],
        );
    }
    let mut by_index: BTreeMap<u64, Vec<(u64, &str, &Value)>> = BTreeMap::new();
    for (node, d) in digests {
        match (view::u64_at(d, "applied_index"), view::str_at(d, "digest")) {
            (Some(i), Some(h)) => by_index.entry(i).or_default().push((*node, h, d)),
            _ => f.unknown(
                format!("node {node} reported no digest"),
                vec![serde_json::json!({"node": node, "digest": d})],
            ),
        }
    }
    for (index, nodes) in &by_index {
        let first = nodes[0].1;
        if nodes.iter().any(|(_, h, _)| *h != first) {
            f.invalid(
                format!("nodes at applied index {index} have different state digests"),
                nodes
                    .iter()
                    .map(|(n, _, d)| serde_json::json!({"node": n, "digest": d}))
                    .collect(),
            );
        }
    }
    if by_index.len() > 1 {
        f.unknown(
            format!(
                "nodes ended at different applied indexes {:?}; digests not comparable",
                by_index.keys().collect::<Vec<_>>()
            ),
            digests
                .iter()
                .map(|(n, d)| serde_json::json!({"node": n, "digest": d}))
                .collect(),
        );
    }
    let index = by_index.keys().next().copied().unwrap_or(0);
    f.finish(format!(
        "{} nodes have the same digest at applied index {index}",
        digests.len()
    ))
}
