//! The `raftjob` command: `raftjob server` runs a server node, `raftjob worker` runs a
//! worker, and `raftjob cluster|job|instance|app|worker list` are the operator CLI
//! (`src/cli/`, docs/cli.md). The body is [`raftjob::entry::main`].

fn main() -> std::process::ExitCode {
    raftjob::entry::main()
}
