//! Heap bytes per workload and Server as the operator's stores hold them: decoded, and packed (see
//! `sovereign_operator::packed`). Counts the bytes asked of the allocator (dhat), not its
//! per-allocation overhead, which favours the decoded form's ~30 allocations per object.
//!
//! `cargo bench -p sovereign-operator --bench store_memory [-- --objects N]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench may panic
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
use std::sync::Arc;

use sovereign_crds::{ComputeInstance, Server, StorageVolume};
use sovereign_operator::packed::{Packable, Packed};
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

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let n = arg("--objects", 10_000) as usize;
    report::<ComputeInstance>(n);
    report::<StorageVolume>(n);
    report::<Server>(n);
}
