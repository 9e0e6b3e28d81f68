//! Optional TLS on every port: a throwaway CA and certificates (rcgen) for
//! 127.0.0.1/localhost, a 3-node cluster with HTTPS on the api and transport ports and
//! mutual TLS on the cluster port; the CLI and workers trust the CA with --ca-file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};

const RUN: Duration = Duration::from_secs(15);

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A CA that signed nothing the servers use.
    other_ca: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.self_signed(&key).unwrap(), key)
}

/// A CA, and one server certificate (server and client use, for the cluster port's
/// mutual TLS) for 127.0.0.1 and localhost, written as PEM files into `dir`.
fn make_pki(dir: &Path) -> Pki {
    let (ca_cert, ca_key) = ca("raftjob test CA");
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "raftjob test server");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let (other, _) = ca("some other CA");
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        other_ca: dir.join("other-ca.pem"),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    std::fs::write(&pki.other_ca, other.pem()).unwrap();
    pki
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Waits until every node answers /readyz over https and they agree on a leader.
async fn wait_ready_tls(c: &TestCluster, ca: &Path) -> u64 {
    let clients: Vec<raftjob::client::Client> = c
        .nodes
        .iter()
        .map(|n| {
            raftjob::client::Client::new([n.api.to_string()], TOKEN)
                .with_ca_file(ca)
                .unwrap()
        })
        .collect();
    let what = format!("a TLS cluster with a leader\n{}", c.dump_logs());
    eventually(Duration::from_secs(20), &what, || {
        let clients = clients.clone();
        async move {
            let mut leaders = Vec::new();
            for client in &clients {
                let v = client.get("/readyz").await.ok()?;
                leaders.push(v["leader_id"].as_u64()?);
            }
            leaders.windows(2).all(|w| w[0] == w[1]).then(|| leaders[0])
        }
    })
    .await
}

