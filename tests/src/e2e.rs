//! The end-to-end harness every cluster test uses (testing ladder step 4): a client from
//! `KUBECONFIG`, the CRDs installed, a fresh namespace per test, fake Nodes (there are no
//! kubelets), waits with deadlines, impersonated clients for RBAC checks, a child-process guard
//! for the operator binary and write counts from the API server's audit log.
//!
//! Without a cluster every test skips, saying so on stderr. With `SOVEREIGN_E2E=required` (CI
//! sets it when it started a control plane) a skip is a failure instead.

// A harness fails the test it serves by panicking, with a message that says what went wrong.
#![allow(clippy::panic)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};

/// Environment variable that turns a skipped e2e test into a failure.
pub const REQUIRED_ENV: &str = "SOVEREIGN_E2E";

/// Field manager of objects the harness itself creates.
pub const MANAGER: &str = "sovereign-e2e";

/// Says a test was skipped where people see it, or fails it when e2e is required.
fn skip(test: &str, why: &str) {
    use std::io::Write;
    assert!(
        std::env::var(REQUIRED_ENV).as_deref() != Ok("required"),
        "{test}: e2e is required ({REQUIRED_ENV}=required) but no cluster answers: {why}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no cluster reachable through KUBECONFIG ({why})"
    );
}

/// A connection to the test cluster.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    config: kube::Config,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.config.cluster_url)
            .finish_non_exhaustive()
    }
}

