//! The Kubernetes manifests in `cluster/k8s/` (issue #5), checked without a cluster.
//!
//! Every YAML document under `cluster/k8s/` is parsed, and the objects are checked
//! against each other: the StatefulSet and its headless Service, the Services' selectors
//! and target ports, the PodDisruptionBudget, the Secret and every reference to it, the
//! worker Deployment.
//!
//! The pods' configuration is checked the way the pods would see it: for each server
//! pod (`raftjob-0..2`) and for a worker pod, the container's environment is built as
//! the kubelet builds it (downward API fields, Secret and ConfigMap keys, `$(VAR)`
//! expansion), the server's node-id shell line is run with `/bin/sh`, and the result is
//! handed to the real `raftjob server` / `raftjob worker` argument parsers and
//! validation (`ServerConfig::resolve`, `WorkerConfig::load`). The ports the servers
//! are configured with are then compared with the container ports, the Services, the
//! probes, the initial members and the workers' server list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use clap::{Args, FromArgMatches};
use raftjob::config::{FileConfig, ServerArgs, ServerConfig};
use raftjob::worker::{WorkerArgs, WorkerConfig};
use serde::Deserialize;
use serde_yaml_ng::Value;

/// The namespace the pods are simulated in (the manifests name none).
const NAMESPACE: &str = "jobs-test";
const CLUSTER_DOMAIN: &str = "svc.cluster.local";
/// Valid credentials substituted for the Secret's placeholders when a pod's
/// configuration must validate.
const TEST_SECRET_VALUE: &str = "k8s-manifest-test-value-0123456789";

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/k8s")
}

struct Obj {
    file: String,
    kind: String,
    name: String,
    v: Value,
}

struct Manifests {
    objs: Vec<Obj>,
}

fn load() -> Manifests {
    let dir = k8s_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", dir.display());
    let mut objs = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            if v.is_null() {
                continue;
            }
            let kind = str_at(&v, "kind", &file).to_string();
            let name = str_at(&v, "metadata.name", &file).to_string();
            objs.push(Obj {
                file: file.clone(),
                kind,
                name,
                v,
            });
        }
    }
    Manifests { objs }
}

impl Manifests {
    fn all(&self, kind: &str) -> Vec<&Obj> {
        self.objs.iter().filter(|o| o.kind == kind).collect()
    }

    fn one(&self, kind: &str) -> &Obj {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "expected exactly one {kind}");
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Obj {
        self.objs
            .iter()
            .find(|o| o.kind == kind && o.name == name)
            .unwrap_or_else(|| panic!("no {kind} named {name:?} in cluster/k8s/"))
    }

    fn statefulset(&self) -> &Obj {
        self.one("StatefulSet")
    }

    fn worker_deployment(&self) -> &Obj {
        self.one("Deployment")
    }

    fn headless(&self) -> &Obj {
        let name = str_at(&self.statefulset().v, "spec.serviceName", "StatefulSet");
        self.named("Service", name)
    }

    /// The Secret's keys and values (`stringData` and base64 `data`).
    fn secret(&self, name: &str) -> BTreeMap<String, String> {
        let s = self.named("Secret", name);
        let mut out = BTreeMap::new();
        if let Some(m) = opt(&s.v, "stringData") {
            for (k, v) in mapping(m, "stringData") {
                out.insert(k, scalar(&v).expect("Secret stringData values are strings"));
            }
        }
        if let Some(m) = opt(&s.v, "data") {
            for (k, v) in mapping(m, "data") {
                let raw = scalar(&v).expect("Secret data values are strings");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(raw.trim())
                    .unwrap_or_else(|e| panic!("Secret {name} data.{k} is not base64: {e}"));
                out.insert(k, String::from_utf8(bytes).unwrap());
            }
        }
        out
    }

    fn configmap(&self, name: &str) -> BTreeMap<String, String> {
        let c = self.named("ConfigMap", name);
        match opt(&c.v, "data") {
            Some(m) => mapping(m, "data")
                .into_iter()
                .map(|(k, v)| (k, scalar(&v).expect("ConfigMap values are strings")))
                .collect(),
            None => BTreeMap::new(),
        }
    }
}

