//! `results.md`: one Markdown table per section, with the machine and the fsync limit
//! above them, so the figures can be read against what bounds them.

use std::fmt::Write;

use crate::load::{fmt_ms, LoadResult};
use crate::Results;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

fn rate(r: &LoadResult) -> String {
    let mut s = format!("{:.0}/s", r.ops_per_sec);
    if r.errors > 0 {
        let _ = write!(s, " ({} errors)", r.errors);
    }
    s
}

pub fn markdown(r: &Results) -> String {
    let m = &r.meta;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# raftjob vs etcd: benchmark results ({} mode)\n",
        m.mode
    );
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| started | {} |", m.started_at);
    let _ = writeln!(o, "| duration | {:.0} s |", m.duration_secs);
    let _ = writeln!(o, "| command | `{}` |", m.command);
    let _ = writeln!(
        o,
        "| machine | {} cores ({}), {} RAM, kernel {} |",
        m.cores,
        m.cpu,
        m.mem_total_kib
            .map_or("?".into(), |k| format!("{:.1} GiB", k as f64 / 1048576.0)),
        m.kernel
    );
    let _ = writeln!(o, "| raftjob | {} |", m.raftjob_version);
    let _ = writeln!(
        o,
        "| etcd | {} (Debian package; JSON gateway; default fsync) |",
        m.etcd_version
    );
    let _ = writeln!(
        o,
        "| load average (start → end) | {} → {} |",
        m.loadavg_start, m.loadavg_end
    );
    o.push('\n');

    if let Some(f) = &r.fsync {
        let _ = writeln!(o, "## Disk: fsync latency (the physical limit)\n");
        let _ = writeln!(o, "| writers | 4 KiB write + fdatasync p50 / p99 / max | mean | fsyncs per second per writer (1 / mean) |\n|---|---|---|---|");
        let _ = writeln!(
            o,
            "| 1 | {} | {} | {:.0} |",
            f.one_writer.brief(),
            fmt_ms(f.one_writer.mean_ms),
            f.batches_per_sec_one_writer
        );
        let _ = writeln!(
            o,
            "| 3 at once (three nodes, one disk) | {} | {} | {:.0} |",
            f.three_writers.brief(),
            fmt_ms(f.three_writers.mean_ms),
            f.batches_per_sec_three_writers
        );
        let _ = writeln!(o, "\nA commit needs the leader's log fsync and one follower's (in parallel), so one \
            client (one write per batch) cannot exceed about {:.0} writes/s; N clients can reach N times that \
            only when each fsync carries a batch of N writes (group commit).\n",
            f.batches_per_sec_three_writers.min(f.batches_per_sec_one_writer));
    }

    if let Some(w) = &r.writes {
        let _ = writeln!(o, "## Replicated writes (through the leader)\n");
        let _ = writeln!(o, "raftjob: `POST /api/v1/jobs` ({} B body) and `POST /api/v1/jobs/{{id}}/run` ({} B body, \
            delayed a year so no dispatch follows); etcd: `POST /v3/kv/put` with a {} B value. \
            {:.0} s per point, closed loop, one reqwest client for both. Latency p50 / p99 / max.\n",
            w.payload_bytes, w.run_body_bytes, w.payload_bytes, w.secs_per_point);
        let _ = writeln!(o, "| clients | raftjob create | latency | raftjob run | latency | etcd put | latency | create/etcd | run/etcd | p99 create/etcd |\n|---|---|---|---|---|---|---|---|---|---|");
        for p in &w.points {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                p.clients,
                rate(&p.raftjob_create),
                p.raftjob_create.latency.brief(),
                rate(&p.raftjob_run),
                p.raftjob_run.latency.brief(),
                rate(&p.etcd_put),
                p.etcd_put.latency.brief(),
                p.ratio_create,
                p.ratio_run,
                p.p99_ratio_create
            );
        }
        let _ = writeln!(o, "\nCPU during each point (all three server processes; µs of CPU per write, and cores busy), \
            which shows whether the 2 cores rather than the disk bound the figure:\n");
        let _ = writeln!(o, "| clients | raftjob create | raftjob run | etcd put | load generator (create / run / put) |\n|---|---|---|---|---|");
        let cpu = |r: &LoadResult| {
            r.cpu.as_ref().map_or("n/a".into(), |c| {
                format!(
                    "{:.0} µs/op, {:.2} cores",
                    c.servers_us_per_op, c.servers_cores
                )
            })
        };
        let client = |r: &LoadResult| {
            r.cpu
                .as_ref()
                .map_or("n/a".into(), |c| format!("{:.2}", c.client_cores))
        };
        for p in &w.points {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} / {} / {} cores |",
                p.clients,
                cpu(&p.raftjob_create),
                cpu(&p.raftjob_run),
                cpu(&p.etcd_put),
                client(&p.raftjob_create),
                client(&p.raftjob_run),
                client(&p.etcd_put)
            );
        }
        o.push('\n');
    }

    if let Some(d) = &r.dispatch {
        let _ = writeln!(
            o,
            "## End-to-end dispatch (run → succeeded, no-op custom processor)\n"
        );
        let _ = writeln!(o, "| protocol | workers | runs (clients) | succeeded | instances/s | run → dispatched p50 / p99 / max | run → succeeded p50 / p99 / max |\n|---|---|---|---|---|---|---|");
        for p in d {
            let _ = writeln!(
                o,
                "| {} | {} | {} ({}) | {} | {:.0} | {} | {} |",
                p.protocol,
                p.workers,
                p.instances,
                p.clients,
                p.succeeded,
                p.instances_per_sec,
                p.run_to_dispatched.brief(),
                p.run_to_succeeded.brief()
            );
        }
        o.push('\n');
    }

    if let Some(l) = &r.lateness {
        let _ = writeln!(
            o,
            "## Trigger lateness (one-second cron jobs, {} ws no-op workers)\n",
            l.workers
        );
        let _ = writeln!(o, "| jobs (fires/s) | instances sampled (jobs) | fire → dispatched p50 / p99 / max | fire → started p50 / p99 / max | not started | p99 < 100 ms |\n|---|---|---|---|---|---|");
        for p in &l.points {
            let _ = writeln!(
                o,
                "| {} | {} ({}) | {} | {} | {} | {} |",
                p.jobs,
                p.instances,
                p.sampled_jobs,
                p.fire_to_dispatched.brief(),
                p.fire_to_started.brief(),
                p.not_started,
                if p.p99_under_limit { "yes" } else { "no" }
            );
        }
        let max = l
            .max_fires_per_sec_p99_under_100ms
            .map_or("none measured".into(), |r| format!("{r} fires/s"));
        let fail = l
            .first_failing_fires_per_sec
            .map_or("none reached".into(), |r| format!("{r} fires/s"));
        let _ = writeln!(
            o,
            "\nHighest fire rate with fire → dispatched p99 under 100 ms: **{max}** \
            (first rate over: {fail}; the ladder stopped because {}).\n",
            l.stopped_because
        );
    }

    if let Some(f) = &r.failover {
        let _ = writeln!(o, "## Failover (SIGKILL of the leader)\n");
        let _ = writeln!(o, "| system | kills | kill → new leader p50 / p99 / max | kill → first write p50 / p99 / max |\n|---|---|---|---|");
        for (name, s) in [("raftjob", &f.raftjob), ("etcd", &f.etcd)] {
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} |",
                s.rounds,
                s.new_leader.brief(),
                s.first_write.brief()
            );
        }
        let _ = writeln!(
            o,
            "\nDefaults of each: raftjob heartbeat 100 ms, election timeout 250–500 ms (plus the \
            leader lease); etcd heartbeat 100 ms, election timeout 1000 ms.\n"
        );
    }

    if let Some(f) = &r.footprint {
        let _ = writeln!(o, "## Footprint\n");
        let _ = writeln!(
            o,
            "Job JSON {} B, finished-instance JSON {} B; etcd values have those sizes. \
            RSS is VmRSS; disk is `du` of each node's data directory.\n",
            f.job_json_bytes, f.instance_json_bytes
        );
        let _ = writeln!(o, "| system | state | jobs (etcd: keys) | finished instances (etcd: keys) | created at | leader RSS | followers' RSS | leader disk | disk per node | note |\n|---|---|---|---|---|---|---|---|---|---|");
        for row in &f.rows {
            let followers: Vec<String> =
                row.follower_rss_kib.iter().map(|k| mib(k * 1024)).collect();
            let disks: Vec<String> = row.disk_bytes_per_node.iter().map(|b| mib(*b)).collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.system,
                row.stage,
                row.jobs_or_keys,
                row.instances,
                row.created_per_sec
                    .map_or(String::new(), |r| format!("{r:.0}/s")),
                mib(row.leader_rss_kib * 1024),
                followers.join(", "),
                mib(row.leader_disk_bytes),
                disks.join(", "),
                row.note.clone().unwrap_or_default()
            );
        }
        o.push('\n');
    }
    o
}
