//! Fleet benchmark against the cluster in KUBECONFIG (the local control plane or kind): the
//! real operator binary with N Servers, fed steady telemetry over its gRPC stream. Prints:
//! status writes per server per 5 minutes (from the API server's audit log), the operator's
//! RSS, and how long a health change takes to show in `status` (p50/p99).
//!
//! `cargo bench -p sovereign-operator --bench fleet -- [--servers 1000] [--minutes 10]
//!  [--interval-seconds 15] [--flips-every-ms 2000] [--warmup-minutes 1]`
//!
//! The operator runs as built (its allocator configured in `.cargo/config.toml`), as the image
//! runs it.
//!
//! Not a test: it takes minutes and reports figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench may panic
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use sovereign_crds::Server;
use sovereign_telemetry::proto::{self, BmcSummary, Sample, Source, sample::Body};
use sovereign_telemetry::publisher::{self, PublisherConfig};
use sovereign_tests::bench::{arg, quantile, rss_kib};
use sovereign_tests::e2e::{ChildGuard, audit_mark, audit_writes, cluster, free_port};

const NS: &str = "sovereign-system";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn sample(server: &str, at: i64, tick: u64, critical: bool) -> Sample {
    // Readings wander a little, as real ones do: ±2 % power, ±0.5 °C.
    let wobble = ((tick * 7 + server.len() as u64) % 5) as f64 - 2.0;
    Sample {
        server: server.to_owned(),
        source: Source::Redfish as i32,
        observed_at_unix_ms: at,
        body: Some(Body::Bmc(BmcSummary {
            health: if critical {
                proto::Health::Critical
            } else {
                proto::Health::Ok
            } as i32,
            health_reason: if critical {
                "bench: PSU 1 Critical".into()
            } else {
                String::new()
            },
            power_state: "On".into(),
            consumed_watts: Some(500.0 + wobble * 5.0),
            inlet_celsius: Some(24.0 + wobble * 0.25),
            cpu_max_celsius: Some(55.0 + wobble * 0.25),
            intrusion: "Normal".into(),
            manufacturer: "Bench".into(),
            logical_processors: 64,
            memory_bytes: Some(512 << 30),
            ..BmcSummary::default()
        })),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let servers = arg("--servers", 1000) as usize;
    let minutes = arg("--minutes", 10);
    let interval = Duration::from_secs(arg("--interval-seconds", 15));
    let flip_every = Duration::from_millis(arg("--flips-every-ms", 2000));
    let warmup = Duration::from_mins(arg("--warmup-minutes", 1));
    let Some(cluster) = cluster("fleet bench").await else {
        return;
    };
    let helm = sovereign_tests::chart::helm().expect("helm (hack/install-helm.sh)");
    cluster.install_crds().await;
    cluster.apply_chart_rbac(&helm).await;
    let p = format!("bench{}", std::process::id() % 10_000);
    let site = format!("{p}-site");
    cluster
        .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Site",
            "metadata": {"name": site}, "spec": {"jurisdiction": "VN", "region": "north", "securityTier": 3}}))
        .await
        .unwrap();
    let racks = servers.div_ceil(40);
    for r in 0..racks {
        cluster
            .apply(
                &json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Rack",
                "metadata": {"name": format!("{p}-r{r}")},
                "spec": {"site": site, "powerBudgetWatts": 40000, "maxInletCelsius": 35}}),
            )
            .await
            .unwrap();
    }
    let names: Vec<String> = (0..servers)
        .map(|i| format!("{p}-r{}-s{}", i / 40, i % 40))
        .collect();
    let created = Instant::now();
    futures::stream::iter(names.iter().enumerate())
        .for_each_concurrent(16, |(i, n)| {
            let cluster = cluster.clone();
            let p = p.clone();
            async move {
                cluster
                    .apply(
                        &json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Server",
                        "metadata": {"name": n, "labels": {"sovereign.io/bench": p}},
                        "spec": {"rack": format!("{p}-r{}", i / 40),
                            "bmc": {"address": format!("https://10.1.{}.{}", i / 250, i % 250),
                                "credentialsSecretRef": {"name": "bmc", "namespace": NS},
                                "insecureSkipVerify": true, "pollIntervalSeconds": 15}}}),
                    )
                    .await
                    .unwrap();
            }
        })
        .await;
    eprintln!("created {servers} Servers in {:.1?}", created.elapsed());

    let kubeconfig = cluster
        .service_account_kubeconfig(NS, "sovereign-operator")
        .await;
    let token = cluster
        .service_account_token(NS, "sovereign-collector", &["sovereign-telemetry"])
        .await;
    let port = free_port();
    let admin = free_port();
    let metrics = free_port();
    let args: Vec<String> = vec![
        "run".into(),
        "--check-only".into(),
        "--plaintext-telemetry".into(),
        format!("--telemetry-addr=127.0.0.1:{port}"),
        format!("--metrics-addr=127.0.0.1:{metrics}"),
        format!("--admin-addr=127.0.0.1:{admin}"),
        "--collector=system:serviceaccount:sovereign-system:sovereign-collector".into(),
    ];
    let operator = ChildGuard::spawn(
        Path::new(env!("CARGO_BIN_EXE_sovereign-operator")),
        "bench-operator",
        &args,
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("RUST_LOG", "warn"),
        ],
    );
    let pid = operator.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (publisher, _task) = publisher::start(
        PublisherConfig {
            endpoint: format!("http://127.0.0.1:{port}"),
            buffer: servers * 2 + 100,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            ca_pem: None,
        },
        move || Some(token.clone()),
    );

    // Health flips on a dedicated tenth of the fleet; their latency from the sample's time to
    // the watch event that shows the new Healthy condition.
    let flip_pool: Vec<String> = names.iter().step_by(10).cloned().collect();
    let critical: Arc<Mutex<HashMap<String, (bool, i64)>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    {
        let api: Api<Server> = Api::all(cluster.client.clone());
        let critical = critical.clone();
        let latencies = latencies.clone();
        let cfg = watcher::Config::default().labels(&format!("sovereign.io/bench={p}"));
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
            while let Ok(Some(s)) = stream.try_next().await {
                let name = s.metadata.name.clone().unwrap_or_default();
                let healthy = s.status.as_ref().and_then(|st| {
                    st.conditions
                        .iter()
                        .find(|c| c.type_ == "Healthy")
                        .map(|c| c.status == sovereign_crds::ConditionStatus::False)
                });
                let mut map = critical.lock().unwrap();
                if let Some((want_critical, at)) = map.get(&name).copied()
                    && healthy == Some(want_critical)
                {
                    latencies
                        .lock()
                        .unwrap()
                        .push((now_ms() - at) as f64 / 1000.0);
                    map.remove(&name);
                }
            }
        });
    }

    let audit = cluster
        .audit_log()
        .expect("the audit log of ../shared/k8s (controlplane.sh)");
    let start = Instant::now();
    let mut warm_mark = None;
    let mut tick = 0u64;
    let mut state: BTreeMap<String, bool> = BTreeMap::new();
    let mut next_flip = Instant::now() + Duration::from_secs(30);
    let mut flip_i = 0usize;
    let mut peak = (0, 0);
    let end = start + warmup + Duration::from_mins(minutes);
    let mut next_round = Instant::now();
    while Instant::now() < end {
        if Instant::now() >= next_round {
            let at = now_ms();
            for n in &names {
                publisher.offer(sample(n, at, tick, state.get(n).copied().unwrap_or(false)));
            }
            tick += 1;
            next_round += interval;
        }
        // The warm-up writes every server's first status: the budget counts after it.
        if warm_mark.is_none() && start.elapsed() >= warmup {
            warm_mark = Some((audit_mark(&audit), Instant::now()));
            eprintln!("warm-up done; counting writes for {minutes} min");
        }
        if warm_mark.is_some() && Instant::now() >= next_flip {
            let n = &flip_pool[flip_i % flip_pool.len()];
            flip_i += 1;
            let crit = !state.get(n).copied().unwrap_or(false);
            state.insert(n.clone(), crit);
            let at = now_ms();
            critical.lock().unwrap().insert(n.clone(), (crit, at));
            publisher.offer(sample(n, at, tick, crit));
            next_flip += flip_every;
        }
        let (rss, hwm) = rss_kib(pid);
        peak = (peak.0.max(rss), hwm);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mark, counted_from) = warm_mark.unwrap();
    let counted = counted_from.elapsed();
    let writes = audit_writes(&audit, &format!("/servers/{p}-"), mark);
    let op_writes: usize = writes
        .iter()
        .filter(|(u, _)| u.ends_with(":sovereign-operator"))
        .map(|(_, n)| *n)
        .sum();
    let flips = flip_i;
    let steady = op_writes.saturating_sub(flips);
    let per_server_per_5min = steady as f64 / servers as f64 / (counted.as_secs_f64() / 300.0);
    let mut l = latencies.lock().unwrap().clone();
    let (p50, p99) = (quantile(&mut l, 0.5), quantile(&mut l, 0.99));
    println!(
        "servers {servers}, interval {interval:?}, counted {:.0} s",
        counted.as_secs_f64()
    );
    println!(
        "status writes: {op_writes} total, {flips} from health flips, {steady} steady = {per_server_per_5min:.3} per server per 5 min"
    );
    println!(
        "operator RSS: now {} KiB, peak seen {} KiB, VmHWM {} KiB",
        rss_kib(pid).0,
        peak.0,
        peak.1
    );
    println!(
        "health change → status: {} samples, p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        l.len(),
        p50,
        p99,
        l.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "publisher: sent {}, dropped {}",
        publisher
            .stats()
            .sent
            .load(std::sync::atomic::Ordering::Relaxed),
        publisher
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    // Why the operator wrote (its own counters, by reason).
    if let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await
        && let Ok(text) = resp.text().await
    {
        for line in text
            .lines()
            .filter(|l| l.starts_with("sovereign_operator_status_writes_total"))
        {
            println!("  {line}");
        }
    }
    drop(operator);
    let api: Api<Server> = Api::all(cluster.client.clone());
    let _ = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("sovereign.io/bench={p}")),
        )
        .await;
}