// ---- Value navigation ---------------------------------------------------------------

fn opt<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = match seg.parse::<usize>() {
            Ok(i) => cur.as_sequence()?.get(i)?,
            Err(_) => cur.as_mapping()?.get(seg)?,
        };
    }
    Some(cur)
}

fn at<'a>(v: &'a Value, path: &str, what: &str) -> &'a Value {
    opt(v, path).unwrap_or_else(|| panic!("{what}: `{path}` is missing"))
}

fn str_at<'a>(v: &'a Value, path: &str, what: &str) -> &'a str {
    at(v, path, what)
        .as_str()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not a string"))
}

fn seq<'a>(v: &'a Value, path: &str, what: &str) -> &'a Vec<Value> {
    at(v, path, what)
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not a list"))
}

/// A scalar as a string (strings, numbers and booleans).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn mapping(v: &Value, what: &str) -> BTreeMap<String, Value> {
    v.as_mapping()
        .unwrap_or_else(|| panic!("{what} is not a mapping"))
        .iter()
        .map(|(k, v)| (scalar(k).expect("mapping keys are scalars"), v.clone()))
        .collect()
}

fn labels(v: &Value, path: &str, what: &str) -> BTreeMap<String, String> {
    mapping(at(v, path, what), &format!("{what} {path}"))
        .into_iter()
        .map(|(k, v)| (k, scalar(&v).expect("label values are strings")))
        .collect()
}

/// Whether a `matchLabels`-style selector selects pods with these labels.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Every mapping in `v` (recursively) that has the key `key`, with its value.
fn find_key<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Mapping(m) => {
            for (k, val) in m {
                if k.as_str() == Some(key) {
                    out.push(val);
                }
                find_key(val, key, out);
            }
        }
        Value::Sequence(s) => s.iter().for_each(|x| find_key(x, key, out)),
        Value::Tagged(t) => find_key(&t.value, key, out),
        _ => {}
    }
}

// ---- Pod simulation -----------------------------------------------------------------

