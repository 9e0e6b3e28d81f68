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

#[test]
fn peer_dial_from_file_flags_and_env_form() {
    let mut file = base();
    file.peer_dial.insert("2".into(), "127.0.0.1:17802".into());
    let cfg = ServerConfig::resolve(file.clone(), &ServerArgs::default()).unwrap();
    assert_eq!(
        cfg.peer_dial.get(&2).map(String::as_str),
        Some("127.0.0.1:17802")
    );
    assert_eq!(cfg.dial_addr(2, "127.0.0.1:7802"), "127.0.0.1:17802");
    assert_eq!(
        cfg.dial_addr(3, "127.0.0.1:7803"),
        "127.0.0.1:7803",
        "no override"
    );

    // Flags (or RAFTJOB_PEER_DIAL, split on commas by clap) replace the file's table.
    let args = ServerArgs {
        peer_dial: vec!["3=proxy-3:9000".into(), " 1 = 127.0.0.1:17801 ".into()],
        ..Default::default()
    };
    let cfg = ServerConfig::resolve(file, &args).unwrap();
    assert_eq!(cfg.peer_dial.len(), 2, "{:?}", cfg.peer_dial);
    assert_eq!(cfg.peer_dial[&3], "proxy-3:9000");
    assert_eq!(cfg.peer_dial[&1], "127.0.0.1:17801");

    let toml_form: FileConfig =
        toml::from_str("node_id = 1\n[peer_dial]\n\"2\" = \"127.0.0.1:7802\"\n").unwrap();
    assert_eq!(toml_form.peer_dial["2"], "127.0.0.1:7802");
    assert!(ServerConfig::resolve(base(), &ServerArgs::default())
        .unwrap()
        .peer_dial
        .is_empty());
}

#[test]
fn peer_dial_errors_name_the_key() {
    let with = |items: &[&str]| ServerArgs {
        peer_dial: items.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let e = err(base(), with(&["2"]));
    assert!(
        e.contains("`peer_dial`") && e.contains("ID=HOST:PORT"),
        "{e}"
    );
    let e = err(base(), with(&["two=127.0.0.1:7802"]));
    assert!(
        e.contains("peer_dial.two") && e.contains("positive integers"),
        "{e}"
    );
    let e = err(base(), with(&["0=127.0.0.1:7802"]));
    assert!(e.contains("peer_dial.0"), "{e}");
    let e = err(base(), with(&["2=127.0.0.1"]));
    assert!(e.contains("peer_dial.2") && e.contains("HOST:PORT"), "{e}");
    let e = err(base(), with(&["2=127.0.0.1:7802", "02=127.0.0.1:7803"]));
    assert!(e.contains("listed twice"), "{e}");
    let mut file = base();
    file.peer_dial.insert("3".into(), "http://x:1".into());
    let e = err(file, ServerArgs::default());
    assert!(e.contains("peer_dial.3"), "{e}");
}

#[test]
fn clock_control_is_off_by_default_and_set_by_file_or_flag() {
    let cfg = ServerConfig::resolve(base(), &ServerArgs::default()).unwrap();
    assert!(!cfg.testing.clock_control);
    let args = ServerArgs {
        test_clock_control: true,
        ..Default::default()
    };
    assert!(
        ServerConfig::resolve(base(), &args)
            .unwrap()
            .testing
            .clock_control
    );
    let mut file = base();
    file.testing = toml::from_str::<FileConfig>("[testing]\nclock_control = true\n")
        .unwrap()
        .testing;
    assert!(
        ServerConfig::resolve(file, &ServerArgs::default())
            .unwrap()
            .testing
            .clock_control
    );
    let r: Result<FileConfig, _> = toml::from_str("[testing]\nclock_controll = true\n");
    assert!(r.unwrap_err().to_string().contains("clock_controll"));
}

#[test]
fn metrics_require_token_defaults_off_and_flags_override_the_file() {
    let cfg = ServerConfig::resolve(base(), &ServerArgs::default()).unwrap();
    assert!(!cfg.metrics.require_token);
    let mut f = base();
    f.metrics = Some(toml::from_str("require_token = true").unwrap());
    let cfg = ServerConfig::resolve(f.clone(), &ServerArgs::default()).unwrap();
    assert!(cfg.metrics.require_token);
    let args = ServerArgs {
        metrics_require_token: Some(false),
        ..Default::default()
    };
    let cfg = ServerConfig::resolve(f, &args).unwrap();
    assert!(!cfg.metrics.require_token);
    let e = toml::from_str::<FileConfig>("[metrics]\nrequire_tokn = true")
        .unwrap_err()
        .to_string();
    assert!(e.contains("require_tokn"), "{e}");
    let e = toml::from_str::<FileConfig>("[metrics]\nrequire_token = \"yes\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bool"), "{e}");
}

