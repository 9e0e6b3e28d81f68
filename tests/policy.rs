//! The operator's processor policy: the shell processor switched off per app and per
//! cluster, and the HTTP processor's destinations limited, against a real cluster and
//! worker. Run one at a time (`--test-threads=1`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use raftjob::client::ClientError;
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);
const RUN: Duration = Duration::from_secs(30);

/// An HTTP server on 127.0.0.1 that counts the requests it gets; returns its port.
async fn counting_server(hits: Arc<AtomicUsize>) -> u16 {
    let app = axum::Router::new().route(
        "/hit",
        axum::routing::get(move || {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                "hit"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

fn refused(r: Result<Value, ClientError>) -> (u16, Value) {
    match r {
        Err(ClientError::Api {
            status, problem, ..
        }) => (status, problem),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn the_operator_can_disable_shell_and_fence_http_destinations() {
    let c = TestCluster::start_with(3, FAST_WORKERS);
    c.wait_ready(&[1, 2, 3], READY).await;
    let api = c.client();
    let token = app_token(&c, "ops").await;
    app_token(&c, "other").await;
    let hits = Arc::new(AtomicUsize::new(0));
    let port = counting_server(hits.clone()).await;

    // Jobs made before any policy.
    let shell = api
        .create_job(&api_job(
            "ops",
            "sh",
            json!({"type": "shell", "command": "echo ran"}),
        ))
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let by_name = format!("http://localhost:{port}/hit");
    let web = api
        .create_job(&api_job(
            "ops",
            "web",
            json!({"type": "http", "url": by_name}),
        ))
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let _worker = TestWorker::start(&c, "ops", &token, "ws", "w1", &[]);
    wait_workers_live(&c, "ops", 1).await;
    let id = run_job(&c, web, json!({})).await;
    assert_eq!(wait_terminal(&c, id, RUN).await["status"], "succeeded");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // The app's policy: no shell, nothing on loopback.
    let policy = json!({"shell_enabled": false, "http_deny": ["127.0.0.0/8", "::1"]});
    let set = api
        .request(
            reqwest::Method::PUT,
            "/api/v1/apps/ops/policy",
            Some(&policy),
            None,
        )
        .await
        .unwrap();
    assert_eq!(set, policy);
    for node in &c.nodes {
        assert_eq!(
            node.client().get("/api/v1/apps/ops/policy").await.unwrap(),
            policy,
            "node {} reads the replicated policy",
            node.id
        );
    }

    // New jobs it forbids are refused, naming the field; other apps are untouched.
    let (status, p) = refused(
        api.create_job(&api_job(
            "ops",
            "sh2",
            json!({"type": "shell", "command": "id"}),
        ))
        .await,
    );
    assert_eq!(
        (status, p["code"].as_str()),
        (403, Some("policy_denied")),
        "{p}"
    );
    assert_eq!(p["field"], "processor.type");
    assert!(p["detail"].as_str().unwrap().contains("app ops"), "{p}");
    let (status, p) = refused(
        api.create_job(&api_job(
            "ops",
            "web2",
            json!({"type": "http", "url": format!("http://127.0.0.1:{port}/hit")}),
        ))
        .await,
    );
    assert_eq!(
        (status, p["field"].as_str()),
        (403, Some("processor.url")),
        "{p}"
    );
    // Changing an existing job into a forbidden one is refused too.
    let (status, p) = refused(
        api.request(
            reqwest::Method::PUT,
            &format!("/api/v1/jobs/{web}"),
            Some(&api_job(
                "ops",
                "web",
                json!({"type": "shell", "command": "id"}),
            )),
            None,
        )
        .await,
    );
    assert_eq!(
        (status, p["code"].as_str()),
        (403, Some("policy_denied")),
        "{p}"
    );
    api.create_job(&api_job(
        "other",
        "sh",
        json!({"type": "shell", "command": "true"}),
    ))
    .await
    .expect("another app keeps its shell");

    // Jobs made before the policy: their instances fail instead of being dispatched.
    let id = run_job(&c, shell, json!({})).await;
    let inst = wait_terminal(&c, id, RUN).await;
    assert_eq!(inst["status"], "failed", "{inst}");
    assert!(
        inst["result"]
            .as_str()
            .unwrap()
            .contains("shell processor is disabled"),
        "{inst}"
    );
    assert_eq!(inst["attempts"].as_array().map_or(0, Vec::len), 0, "{inst}");
    // A host name is only known to be denied once resolved: the worker refuses it
    // and nothing reaches the server.
    let id = run_job(&c, web, json!({})).await;
    let inst = wait_terminal(&c, id, RUN).await;
    assert_eq!(inst["status"], "failed", "{inst}");
    assert!(
        inst["result"].as_str().unwrap().contains("http_deny"),
        "{inst}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "no request left the worker");

    // The cluster's policy applies to every app, and an app's cannot widen it.
    api.request(
        reqwest::Method::PUT,
        "/api/v1/policy",
        Some(&json!({"shell_enabled": false})),
        None,
    )
    .await
    .unwrap();
    api.request(
        reqwest::Method::PUT,
        "/api/v1/apps/other/policy",
        Some(&json!({"shell_enabled": true})),
        None,
    )
    .await
    .unwrap();
    let (status, p) = refused(
        api.create_job(&api_job(
            "other",
            "sh2",
            json!({"type": "shell", "command": "id"}),
        ))
        .await,
    );
    assert_eq!(status, 403, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("the cluster"), "{p}");
    assert_eq!(
        api.get("/api/v1/policy").await.unwrap(),
        json!({"shell_enabled": false})
    );

    // A bad entry is a 400 naming it, and changes nothing.
    let (status, p) = refused(
        api.request(
            reqwest::Method::PUT,
            "/api/v1/apps/ops/policy",
            Some(&json!({"http_allow": ["example.com", "http://x/"]})),
            None,
        )
        .await,
    );
    assert_eq!(
        (status, p["field"].as_str()),
        (400, Some("http_allow[1]")),
        "{p}"
    );
    assert_eq!(api.get("/api/v1/apps/ops/policy").await.unwrap(), policy);

    // Only the admin sets policy; it is audited.
    let scoped = api
        .post(
            "/api/v1/tokens",
            &json!({"name": "ops-manage", "app": "ops", "role": "manage"}),
        )
        .await
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let as_app = raftjob::client::Client::new(c.nodes.iter().map(|n| n.api.to_string()), scoped);
    let (status, p) = refused(
        as_app
            .request(
                reqwest::Method::PUT,
                "/api/v1/apps/ops/policy",
                Some(&json!({"shell_enabled": true})),
                None,
            )
            .await,
    );
    assert_eq!(
        (status, p["code"].as_str()),
        (403, Some("forbidden")),
        "{p}"
    );
    let audit = api.get("/api/v1/audit").await.unwrap();
    let sets = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "policy.set")
        .count();
    assert_eq!(sets, 3, "{audit}");
}