/// Kubernetes' `$(VAR)` expansion in env values, command and args: `$$` is a literal
/// `$`, a reference to an undefined variable stays as written.
fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let b = input.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = input[i + 2..].find(')') {
                    let name = &input[i + 2..i + 2 + end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&input[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = input[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[test]
fn expansion_follows_kubernetes_rules() {
    let vars = BTreeMap::from([("A".to_string(), "x".to_string())]);
    assert_eq!(expand("$(A).$(B)", &vars), "x.$(B)");
    assert_eq!(expand("$$(A) $${A} $((1+1))", &vars), "$(A) ${A} $((1+1))");
}

/// What one container sees when it starts.
struct Container {
    env: BTreeMap<String, String>,
    command: Vec<String>,
    args: Vec<String>,
}

/// Builds a container's environment as the kubelet does for a pod named `pod_name`,
/// with the Secret's values replaced by `secret_override` when given. Checks every
/// Secret and ConfigMap reference on the way.
fn simulate(
    m: &Manifests,
    container: &Value,
    pod_name: &str,
    secret_override: Option<&str>,
) -> Container {
    let what = format!("container of {pod_name}");
    let mut env = BTreeMap::new();
    if let Some(from) = opt(container, "envFrom") {
        for src in from.as_sequence().unwrap() {
            let name = str_at(src, "configMapRef.name", &what);
            env.extend(m.configmap(name));
        }
    }
    for e in opt(container, "env")
        .and_then(|v| v.as_sequence())
        .into_iter()
        .flatten()
    {
        let name = str_at(e, "name", &what).to_string();
        let value = if let Some(v) = opt(e, "value") {
            expand(&scalar(v).expect("env values are strings"), &env)
        } else if let Some(field) = opt(e, "valueFrom.fieldRef.fieldPath") {
            match field.as_str().unwrap() {
                "metadata.name" => pod_name.to_string(),
                "metadata.namespace" => NAMESPACE.to_string(),
                other => panic!("{what}: env {name}: unexpected fieldRef {other}"),
            }
        } else if let Some(r) = opt(e, "valueFrom.secretKeyRef") {
            let secret = m.secret(str_at(r, "name", &what));
            let key = str_at(r, "key", &what);
            let v = secret
                .get(key)
                .unwrap_or_else(|| panic!("{what}: env {name}: the Secret has no key {key}"));
            match secret_override {
                // The app name is not a credential: keep it.
                Some(o) if key != "app-name" => o.to_string(),
                _ => v.clone(),
            }
        } else if let Some(r) = opt(e, "valueFrom.configMapKeyRef") {
            let cm = m.configmap(str_at(r, "name", &what));
            let key = str_at(r, "key", &what);
            cm.get(key)
                .unwrap_or_else(|| panic!("{what}: env {name}: the ConfigMap has no key {key}"))
                .clone()
        } else {
            panic!("{what}: env {name} has neither value nor a known valueFrom");
        };
        env.insert(name, value);
    }
    let list = |key: &str| -> Vec<String> {
        opt(container, key)
            .and_then(|v| v.as_sequence())
            .into_iter()
            .flatten()
            .map(|s| expand(&scalar(s).unwrap(), &env))
            .collect()
    };
    let command = list("command");
    let args = list("args");
    for (k, v) in &env {
        assert!(
            !v.contains("$("),
            "{what}: env {k} = {v:?} has an unresolved reference (define the variable earlier in env)"
        );
    }
    Container { env, command, args }
}

/// The command-line equivalent of the container's `RAFTJOB_*` variables for the
/// `clap::Args` type `A`: each variable becomes its flag. A `RAFTJOB_*` variable no flag
/// reads is a typo, except the log filter `RAFTJOB_LOG`.
fn env_to_argv<A: Args>(
    bin: &'static str,
    env: &BTreeMap<String, String>,
) -> (clap::Command, Vec<String>) {
    let cmd = A::augment_args(clap::Command::new(bin));
    let by_env: BTreeMap<String, String> = cmd
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_string_lossy().into_owned();
            Some((env, a.get_long()?.to_string()))
        })
        .collect();
    let mut argv = vec![bin.to_string()];
    for (k, v) in env {
        if !k.starts_with("RAFTJOB_") || k == "RAFTJOB_LOG" {
            continue;
        }
        let long = by_env
            .get(k)
            .unwrap_or_else(|| panic!("`raftjob {bin}` reads no variable {k}"));
        argv.push(format!("--{long}={v}"));
    }
    (cmd, argv)
}

fn server_config(c: &Container, extra_args: &[String]) -> Result<ServerConfig, String> {
    let (cmd, mut argv) = env_to_argv::<ServerArgs>("server", &c.env);
    argv.extend(extra_args.iter().cloned());
    let matches = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
    let args = ServerArgs::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    ServerConfig::resolve(FileConfig::default(), &args).map_err(|e| e.to_string())
}

fn worker_config(c: &Container, extra_args: &[String]) -> Result<WorkerConfig, String> {
    let (cmd, mut argv) = env_to_argv::<WorkerArgs>("worker", &c.env);
    argv.extend(extra_args.iter().cloned());
    let matches = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
    let args = WorkerArgs::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    WorkerConfig::load(&args).map_err(|e| e.to_string())
}

/// The server container's start-up line: `/bin/sh -c '<script>'`, where the script
/// sets RAFTJOB_NODE_ID and ends with `exec /raftjob server [FLAGS]`. Returns the node
/// id the script computes for this pod (run with /bin/sh, as the image does) and the
/// flags.
fn run_server_start(c: &Container, pod_name: &str) -> (u64, Vec<String>) {
    assert_eq!(
        c.command,
        ["/bin/sh", "-c"],
        "the server starts through the image's /bin/sh"
    );
    assert_eq!(c.args.len(), 1, "one script line: {:?}", c.args);
    let script = &c.args[0];
    let marker = "exec /raftjob server";
    let pos = script
        .find(marker)
        .unwrap_or_else(|| panic!("the script must end with `{marker}`: {script}"));
    let flags: Vec<String> = script[pos + marker.len()..]
        .split_whitespace()
        .map(String::from)
        .collect();
    let probe = format!("{}printf '%s' \"$RAFTJOB_NODE_ID\"", &script[..pos]);
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&probe)
        .env_clear()
        .env("POD_NAME", pod_name)
        .env("HOSTNAME", pod_name)
        .output()
        .expect("run /bin/sh");
    assert!(out.status.success(), "{probe}: {out:?}");
    let id = String::from_utf8_lossy(&out.stdout);
    let id: u64 = id
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the script gave node id {id:?} for {pod_name}"));
    (id, flags)
}

/// The container ports by name, and the set of port numbers.
fn container_ports(container: &Value, what: &str) -> BTreeMap<String, u16> {
    let mut out = BTreeMap::new();
    for p in opt(container, "ports")
        .and_then(|v| v.as_sequence())
        .into_iter()
        .flatten()
    {
        let name = str_at(p, "name", what).to_string();
        let port = at(p, "containerPort", what).as_u64().unwrap() as u16;
        assert!(
            name.len() <= 15,
            "{what}: port name {name} is over 15 characters"
        );
        assert!(
            out.insert(name.clone(), port).is_none(),
            "{what}: port {name} twice"
        );
    }
    out
}

/// A Service or probe port (a name or a number) resolved against the container ports.
fn resolve_port(port: &Value, ports: &BTreeMap<String, u16>, what: &str) -> u16 {
    match port {
        Value::Number(n) => {
            let n = n.as_u64().unwrap() as u16;
            assert!(
                ports.values().any(|p| *p == n),
                "{what}: port {n} is not a container port ({ports:?})"
            );
            n
        }
        Value::String(s) => *ports
            .get(s)
            .unwrap_or_else(|| panic!("{what}: no container port named {s} ({ports:?})")),
        other => panic!("{what}: bad port {other:?}"),
    }
}

fn server_container(m: &Manifests) -> &Value {
    let c = seq(
        &m.statefulset().v,
        "spec.template.spec.containers",
        "StatefulSet",
    );
    assert_eq!(c.len(), 1, "one container per server pod");
    &c[0]
}

fn worker_container(m: &Manifests) -> &Value {
    let c = seq(
        &m.worker_deployment().v,
        "spec.template.spec.containers",
        "Deployment",
    );
    assert_eq!(c.len(), 1, "one container per worker pod");
    &c[0]
}

fn pod_fqdn(pod: &str, headless: &str) -> String {
    format!("{pod}.{headless}.{NAMESPACE}.{CLUSTER_DOMAIN}")
}

fn split_host_port(addr: &str) -> (&str, u16) {
    let (h, p) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr} is not HOST:PORT"));
    (h, p.parse().unwrap_or_else(|_| panic!("{addr}: bad port")))
}