/// `raftjob server` with only the listed TLS flags (and valid everything else); it
/// must stop at once. Returns its stderr.
fn server_start_error(dir: &Path, tls: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_raftjob"))
        .arg("server")
        .args(["--node-id", "1"])
        .arg("--data-dir")
        .arg(dir.join("bad-node"))
        .args(["--api-addr", &free_addr().to_string()])
        .args(["--cluster-addr", &free_addr().to_string()])
        .args(["--initial-members", "1=127.0.0.1:1"])
        .args(["--cluster-secret", SECRET, "--admin-token", TOKEN])
        .args(tls)
        .env_remove("RAFTJOB_CONFIG")
        .env("RAFTJOB_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the server started with {tls:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_tls_files_stop_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let missing = dir.path().join("nope.pem");
    let err = server_start_error(
        dir.path(),
        &["--tls-cert", p(&missing), "--tls-key", p(&pki.key)],
    );
    assert!(
        err.contains("tls.cert_file") && err.contains("nope.pem"),
        "{err}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let err = server_start_error(
        dir.path(),
        &["--tls-cert", p(&pki.cert), "--tls-key", p(&garbage)],
    );
    assert!(
        err.contains("tls.key_file") && err.contains("garbage.pem"),
        "{err}"
    );
    // A key that is not the certificate's.
    let err = server_start_error(
        dir.path(),
        &[
            "--tls-cluster-cert",
            p(&pki.cert),
            "--tls-cluster-key",
            p(&pki.key),
            "--tls-cluster-ca",
            p(&garbage),
        ],
    );
    assert!(
        err.contains("tls.cluster_ca_file") && err.contains("garbage.pem"),
        "{err}"
    );
    let err = server_start_error(dir.path(), &["--tls-cert", p(&pki.cert)]);
    assert!(err.contains("tls.key_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_every_port() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path());
    let mut args = vec![
        "--tls-cert",
        p(&pki.cert),
        "--tls-key",
        p(&pki.key),
        "--tls-cluster-cert",
        p(&pki.cert),
        "--tls-cluster-key",
        p(&pki.key),
        "--tls-cluster-ca",
        p(&pki.ca),
    ];
    args.extend_from_slice(FAST_WORKERS);
    let mut c = TestCluster::new(3, &args);
    for n in &mut c.nodes {
        n.start();
    }
    // Every client of this test process (the harness's too) trusts the test CA.
    raftjob::client::set_default_ca_file(&pki.ca).unwrap();
    let leader = wait_ready_tls(&c, &pki.ca).await;

    // The CLI with --ca-file reads the cluster status (one request per node).
    let servers = servers(&c);
    let out = cli(
        &[
            "cluster",
            "status",
            "--server",
            &servers,
            "--token",
            TOKEN,
            "--ca-file",
            p(&pki.ca),
            "--json",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, c.dump_logs());
    assert!(out.stdout.contains(&leader.to_string()), "{}", out.stdout);

    // The health check too, with the CA; without it, plain HTTP gets no answer.
    let api = c.nodes[0].api.to_string();
    let ok = cli(
        &[
            "healthcheck",
            "--addr",
            &api,
            "--ready",
            "--ca-file",
            p(&pki.ca),
        ],
        &[],
    );
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("https://"), "{ok:?}");
    let plain = cli(&["healthcheck", "--addr", &api], &[]);
    assert_eq!(plain.code, 1, "{plain:?}");

    // Without the CA (or with another one) the CLI is refused: unknown issuer.
    let https: String = c
        .nodes
        .iter()
        .map(|n| format!("https://{}", n.api))
        .collect::<Vec<_>>()
        .join(",");
    for extra in [vec![], vec!["--ca-file", p(&pki.other_ca)]] {
        let mut argv = vec!["cluster", "status", "--server", &https, "--token", TOKEN];
        argv.extend(extra.iter().copied());
        let out = cli(&argv, &[]);
        assert_ne!(out.code, 0, "{}", out.stdout);
        assert!(
            out.stderr
                .contains("invalid peer certificate: UnknownIssuer"),
            "{}",
            out.stderr
        );
    }

    // Plain HTTP to a TLS port fails the handshake: no HTTP answer at all.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let n1 = &c.nodes[0];
    for addr in [
        n1.api,
        n1.cluster,
        n1.transports["http"],
        n1.transports["ws"],
    ] {
        let r = plain.get(format!("http://{addr}/healthz")).send().await;
        assert!(r.is_err(), "plain http to {addr} answered: {r:?}");
    }

    // The cluster port wants a client certificate from the cluster CA: a client that
    // trusts the CA but has no certificate is refused at the handshake.
    let roots = raftjob::tls::client_config(Some(("ca", &pki.ca)), None).unwrap();
    let no_cert = raftjob::tls::http_builder(roots)
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let r = no_cert
        .get(format!("https://{}/cluster/v1/probe", n1.cluster))
        .header("x-raftjob-cluster-secret", SECRET)
        .send()
        .await;
    assert!(
        r.is_err(),
        "the cluster port answered without a client cert: {r:?}"
    );

    // Writes commit over the TLS cluster links, also when sent to a follower (which
    // forwards to the leader over the cluster port).
    let follower = c.nodes.iter().find(|n| n.id != leader).unwrap();
    let via_follower = follower.client();
    assert!(via_follower.servers()[0].starts_with("https://"));
    let ws_app = via_follower.create_app("tls-ws").await.unwrap();
    let http_app = c.client().create_app("tls-http").await.unwrap();
    let token = |v: &Value| v["worker_token"].as_str().unwrap().to_string();

    let _ws = TestWorker::start(
        &c,
        "tls-ws",
        &token(&ws_app),
        "ws",
        "w-ws",
        &["--ca-file", p(&pki.ca)],
    );
    let _http = TestWorker::start(
        &c,
        "tls-http",
        &token(&http_app),
        "http",
        "w-http",
        &["--ca-file", p(&pki.ca)],
    );
    // A worker that does not trust the servers' CA never registers.
    let mut untrusting = TestWorker::start(
        &c,
        "tls-ws",
        &token(&ws_app),
        "ws",
        "w-untrusting",
        &["--tls"],
    );
    wait_workers_live(&c, "tls-ws", 1).await;
    wait_workers_live(&c, "tls-http", 1).await;

    for (app, worker) in [("tls-ws", "w-ws"), ("tls-http", "w-http")] {
        let job = via_follower
            .create_job(&api_job(
                app,
                "hello",
                json!({"type": "shell", "command": "echo hello over tls"}),
            ))
            .await
            .unwrap();
        let job_id = job["id"].as_u64().unwrap_or_else(|| panic!("{job}"));
        let id = run_job(&c, job_id, json!(null)).await;
        let inst = wait_terminal(&c, id, RUN).await;
        assert_eq!(inst["status"], "succeeded", "{inst}\n{}", c.dump_logs());
        let ran_on = inst["attempts"][0]["worker"].as_str().unwrap();
        assert!(ran_on.ends_with(worker), "{app}: ran on {ran_on}");
    }

    // Every node applied the same log (replication over the cluster links).
    let commit = eventually(RUN, "every node at the same applied index", || {
        let c = &c;
        async move {
            let mut applied = Vec::new();
            for n in &c.nodes {
                let v = n.client().get("/api/v1/cluster").await.ok()?;
                applied.push(v["applied_index"].as_u64().or(v["last_applied"].as_u64())?);
            }
            applied.windows(2).all(|w| w[0] == w[1]).then(|| applied[0])
        }
    })
    .await;
    assert!(commit > 0);

    let names = worker_names(&c, "tls-ws").await.unwrap_or_default();
    assert!(!names.iter().any(|n| n == "w-untrusting"), "{names:?}");
    untrusting.kill();
    let log = untrusting.log_text();
    assert!(log.contains("UnknownIssuer"), "{log}");
}