/// The cluster in KUBECONFIG, or None after saying the test was skipped. Only a cluster
/// given explicitly: these tests apply CRDs, create Nodes and taint them, so they never fall
/// back to `~/.kube/config` or in-cluster config (a laptop pointed at a real cluster).
pub async fn cluster(test: &str) -> Option<Cluster> {
    if std::env::var_os("KUBECONFIG").is_none_or(|v| v.is_empty()) {
        skip(
            test,
            "KUBECONFIG is not set (e2e tests run only against a cluster given to them)",
        );
        return None;
    }
    let attempt = async {
        let config = kube::Config::infer().await.map_err(|e| e.to_string())?;
        let client = kube::Client::try_from(config.clone()).map_err(|e| e.to_string())?;
        client
            .apiserver_version()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(Cluster { client, config })
    };
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            skip(test, &e);
            None
        }
        Err(_) => {
            skip(test, "the API server did not answer within 15 s");
            None
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique within this test run: `prefix-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

impl Cluster {
    /// Server-side applies the Sovereign CRDs and waits until each is Established (idempotent,
    /// so every test may call it).
    pub async fn install_crds(&self) {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let params = PatchParams::apply("sovereign-operator").force();
        for crd in sovereign_crds::crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("CRD {name} refused: {e}"));
            let established = await_condition(api.clone(), &name, conditions::is_crd_established());
            tokio::time::timeout(Duration::from_mins(1), established)
                .await
                .unwrap_or_else(|_| panic!("CRD {name} not Established within 60 s"))
                .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"));
        }
    }

    /// An API for the kind and namespace of `obj` (a manifest as JSON), found by discovery.
    pub async fn api_for(&self, obj: &Value) -> Api<DynamicObject> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, obj["kind"].as_str().unwrap_or_default());
        let (resource, caps) = pinned_kind(&self.client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("discovering {gvk:?}: {e}"));
        match caps.scope {
            Scope::Namespaced => {
                let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
                Api::namespaced_with(self.client.clone(), ns, &resource)
            }
            Scope::Cluster => Api::all_with(self.client.clone(), &resource),
        }
    }

    /// Server-side applies a manifest (as JSON) with the harness's field manager.
    pub async fn apply(&self, obj: &Value) -> Result<DynamicObject, kube::Error> {
        let api = self.api_for(obj).await;
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        api.patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
    }

    /// Server-side applies the admission policies and bindings (idempotent).
    pub async fn install_admission(&self) {
        for obj in sovereign_crds::admission::policies() {
            let kind = obj["kind"].as_str().unwrap_or_default();
            let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
            let lower = kind.to_ascii_lowercase();
            // ValidatingAdmissionPolicy → validatingadmissionpolicies; …Binding → …bindings.
            let plural = match lower.strip_suffix('y') {
                Some(stem) => format!("{stem}ies"),
                None => format!("{lower}s"),
            };
            let api: Api<DynamicObject> = Api::all_with(
                self.client.clone(),
                &kube::discovery::ApiResource::from_gvk_with_plural(&gvk, &plural),
            );
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            api.patch(
                name,
                &PatchParams::apply("sovereign-operator").force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
        }
        // The API server enforces a new policy a moment after it is created: wait until a
        // dry-run StorageVolume in a namespace of no tenant is refused.
        let probe: Value = json!({
            "apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
            "metadata": {"name": "admission-probe", "namespace": "default"},
            "spec": {"size": "1Gi", "tier": "ssd"},
        });
        let api = self.api_for(&probe).await;
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let probe: DynamicObject =
            serde_json::from_value(probe).unwrap_or_else(|e| panic!("probe: {e}"));
        wait_for(
            Duration::from_secs(30),
            "the admission policies to be enforced",
            || async { api.create(&dry, &probe).await.is_err().then_some(()) },
        )
        .await;
    }

    /// A client that acts as `user` (and `groups`) through impersonation, so RBAC is checked
    /// by the real authorizer as if that identity had sent the request.
    pub fn impersonate(&self, user: &str, groups: &[&str]) -> kube::Client {
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups =
            Some(groups.iter().map(|g| (*g).to_owned()).collect());
        kube::Client::try_from(config).unwrap_or_else(|e| panic!("impersonating {user}: {e}"))
    }

    /// A client for a ServiceAccount (`system:serviceaccount:NS:NAME` with its groups).
    pub fn as_service_account(&self, namespace: &str, name: &str) -> kube::Client {
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let ns_group = format!("system:serviceaccounts:{namespace}");
        self.impersonate(
            &user,
            &["system:serviceaccounts", &ns_group, "system:authenticated"],
        )
    }

    /// A fresh namespace for one test, deleted when the guard drops.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        self.namespace_with_labels(prefix, &BTreeMap::new()).await
    }

    /// A fresh namespace with labels (a tenant label, say).
    pub async fn namespace_with_labels(
        &self,
        prefix: &str,
        labels: &BTreeMap<String, String>,
    ) -> TestNamespace {
        let name = unique(prefix);
        self.ensure_namespace(&name, labels).await;
        TestNamespace {
            name,
            client: self.client.clone(),
        }
    }

    /// Creates a namespace unless it exists (for fixed names such as `sovereign-system`).
    pub async fn ensure_namespace(&self, name: &str, labels: &BTreeMap<String, String>) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        });
        api.patch(name, &PatchParams::apply(MANAGER), &Patch::Apply(&ns))
            .await
            .unwrap_or_else(|e| panic!("namespace {name}: {e}"));
    }

    /// Creates (or replaces) a fake Node standing in for a kubelet: Ready, with capacity and
    /// allocatable, and the given labels (topology, say). Returns its name.
    pub async fn create_node(&self, node: &FakeNode) -> String {
        let api: Api<Node> = Api::all(self.client.clone());
        let _ = api.delete(&node.name, &DeleteParams::default()).await;
        let mut capacity = json!({
            "cpu": node.cpu, "memory": node.memory, "pods": "110",
        });
        if node.gpus > 0 {
            capacity["nvidia.com/gpu"] = json!(node.gpus.to_string());
        }
        let obj: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": node.labels},
            "spec": {},
            "status": {
                "capacity": capacity, "allocatable": capacity,
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "fake node (no kubelet) created by the e2e harness",
                    "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339(),
                }],
            },
        }))
        .unwrap_or_else(|e| panic!("node {}: {e}", node.name));
        // Deletion of a same-named node may still be in flight.
        wait_for(
            Duration::from_secs(10),
            "the fake node to be created",
            || async { api.create(&PostParams::default(), &obj).await.ok() },
        )
        .await;
        node.name.clone()
    }

    /// Deletes fake nodes (best effort).
    pub async fn delete_nodes(&self, names: &[String]) {
        let api: Api<Node> = Api::all(self.client.clone());
        for n in names {
            let _ = api.delete(n, &DeleteParams::default()).await;
        }
    }

    /// Creates the ServiceAccount (if missing) and returns a token for it with `audiences`
    /// (empty: the API server's own), valid for an hour.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
    ) -> String {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}});
        sas.patch(name, &PatchParams::apply(MANAGER), &Patch::Apply(&sa))
            .await
            .unwrap_or_else(|e| panic!("ServiceAccount {namespace}/{name}: {e}"));
        let request: TokenRequest = serde_json::from_value(json!({
            "spec": {"audiences": audiences, "expirationSeconds": 3600}
        }))
        .unwrap_or_else(|e| panic!("token request: {e}"));
        let answer = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("token for {namespace}/{name}: {e}"));
        answer.status.map(|s| s.token).unwrap_or_default()
    }

    /// Writes a kubeconfig that authenticates as the ServiceAccount `namespace/name` (a real
    /// token, so RBAC applies to a child process exactly as in a pod). Returns its path.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.service_account_token(namespace, name, &[]).await;
        let admin = std::env::var("KUBECONFIG").unwrap_or_default();
        let text =
            std::fs::read_to_string(&admin).unwrap_or_else(|e| panic!("reading {admin}: {e}"));
        let admin: Value =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{admin}: {e}"));
        let cluster = &admin["clusters"][0]["cluster"];
        let config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": cluster}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": name, "namespace": namespace}}],
            "current-context": "e2e",
        });
        let dir = std::env::temp_dir().join("sovereign-e2e-kubeconfigs");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{namespace}-{name}.yaml"));
        std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap_or_default())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Applies the chart's ServiceAccounts, roles and bindings (rendered by helm with the CI
    /// values, namespace `sovereign-system`), so components run with exactly the chart's rights.
    pub async fn apply_chart_rbac(&self, helm: &Path) {
        self.ensure_namespace("sovereign-system", &BTreeMap::new())
            .await;
        let objects = crate::chart::render(
            &helm.to_path_buf(),
            &["-f", &crate::chart::ci_values("default")],
        )
        .unwrap_or_else(|e| panic!("helm template: {e}"));
        for obj in &objects {
            let kind = obj["kind"].as_str().unwrap_or_default();
            if [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            ]
            .contains(&kind)
            {
                self.apply(obj)
                    .await
                    .unwrap_or_else(|e| panic!("{kind} {}: {e}", obj["metadata"]["name"]));
            }
        }
    }

    /// Binds another ServiceAccount to the chart's operator roles (a second operator replica
    /// with its own identity, so the audit log tells the replicas apart).
    pub async fn bind_like_operator(&self, sa: &str) {
        let ns = "sovereign-system";
        for obj in [
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": format!("e2e-{sa}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "sov-sovereign-operator"},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": format!("e2e-{sa}"), "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sovereign-operator-leader-election"},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]}),
        ] {
            self.apply(&obj)
                .await
                .unwrap_or_else(|e| panic!("binding {sa}: {e}"));
        }
    }

    /// The audit log of the local control plane (beside its kubeconfig), if there is one.
    pub fn audit_log(&self) -> Option<PathBuf> {
        let kubeconfig = std::env::var("KUBECONFIG").ok()?;
        let path = Path::new(&kubeconfig).parent()?.join("audit.log");
        path.is_file().then_some(path)
    }
}

/// A free loopback port for a child process to bind.
pub fn free_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("no free port: {e}"),
    }
}

/// `sovereign-operator run` as the chart runs it, on loopback: CRDs only checked (the harness
/// installs them), plaintext telemetry on `telemetry_port`, free metrics and admin ports, the
/// chart's collector identity, then `extra`; authenticated by `kubeconfig`.
pub fn spawn_operator(
    binary: &Path,
    name: &str,
    kubeconfig: &Path,
    telemetry_port: u16,
    extra: &[String],
    rust_log: &str,
) -> ChildGuard {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--check-only".into(),
        "--plaintext-telemetry".into(),
        format!("--telemetry-addr=127.0.0.1:{telemetry_port}"),
        format!("--metrics-addr=127.0.0.1:{}", free_port()),
        format!("--admin-addr=127.0.0.1:{}", free_port()),
        "--collector=system:serviceaccount:sovereign-system:sovereign-collector".into(),
    ];
    args.extend_from_slice(extra);
    let kubeconfig = kubeconfig.to_string_lossy();
    ChildGuard::spawn(
        binary,
        name,
        &args,
        &[("KUBECONFIG", kubeconfig.as_ref()), ("RUST_LOG", rust_log)],
    )
}

/// A collector's stream to an operator spawned with `--plaintext-telemetry` on `port`, presenting
/// `token`, holding up to 100,000 samples while disconnected (fleet-sized benches).
pub fn local_publisher(
    port: u16,
    token: String,
) -> (
    sovereign_telemetry::publisher::Publisher,
    tokio::task::JoinHandle<()>,
) {
    sovereign_telemetry::publisher::start(
        sovereign_telemetry::publisher::PublisherConfig {
            endpoint: format!("http://127.0.0.1:{port}"),
            buffer: 100_000,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            ca_pem: None,
        },
        move || Some(token.clone()),
    )
}

/// A healthy BMC reading as the collector sends it: `cpus` threads, `memory_gib` of memory,
/// one self-encrypting SSD of `ssd_bytes`, and the chassis intrusion sensor as given.
pub fn bmc_sample(
    server: &str,
    cpus: u32,
    memory_gib: u64,
    ssd_bytes: u64,
    intrusion: bool,
) -> sovereign_telemetry::proto::Sample {
    use sovereign_telemetry::proto::{self, BmcSummary, Source, sample::Body};
    proto::Sample {
        server: server.to_owned(),
        source: Source::Redfish as i32,
        observed_at_unix_ms: k8s_openapi::jiff::Timestamp::now().as_millisecond(),
        body: Some(Body::Bmc(BmcSummary {
            health: proto::Health::Ok as i32,
            power_state: "On".into(),
            consumed_watts: Some(400.0),
            inlet_celsius: Some(23.0),
            intrusion: if intrusion {
                "HardwareIntrusion"
            } else {
                "Normal"
            }
            .into(),
            logical_processors: cpus,
            memory_bytes: Some(memory_gib << 30),
            drive_list: vec![proto::Drive {
                id: "ssd0".into(),
                tier: "ssd".into(),
                capacity_bytes: Some(ssd_bytes),
                health: proto::Health::Ok as i32,
                encryption_capable: true,
                ..proto::Drive::default()
            }],
            ..BmcSummary::default()
        })),
    }
}

/// A fake Node's shape.
#[derive(Clone, Debug)]
pub struct FakeNode {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    pub gpus: u32,
    pub labels: BTreeMap<String, String>,
}

impl FakeNode {
    /// A 64-core, 512 GiB node without GPUs.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            cpu: "64".into(),
            memory: "512Gi".into(),
            gpus: 0,
            labels: BTreeMap::from([("kubernetes.io/hostname".to_owned(), name.to_owned())]),
        }
    }

    /// Adds a label (e.g. `topology.kubernetes.io/zone`).
    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// A namespace that is deleted (without waiting) when the test ends.
pub struct TestNamespace {
    pub name: String,
    client: kube::Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = self.name.clone();
        // The test's runtime may be shutting down: delete on a runtime of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let _ = api.delete(&name, &DeleteParams::background()).await;
            });
        })
        .join();
    }
}

/// Polls `probe` every 100 ms until it yields a value; panics naming `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// True when the condition `type_` of an object (as JSON) has `status`.
pub fn has_condition(obj: &Value, type_: &str, status: &str) -> bool {
    obj["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == type_ && c["status"] == status)
    })
}