// ---- Tests --------------------------------------------------------------------------

#[test]
fn every_document_is_a_known_kind_with_a_name_and_no_namespace() {
    let m = load();
    let expected: BTreeMap<&str, &str> = BTreeMap::from([
        ("StatefulSet", "apps/v1"),
        ("Deployment", "apps/v1"),
        ("Service", "v1"),
        ("Secret", "v1"),
        ("ConfigMap", "v1"),
        ("PodDisruptionBudget", "policy/v1"),
        ("NetworkPolicy", "networking.k8s.io/v1"),
    ]);
    let mut seen = BTreeSet::new();
    for o in &m.objs {
        let api = str_at(&o.v, "apiVersion", &o.file);
        assert_eq!(
            expected.get(o.kind.as_str()).copied(),
            Some(api),
            "{}: unexpected kind/apiVersion {} {api}",
            o.file,
            o.kind
        );
        assert!(
            opt(&o.v, "metadata.namespace").is_none(),
            "{}: {} {} names a namespace; the manifests are applied with -n",
            o.file,
            o.kind,
            o.name
        );
        assert!(
            seen.insert((o.kind.clone(), o.name.clone())),
            "{} {} defined twice",
            o.kind,
            o.name
        );
    }
    for kind in [
        "StatefulSet",
        "Deployment",
        "Secret",
        "ConfigMap",
        "PodDisruptionBudget",
    ] {
        assert!(!m.all(kind).is_empty(), "no {kind} in cluster/k8s/");
    }
    assert!(m.all("Service").len() >= 3, "the three Services");
    m.named("Service", "raftjob-peers");
    m.named("Service", "raftjob-api");
    m.named("Service", "raftjob-transport");
    m.named("StatefulSet", "raftjob");

    // The README explains every file.
    let readme = std::fs::read_to_string(k8s_dir().join("README.md")).expect("README.md");
    for o in &m.objs {
        assert!(
            readme.contains(&o.file),
            "cluster/k8s/README.md does not mention {}",
            o.file
        );
    }
}

