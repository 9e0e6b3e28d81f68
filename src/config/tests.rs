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