#[test]
fn metrics_require_token_flag_parses_booleans() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServerArgs,
    }
    let parse = |argv: &[&str]| {
        Cli::try_parse_from(std::iter::once("raftjob").chain(argv.iter().copied()))
            .map(|c| c.args.metrics_require_token)
    };
    assert_eq!(parse(&[]).unwrap(), None);
    assert_eq!(parse(&["--metrics-require-token"]).unwrap(), Some(true));
    assert_eq!(
        parse(&["--metrics-require-token=false"]).unwrap(),
        Some(false)
    );
    assert_eq!(
        parse(&["--metrics-require-token", "yes"]).unwrap(),
        Some(true)
    );
    assert!(parse(&["--metrics-require-token=maybe"]).is_err());
}

#[test]
fn tls_files_come_in_pairs_and_flags_override_the_file() {
    let mut f = base();
    f.tls = Some(
        toml::from_str(
            r#"
            cert_file = "/etc/raftjob/api.pem"
            key_file = "/etc/raftjob/api.key"
            cluster_cert_file = "/etc/raftjob/node.pem"
            cluster_key_file = "/etc/raftjob/node.key"
            cluster_ca_file = "/etc/raftjob/ca.pem"
            "#,
        )
        .unwrap(),
    );
    let args = ServerArgs {
        tls_cert: Some("/flag/api.pem".into()),
        ..Default::default()
    };
    let cfg = ServerConfig::resolve(f, &args).unwrap();
    assert!(cfg.tls.public_enabled() && cfg.tls.cluster_enabled());
    assert_eq!(cfg.tls.cert_file, Some("/flag/api.pem".into()));
    assert_eq!(cfg.tls.key_file, Some("/etc/raftjob/api.key".into()));

    let plain = ServerConfig::resolve(base(), &ServerArgs::default()).unwrap();
    assert!(!plain.tls.public_enabled() && !plain.tls.cluster_enabled());

    let e = err(
        base(),
        ServerArgs {
            tls_cert: Some("/a.pem".into()),
            ..Default::default()
        },
    );
    assert!(e.contains("tls.key_file") && e.contains("--tls-key"), "{e}");
    let e = err(
        base(),
        ServerArgs {
            tls_cluster_cert: Some("/a.pem".into()),
            tls_cluster_key: Some("/a.key".into()),
            ..Default::default()
        },
    );
    assert!(e.contains("tls.cluster_ca_file"), "{e}");
    let e = toml::from_str::<FileConfig>("[tls]\ncert = \"/a.pem\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cert_file"), "{e}");
}

#[test]
fn rotation_credentials_are_accepted_beside_the_current_ones() {
    let cfg = ServerConfig::resolve(base(), &ServerArgs::default()).unwrap();
    assert_eq!(cfg.admin_tokens(), vec!["0123456789abcdef0123"]);
    assert_eq!(cfg.cluster_secrets(), vec!["0123456789abcdef0123"]);
    let mut f = base();
    f.cluster_secret_next = Some("next-secret-0123456789".into());
    let args = ServerArgs {
        admin_token_next: Some("next-token-0123456789".into()),
        ..Default::default()
    };
    let cfg = ServerConfig::resolve(f, &args).unwrap();
    assert_eq!(
        cfg.admin_tokens(),
        vec!["0123456789abcdef0123", "next-token-0123456789"]
    );
    assert_eq!(
        cfg.cluster_secrets(),
        vec!["0123456789abcdef0123", "next-secret-0123456789"]
    );
    let args = ServerArgs {
        admin_token_next: Some("short".into()),
        ..Default::default()
    };
    assert!(err(base(), args).contains("admin_token_next"));
}