#[test]
fn statefulset_is_three_parallel_servers_behind_the_headless_service() {
    let m = load();
    let sts = &m.statefulset().v;
    let headless = m.headless();
    assert_eq!(headless.name, "raftjob-peers");
    assert_eq!(at(sts, "spec.replicas", "StatefulSet").as_u64(), Some(3));
    assert_eq!(
        str_at(sts, "spec.podManagementPolicy", "StatefulSet"),
        "Parallel"
    );
    assert_eq!(
        str_at(&headless.v, "spec.clusterIP", "raftjob-peers"),
        "None"
    );
    assert_eq!(
        at(
            &headless.v,
            "spec.publishNotReadyAddresses",
            "raftjob-peers"
        )
        .as_bool(),
        Some(true)
    );

    let pod_labels = labels(sts, "spec.template.metadata.labels", "StatefulSet");
    let sel = labels(sts, "spec.selector.matchLabels", "StatefulSet");
    assert!(
        selects(&sel, &pod_labels),
        "the StatefulSet selects its pods"
    );

    // Security: the image's user, no root, a read-only root filesystem.
    let pod = at(sts, "spec.template.spec", "StatefulSet");
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/Dockerfile"))
            .unwrap();
    assert!(dockerfile.contains("USER 10001:10001"));
    assert_eq!(
        at(pod, "securityContext.runAsNonRoot", "pod").as_bool(),
        Some(true)
    );
    assert_eq!(
        at(pod, "securityContext.runAsUser", "pod").as_u64(),
        Some(10001)
    );
    assert_eq!(
        at(pod, "securityContext.fsGroup", "pod").as_u64(),
        Some(10001)
    );
    let c = server_container(&m);
    assert_eq!(
        at(c, "securityContext.readOnlyRootFilesystem", "server").as_bool(),
        Some(true)
    );
    for r in ["cpu", "memory"] {
        assert!(
            opt(c, &format!("resources.requests.{r}")).is_some(),
            "server: no {r} request"
        );
    }

    // The data directory is a volume claim template.
    let c0 = simulate(&m, c, "raftjob-0", None);
    let data_dir = c0.env.get("RAFTJOB_DATA_DIR").expect("RAFTJOB_DATA_DIR");
    let mount = seq(c, "volumeMounts", "server")
        .iter()
        .find(|v| str_at(v, "mountPath", "server") == data_dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {data_dir}"));
    let vol = str_at(mount, "name", "server");
    assert!(
        seq(sts, "spec.volumeClaimTemplates", "StatefulSet")
            .iter()
            .any(|t| str_at(t, "metadata.name", "volumeClaimTemplates") == vol),
        "{data_dir} is not a volumeClaimTemplate"
    );

    // The image ships /bin/sh, which the start-up line needs.
    let build = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/build-image.sh"),
    )
    .unwrap();
    assert!(
        build.contains("rootfs/bin/sh"),
        "the image must ship /bin/sh"
    );
}

