use super::*;

fn base() -> FileConfig {
    toml::from_str(
        r#"
        node_id = 1
        data_dir = "/tmp/x"
        api_addr = "127.0.0.1:7701"
        cluster_addr = "127.0.0.1:7801"
        cluster_secret = "0123456789abcdef0123"
        admin_token = "0123456789abcdef0123"
        [transport]
        HTTP = "127.0.0.1:10011"
        [initial_members]
        1 = "127.0.0.1:7801"
        2 = "127.0.0.1:7802"
        3 = "127.0.0.1:7803"
        "#,
    )
    .unwrap()
}

fn err(file: FileConfig, args: ServerArgs) -> String {
    ServerConfig::resolve(file, &args).unwrap_err().to_string()
}

#[test]
fn valid_file_resolves_and_lowercases_protocols() {
    let cfg = ServerConfig::resolve(base(), &ServerArgs::default()).unwrap();
    assert_eq!(cfg.node_id, 1);
    assert_eq!(cfg.transports.keys().collect::<Vec<_>>(), vec!["http"]);
    assert_eq!(cfg.initial_members.len(), 3);
    assert_eq!(cfg.advertise_cluster_addr, "127.0.0.1:7801");
}

#[test]
fn flags_override_the_file() {
    let args = ServerArgs {
        node_id: Some(2),
        transport: vec!["Ws=127.0.0.1:10086".into()],
        ..Default::default()
    };
    let cfg = ServerConfig::resolve(base(), &args).unwrap();
    assert_eq!(cfg.node_id, 2);
    assert_eq!(cfg.transports.keys().collect::<Vec<_>>(), vec!["ws"]);
}

#[test]
fn unknown_protocol_lists_the_valid_ones() {
    let mut f = base();
    f.transport.insert("grpc".into(), "127.0.0.1:1".into());
    let e = err(f, ServerArgs::default());
    assert!(
        e.contains("transport.grpc") && e.contains("http, ws"),
        "{e}"
    );
}

#[test]
fn duplicate_ports_are_refused() {
    let mut f = base();
    f.transport.insert("ws".into(), "127.0.0.1:7701".into());
    let e = err(f, ServerArgs::default());
    assert!(e.contains("same address as api_addr"), "{e}");
}

#[test]
fn missing_secret_names_the_key() {
    let mut f = base();
    f.cluster_secret = None;
    let e = err(f, ServerArgs::default());
    assert!(
        e.contains("cluster_secret") && e.contains("RAFTJOB_CLUSTER_SECRET"),
        "{e}"
    );
}

#[test]
fn unparsable_address_names_the_key() {
    let mut f = base();
    f.api_addr = Some("localhost-7700".into());
    let e = err(f, ServerArgs::default());
    assert!(e.contains("api_addr") && e.contains("IP:PORT"), "{e}");
}

#[test]
fn node_id_must_be_a_member() {
    let args = ServerArgs {
        node_id: Some(9),
        ..Default::default()
    };
    let e = err(base(), args);
    assert!(e.contains("node_id") && e.contains("1, 2, 3"), "{e}");
}

#[test]
fn election_timeout_must_exceed_heartbeat() {
    let args = ServerArgs {
        heartbeat_interval_ms: Some(500),
        ..Default::default()
    };
    let e = err(base(), args);
    assert!(e.contains("election_timeout_min_ms"), "{e}");
}

#[test]
fn unknown_keys_in_the_file_are_refused() {
    let r: Result<FileConfig, _> = toml::from_str("node_idd = 1");
    assert!(r.unwrap_err().to_string().contains("node_idd"));
}

#[test]
fn worker_forget_after_defaults_to_a_day_and_comes_from_file_or_flag() {
    let cfg = ServerConfig::resolve(base(), &ServerArgs::default()).unwrap();
    assert_eq!(cfg.workers.forget_after_ms, 24 * 3600 * 1000);
    let mut f = base();
    f.workers = Some(toml::from_str("forget_after_ms = 60000").unwrap());
    let cfg = ServerConfig::resolve(f.clone(), &ServerArgs::default()).unwrap();
    assert_eq!(cfg.workers.forget_after_ms, 60_000);
    let args = ServerArgs {
        worker_forget_after_ms: Some(2000),
        ..Default::default()
    };
    assert_eq!(
        ServerConfig::resolve(f, &args)
            .unwrap()
            .workers
            .forget_after_ms,
        2000,
        "the flag overrides the file"
    );
}

#[test]
fn bootstrap_apps_come_from_the_file_or_replace_it_from_flags() {
    let mut f = base();
    let parsed: FileConfig = toml::from_str(
        r#"
        [[bootstrap_apps]]
        name = "demo"
        worker_token = "0123456789abcdef-demo"
        [[bootstrap_apps]]
        name = "other.app"
        worker_token = "0123456789abcdef-other"
        "#,
    )
    .unwrap();
    f.bootstrap_apps = parsed.bootstrap_apps;
    let cfg = ServerConfig::resolve(f.clone(), &ServerArgs::default()).unwrap();
    assert_eq!(
        cfg.bootstrap_apps
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        vec!["demo", "other.app"]
    );
    assert_eq!(cfg.bootstrap_apps[0].worker_token, "0123456789abcdef-demo");

    // Flags (or RAFTJOB_BOOTSTRAP_APPS, same format) replace the file's list; a token
    // may contain ':'.
    let args = ServerArgs {
        bootstrap_apps: vec!["flagged:tok:0123456789abcdef".into(), " ".into()],
        ..Default::default()
    };
    let cfg = ServerConfig::resolve(f, &args).unwrap();
    assert_eq!(
        cfg.bootstrap_apps,
        vec![BootstrapApp {
            name: "flagged".into(),
            worker_token: "tok:0123456789abcdef".into()
        }]
    );
    let none = ServerConfig::resolve(base(), &ServerArgs::default()).unwrap();
    assert!(none.bootstrap_apps.is_empty());
}

#[test]
fn bootstrap_app_errors_name_the_key() {
    let with = |items: &[&str]| ServerArgs {
        bootstrap_apps: items.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let e = err(base(), with(&["demo:short"]));
    assert!(
        e.contains("bootstrap_apps.demo.worker_token") && e.contains("16"),
        "{e}"
    );
    assert!(!e.contains("short"), "the token is not shown: {e}");
    let e = err(base(), with(&["no-token-here"]));
    assert!(
        e.contains("bootstrap_apps") && e.contains("NAME:WORKER_TOKEN"),
        "{e}"
    );
    let e = err(base(), with(&["bad name:0123456789abcdef"]));
    assert!(e.contains("bootstrap_apps.name"), "{e}");
    let e = err(
        base(),
        with(&["demo:0123456789abcdef", "demo:0123456789abcdefg"]),
    );
    assert!(e.contains("listed twice"), "{e}");
    let r: Result<FileConfig, _> =
        toml::from_str("[[bootstrap_apps]]\nname = \"x\"\nworker_token = \"y\"\ntoken = \"z\"");
    assert!(r.unwrap_err().to_string().contains("token"));
}
