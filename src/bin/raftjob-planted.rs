//! `raftjob-planted`: the `raftjob` command built with the `planted-bugs` feature, for
//! jepsen-lite's checker tests only. `RAFTJOB_PLANTED_BUG=<name>` picks the bug
//! (src/planted.rs); without it the binary behaves like `raftjob`. Build it with
//! `cargo build --bin raftjob-planted --features planted-bugs`.

fn main() -> std::process::ExitCode {
    raftjob::entry::main()
}