#[test]
fn each_server_pod_gets_a_valid_config_with_ports_addresses_and_members_that_agree() {
    let m = load();
    let sts = m.statefulset();
    let headless = &m.headless().name;
    let c = server_container(&m);
    let ports = container_ports(c, "server");
    for (i, pod) in (0..3).map(|i| (i, format!("{}-{i}", sts.name))) {
        let sim = simulate(&m, c, &pod, Some(TEST_SECRET_VALUE));
        let (node_id, flags) = run_server_start(&sim, &pod);
        assert_eq!(node_id, i + 1, "{pod}: node id = ordinal + 1");
        let mut with_id = Container {
            env: sim.env.clone(),
            command: vec![],
            args: vec![],
        };
        with_id
            .env
            .insert("RAFTJOB_NODE_ID".into(), node_id.to_string());
        let cfg = server_config(&with_id, &flags).unwrap_or_else(|e| panic!("{pod}: {e}"));
        assert_eq!(cfg.node_id, node_id);

        // The ports the server listens on are exactly the container ports.
        let api = cfg.api_addr.port();
        let cluster = cfg.cluster_addr.port();
        assert_eq!(ports.get("api"), Some(&api), "{pod}: api port");
        assert_eq!(ports.get("cluster"), Some(&cluster), "{pod}: cluster port");
        let mut listening: BTreeSet<u16> = BTreeSet::from([api, cluster]);
        for (proto, addr) in &cfg.transports {
            assert_eq!(
                ports.get(&format!("transport-{proto}")),
                Some(&addr.port()),
                "{pod}: transport.{proto} port"
            );
            listening.insert(addr.port());
        }
        assert!(cfg.transports.contains_key("ws"), "the workers use ws");
        let declared: BTreeSet<u16> = ports.values().copied().collect();
        assert_eq!(listening, declared, "{pod}: container ports = listeners");

        // Initial members: three, by the headless Service's names, on the cluster port.
        assert_eq!(cfg.initial_members.len(), 3);
        for (id, addr) in &cfg.initial_members {
            assert_eq!(
                addr,
                &format!(
                    "{}:{cluster}",
                    pod_fqdn(&format!("{}-{}", sts.name, id - 1), headless)
                ),
                "{pod}: initial member {id}"
            );
        }
        // What the pod publishes: its own stable name.
        let me = pod_fqdn(&pod, headless);
        assert_eq!(cfg.advertise_api_addr, format!("{me}:{api}"));
        assert_eq!(cfg.advertise_cluster_addr, cfg.initial_members[&node_id]);
        for (proto, addr) in &cfg.transports {
            assert_eq!(
                cfg.advertise_transport.get(proto),
                Some(&format!("{me}:{}", addr.port())),
                "{pod}: advertised {proto}"
            );
        }
        // The workers' app is provisioned, with the Secret's name.
        let app = &m.secret("raftjob-secrets")["app-name"];
        assert!(
            cfg.bootstrap_apps
                .iter()
                .any(|a| &a.name == app && a.worker_token == TEST_SECRET_VALUE),
            "{pod}: bootstrap app {app}"
        );
    }
}

#[test]
fn the_example_secret_cannot_start_a_server_unchanged() {
    let m = load();
    let c = server_container(&m);
    let mut sim = simulate(&m, c, "raftjob-0", None);
    sim.env.insert("RAFTJOB_NODE_ID".into(), "1".into());
    let err = server_config(&sim, &[]).expect_err("placeholders must be refused");
    assert!(
        ["cluster_secret", "admin_token", "bootstrap_apps"]
            .iter()
            .any(|k| err.contains(k)),
        "refused for another reason than the placeholder credentials: {err}"
    );
}

#[test]
fn probes_use_readyz_and_healthz_on_the_api_port() {
    let m = load();
    let c = server_container(&m);
    let ports = container_ports(c, "server");
    let api = ports["api"];
    let ready = at(c, "readinessProbe.httpGet", "server");
    assert_eq!(str_at(ready, "path", "readinessProbe"), "/readyz");
    assert_eq!(
        resolve_port(
            at(ready, "port", "readinessProbe"),
            &ports,
            "readinessProbe"
        ),
        api
    );
    let live = at(c, "livenessProbe.httpGet", "server");
    assert_eq!(str_at(live, "path", "livenessProbe"), "/healthz");
    assert_eq!(
        resolve_port(at(live, "port", "livenessProbe"), &ports, "livenessProbe"),
        api
    );
}

