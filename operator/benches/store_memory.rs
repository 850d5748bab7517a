//! Heap bytes per workload and Server as the operator's stores hold them: decoded, and packed (see
//! `sovereign_operator::packed`); for workloads also held in a store, key and table included:
//! kube-runtime's reflector store of packed objects against the operator's own compact store
//! (`sovereign_operator::workload_store`). Counts the bytes asked of the allocator (dhat), not
//! its per-allocation overhead, which favours the decoded form's ~30 allocations per object.
//!
//! `cargo bench -p sovereign-operator --bench store_memory [-- --objects N]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench may panic
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
use std::sync::Arc;

use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use sovereign_crds::{ComputeInstance, Server, StorageVolume};
use sovereign_operator::packed::{Packable, Packed, PackedWorkload};
use sovereign_operator::workload_store::WorkloadStore;
use sovereign_tests::bench::arg;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn live() -> usize {
    dhat::HeapStats::get().curr_bytes
}

/// Bytes per object held, `n` objects made by `make`.
fn per_object<T>(n: usize, make: impl Fn(usize) -> T) -> f64 {
    let before = live();
    let held: Vec<Arc<T>> = (0..n).map(|i| Arc::new(make(i))).collect();
    let bytes = live() - before;
    drop(held);
    bytes as f64 / n as f64
}

/// Typical objects of a kind, each with its own name, uid and servers (what differs between
/// objects in a real fleet).
fn fleet<K: Packable>(i: usize) -> K {
    let mut v = K::samples().remove(0);
    v["metadata"]["name"] = format!("burst-{i}").into();
    v["metadata"]["uid"] = format!("{i:08x}-b6a4-4518-88f3-d0009ec9ee40").into();
    v["metadata"]["resourceVersion"] = (100_000 + i).to_string().into();
    if v["kind"] == "Server" {
        v["spec"]["rack"] = format!("site-r{}", i % 50).into();
        v["spec"]["nodeName"] = format!("site-node-{i}").into();
    }
    if let Some(rs) = v["status"]["replicas"].as_array_mut() {
        for (k, r) in rs.iter_mut().enumerate() {
            r["server"] = format!("site-r{}-s{}", i % 50, (i + k) % 20).into();
        }
    }
    serde_json::from_value(v).unwrap()
}

fn report<K: Packable>(n: usize) {
    let decoded = per_object(n, fleet::<K>);
    let packed = per_object(n, |i| Packed::pack(fleet::<K>(i)).unwrap());
    let json = serde_json::to_vec(&fleet::<K>(0)).unwrap().len();
    println!(
        "{:<16} decoded {decoded:>6.0} B/object, packed {packed:>6.0} B/object ({:.0} %); JSON {json} B",
        K::kind(&()),
        100.0 * packed / decoded
    );
}

/// Bytes per workload held in a store: kube-runtime's reflector (packed), and the operator's.
fn report_stores<K: PackedWorkload>(n: usize) {
    let before = live();
    let (store, mut writer) = reflector::store::<Packed<K>>();
    for i in 0..n {
        let mut p = Packed::pack(fleet::<K>(i)).unwrap();
        p.forget_version();
        writer.apply_watcher_event(&Event::Apply(p));
    }
    assert_eq!(store.len(), n);
    let reflected = (live() - before) as f64 / n as f64;
    drop((store, writer));
    let before = live();
    let store = WorkloadStore::listed((0..n).map(|i| Packed::pack(fleet::<K>(i)).unwrap()));
    assert_eq!(store.len(), n);
    let compact = (live() - before) as f64 / n as f64;
    drop(store);
    println!(
        "{:<16} in a store: reflector (packed) {reflected:>6.0} B/object, workload store (compact) {compact:>6.0} B/object ({:.0} %)",
        K::kind(&()),
        100.0 * compact / reflected
    );
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let n = arg("--objects", 10_000) as usize;
    report::<ComputeInstance>(n);
    report::<StorageVolume>(n);
    report::<Server>(n);
    report_stores::<ComputeInstance>(n);
    report_stores::<StorageVolume>(n);
}