/// Outcome of one request made as some identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The authorizer let it through (the answer may still be 404 or 409).
    Allowed,
    /// 403 Forbidden.
    Refused,
}

/// Maps a request's result to whether RBAC allowed it; panics on anything unexpected.
pub fn access<T>(what: &str, result: Result<T, kube::Error>) -> Access {
    match result {
        Ok(_) => Access::Allowed,
        Err(kube::Error::Api(s)) if s.code == 403 => Access::Refused,
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 || s.code == 422 => {
            Access::Allowed
        }
        Err(e) => panic!("{what}: unexpected error {e}"),
    }
}

/// A child process (the operator or an agent binary) killed when the guard drops.
#[derive(Debug)]
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    /// Starts `binary` with `args`, logs to `<target>/e2e-logs/<name>.log`.
    pub fn spawn(binary: &Path, name: &str, args: &[String], env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join("sovereign-e2e-logs");
        let _ = std::fs::create_dir_all(&dir);
        let log = std::fs::File::create(dir.join(format!("{name}.log")))
            .unwrap_or_else(|e| panic!("log file for {name}: {e}"));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("log file for {name}: {e}"));
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Profiling a spawned binary alone (not the test or bench around it), e.g. heaptrack's
        // preload library with DUMP_HEAPTRACK_OUTPUT set: see docs/operations.md.
        if let Ok(preload) = std::env::var("SOVEREIGN_CHILD_PRELOAD") {
            cmd.env("LD_PRELOAD", preload);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Self {
            child,
            name: name.to_owned(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Panics when the process logged a failed watch: controllers limp on through re-lists,
    /// so a watch that breaks on every event (a decoding or resourceVersion bug) would
    /// otherwise pass every other check.
    pub fn assert_watches_held(&self) {
        let log = self.log();
        let failed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("watch error"))
            .take(5)
            .collect();
        assert!(
            failed.is_empty(),
            "{} logged failed watches:\n{}",
            self.name,
            failed.join("\n")
        );
    }

    /// The log the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(
            std::env::temp_dir()
                .join("sovereign-e2e-logs")
                .join(format!("{}.log", self.name)),
        )
        .unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what its processes said last.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("---- last lines of {} ----\n{tail}", self.name);
        }
    }
}

/// API writes (create, update, patch, delete) per user in the audit log, counting only events
/// whose request URI contains `uri_part` (empty: all), from line `from_line` on.
pub fn audit_writes(log: &Path, uri_part: &str, from_line: usize) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines().skip(from_line) {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let write = matches!(
            e["verb"].as_str(),
            Some("create" | "update" | "patch" | "delete" | "deletecollection")
        );
        if e["stage"] == "ResponseComplete"
            && write
            && e["requestURI"]
                .as_str()
                .is_some_and(|u| u.contains(uri_part))
        {
            let user = e["user"]["username"].as_str().unwrap_or("?").to_owned();
            *out.entry(user).or_insert(0) += 1;
        }
    }
    out
}

/// Lines in the audit log now (a mark for [`audit_writes`]).
pub fn audit_mark(log: &Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |t| t.lines().count())
}