#[test]
fn services_select_the_server_pods_and_target_their_ports() {
    let m = load();
    let sts = &m.statefulset().v;
    let server_labels = labels(sts, "spec.template.metadata.labels", "StatefulSet");
    let worker_labels = labels(
        &m.worker_deployment().v,
        "spec.template.metadata.labels",
        "Deployment",
    );
    let ports = container_ports(server_container(&m), "server");

    let mut targets: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for svc in m.all("Service") {
        let sel = labels(&svc.v, "spec.selector", &svc.name);
        assert!(
            selects(&sel, &server_labels),
            "Service {} does not select the server pods",
            svc.name
        );
        assert!(
            !selects(&sel, &worker_labels),
            "Service {} also selects the workers",
            svc.name
        );
        for p in seq(&svc.v, "spec.ports", &svc.name) {
            let what = format!("Service {}", svc.name);
            let port = at(p, "port", &what).as_u64().unwrap() as u16;
            let target = opt(p, "targetPort").unwrap_or(at(p, "port", &what));
            let resolved = resolve_port(target, &ports, &what);
            assert_eq!(port, resolved, "{what}: port {port} targets {resolved}");
            targets
                .entry(svc.name.clone())
                .or_default()
                .insert(resolved);
        }
    }
    assert!(targets["raftjob-peers"].contains(&ports["cluster"]));
    assert_eq!(targets["raftjob-api"], BTreeSet::from([ports["api"]]));
    let transport: BTreeSet<u16> = ports
        .iter()
        .filter(|(k, _)| k.starts_with("transport-"))
        .map(|(_, v)| *v)
        .collect();
    assert!(!transport.is_empty());
    assert_eq!(targets["raftjob-transport"], transport);
    // Workers reach each pod by name on its transport ports.
    assert!(transport.is_subset(&targets["raftjob-peers"]));
}

#[test]
fn disruption_budget_and_network_policy_cover_the_servers_only() {
    let m = load();
    let server_labels = labels(
        &m.statefulset().v,
        "spec.template.metadata.labels",
        "StatefulSet",
    );
    let worker_labels = labels(
        &m.worker_deployment().v,
        "spec.template.metadata.labels",
        "Deployment",
    );
    let pdb = &m.one("PodDisruptionBudget").v;
    let max_unavailable = opt(pdb, "spec.maxUnavailable").and_then(|v| v.as_u64());
    let min_available = opt(pdb, "spec.minAvailable").and_then(|v| v.as_u64());
    assert!(
        max_unavailable == Some(1) || min_available == Some(2),
        "the PDB must keep a majority (maxUnavailable 1 or minAvailable 2)"
    );
    let sel = labels(pdb, "spec.selector.matchLabels", "PodDisruptionBudget");
    assert!(selects(&sel, &server_labels));
    assert!(!selects(&sel, &worker_labels));

    let ports = container_ports(server_container(&m), "server");
    for np in m.all("NetworkPolicy") {
        let sel = labels(&np.v, "spec.podSelector.matchLabels", &np.name);
        assert!(selects(&sel, &server_labels));
        let mut port_refs = Vec::new();
        find_key(&np.v, "port", &mut port_refs);
        for p in port_refs {
            resolve_port(p, &ports, &np.name);
        }
        // The cluster port admits the servers only.
        for rule in seq(&np.v, "spec.ingress", &np.name) {
            let opens_cluster = opt(rule, "ports")
                .and_then(|v| v.as_sequence())
                .is_some_and(|ps| {
                    ps.iter().any(|p| {
                        resolve_port(at(p, "port", &np.name), &ports, &np.name) == ports["cluster"]
                    })
                });
            if opens_cluster {
                let from = seq(rule, "from", &np.name);
                assert!(!from.is_empty());
                for f in from {
                    let peer = labels(f, "podSelector.matchLabels", &np.name);
                    assert!(selects(&peer, &server_labels));
                    assert!(!selects(&peer, &worker_labels));
                }
            }
        }
    }
}

#[test]
fn workers_use_ws_and_list_the_three_pods_on_the_ws_port() {
    let m = load();
    let dep = m.worker_deployment();
    assert_eq!(at(&dep.v, "spec.replicas", "Deployment").as_u64(), Some(2));
    let pod_labels = labels(&dep.v, "spec.template.metadata.labels", "Deployment");
    let sel = labels(&dep.v, "spec.selector.matchLabels", "Deployment");
    assert!(selects(&sel, &pod_labels));
    let server_labels = labels(
        &m.statefulset().v,
        "spec.template.metadata.labels",
        "StatefulSet",
    );
    assert!(!selects(&sel, &server_labels));

    let c = worker_container(&m);
    assert!(
        container_ports(c, "worker").is_empty(),
        "a ws worker needs no inbound port"
    );
    assert_eq!(
        at(c, "securityContext.readOnlyRootFilesystem", "worker").as_bool(),
        Some(true)
    );
    assert_eq!(
        at(
            &dep.v,
            "spec.template.spec.securityContext.runAsNonRoot",
            "worker"
        )
        .as_bool(),
        Some(true)
    );

    let pod = "raftjob-worker-5d8f7c9b6-x2x7q";
    let sim = simulate(&m, c, pod, Some(TEST_SECRET_VALUE));
    assert!(
        sim.command.is_empty(),
        "the worker runs the image's /raftjob"
    );
    assert_eq!(sim.args.first().map(String::as_str), Some("worker"));
    let cfg = worker_config(&sim, &sim.args[1..]).unwrap_or_else(|e| panic!("worker: {e}"));
    assert_eq!(cfg.protocol, "ws");
    assert_eq!(cfg.name, pod);
    assert_eq!(&cfg.app, &m.secret("raftjob-secrets")["app-name"]);
    assert_eq!(cfg.token, TEST_SECRET_VALUE);

    let ws = container_ports(server_container(&m), "server")["transport-ws"];
    let sts = &m.statefulset().name;
    let headless = &m.headless().name;
    let expected: Vec<String> = (0..3)
        .map(|i| format!("{}:{ws}", pod_fqdn(&format!("{sts}-{i}"), headless)))
        .collect();
    assert_eq!(cfg.servers, expected);
    for s in &cfg.servers {
        assert_eq!(split_host_port(s).1, ws);
    }
}

#[test]
fn every_secret_and_configmap_reference_exists() {
    let m = load();
    let mut refs = Vec::new();
    for o in &m.objs {
        find_key(&o.v, "secretKeyRef", &mut refs);
    }
    assert!(!refs.is_empty());
    for r in refs {
        let name = str_at(r, "name", "secretKeyRef");
        let key = str_at(r, "key", "secretKeyRef");
        assert!(
            m.secret(name).contains_key(key),
            "secretKeyRef {name}/{key}: no such key"
        );
    }
    let mut refs = Vec::new();
    for o in &m.objs {
        find_key(&o.v, "configMapKeyRef", &mut refs);
    }
    for r in refs {
        let name = str_at(r, "name", "configMapKeyRef");
        let key = str_at(r, "key", "configMapKeyRef");
        assert!(
            m.configmap(name).contains_key(key),
            "configMapKeyRef {name}/{key}: no such key"
        );
    }
    let mut refs = Vec::new();
    for o in &m.objs {
        find_key(&o.v, "configMapRef", &mut refs);
        find_key(&o.v, "secretRef", &mut refs);
    }
    for r in refs {
        let name = str_at(r, "name", "envFrom");
        assert!(
            m.objs
                .iter()
                .any(|o| (o.kind == "ConfigMap" || o.kind == "Secret") && o.name == name),
            "envFrom {name}: no such ConfigMap or Secret"
        );
    }
}
