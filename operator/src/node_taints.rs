//! Nodes as the operator holds them: name, resourceVersion (the taint write's precondition) and
//! taints, decoded straight from the API's JSON. A decoded `Node` is ~1.2 KB before any of its
//! strings (an `ObjectMeta`, a `NodeSpec` and a `NodeStatus` inline), and a trimmed one kept
//! all of that: 5,000 of them held 9 MB the taint writer never read. They are held in a
//! [`NodeIndex`], not a reflector store: its `ObjectMeta` and key cost ~600 bytes a Node more.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt as _;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::Resource;
use kube::api::ObjectMeta;
use kube::core::ClusterResourceScope;
use serde::Deserialize;

/// What the taint writer reads of a Node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeTaints {
    meta: ObjectMeta,
    taints: Box<[Taint]>,
}

impl NodeTaints {
    /// The Node's taints (all of them, not only the operator's).
    pub fn taints(&self) -> &[Taint] {
        &self.taints
    }
}

impl Resource for NodeTaints {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Node::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Node::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Node::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Node::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// The fields read; serde skips the rest of the Node without building it.
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: WireMeta,
    #[serde(default)]
    spec: Option<WireSpec>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    resource_version: Option<String>,
}

#[derive(Deserialize)]
struct WireSpec {
    #[serde(default)]
    taints: Option<Vec<Taint>>,
}

impl<'de> Deserialize<'de> for NodeTaints {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        Ok(Self {
            meta: ObjectMeta {
                name: wire.metadata.name,
                resource_version: wire.metadata.resource_version,
                ..ObjectMeta::default()
            },
            taints: wire
                .spec
                .and_then(|s| s.taints)
                .unwrap_or_default()
                .into_boxed_slice(),
        })
    }
}

/// What the taint writer reads of one Node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeldNode {
    pub resource_version: Option<Box<str>>,
    pub taints: Box<[Taint]>,
}

impl From<NodeTaints> for (Box<str>, HeldNode) {
    fn from(n: NodeTaints) -> Self {
        let name = n.meta.name.unwrap_or_default().into_boxed_str();
        let held = HeldNode {
            resource_version: n.meta.resource_version.map(String::into_boxed_str),
            taints: n.taints,
        };
        (name, held)
    }
}

#[derive(Default)]
struct Nodes {
    by_name: HashMap<Box<str>, HeldNode>,
    /// A re-list in progress: the nodes listed so far.
    relist: Option<HashMap<Box<str>, HeldNode>>,
}

/// Every Node's taints and resourceVersion, by name, kept by a watch.
pub struct NodeIndex {
    nodes: Mutex<Nodes>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for NodeIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIndex")
            .field("nodes", &self.lock().by_name.len())
            .finish()
    }
}

impl Default for NodeIndex {
    fn default() -> Self {
        Self {
            nodes: Mutex::default(),
            ready: tokio::sync::watch::channel(false).0,
        }
    }
}

impl NodeIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, name: &str) -> Option<HeldNode> {
        self.lock().by_name.get(name).cloned()
    }

    /// Waits for the first complete list.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    pub fn apply(&self, event: watcher::Event<NodeTaints>) {
        let mut nodes = self.lock();
        match event {
            watcher::Event::Init => nodes.relist = Some(HashMap::new()),
            watcher::Event::InitApply(n) => {
                let (name, held) = n.into();
                nodes
                    .relist
                    .get_or_insert_with(HashMap::new)
                    .insert(name, held);
            }
            watcher::Event::InitDone => {
                nodes.by_name = nodes.relist.take().unwrap_or_default();
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(n) => {
                let (name, held) = n.into();
                nodes.by_name.insert(name, held);
            }
            watcher::Event::Delete(n) => {
                nodes
                    .by_name
                    .remove(n.meta.name.as_deref().unwrap_or_default());
            }
        }
    }

    /// Keeps the index from a watch of every Node (retried with backoff).
    pub fn watch(client: kube::Client) -> Arc<Self> {
        let index = Arc::new(Self::default());
        let keep = index.clone();
        tokio::spawn(async move {
            let stream = watcher(Api::<NodeTaints>::all(client), watcher::Config::default())
                .default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(e) => keep.apply(e),
                    Err(e) => tracing::warn!(error = %e, watch = "Node", "watch error; retrying"),
                }
            }
        });
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_follows_applies_deletions_and_relists() {
        let node = |name: &str, version: &str| -> NodeTaints {
            serde_json::from_value(serde_json::json!({"metadata": {"name": name,
                "resourceVersion": version}, "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}))
            .unwrap()
        };
        let index = NodeIndex::default();
        index.apply(watcher::Event::Init);
        index.apply(watcher::Event::InitApply(node("n1", "1")));
        assert!(index.get("n1").is_none(), "not before the list is complete");
        index.apply(watcher::Event::InitDone);
        assert_eq!(
            index.get("n1").unwrap().resource_version.as_deref(),
            Some("1")
        );
        assert_eq!(index.get("n1").unwrap().taints[0].key, "k");
        index.apply(watcher::Event::Apply(node("n1", "2")));
        assert_eq!(
            index.get("n1").unwrap().resource_version.as_deref(),
            Some("2")
        );
        index.apply(watcher::Event::Apply(node("n2", "3")));
        index.apply(watcher::Event::Delete(node("n2", "3")));
        assert!(index.get("n2").is_none());
        // n1 deleted while the watch was down: the re-list leaves it out.
        index.apply(watcher::Event::Init);
        index.apply(watcher::Event::InitApply(node("n3", "4")));
        index.apply(watcher::Event::InitDone);
        assert!(index.get("n1").is_none());
        assert!(index.get("n3").is_some());
    }

    #[test]
    fn keeps_name_version_and_every_taint_of_a_full_node() {
        let node = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "resourceVersion": "42", "uid": "u",
                "labels": {"kubernetes.io/hostname": "n1"},
                "managedFields": [{"manager": "kubelet"}]},
            "spec": {"podCIDR": "10.0.0.0/24", "taints": [
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
                 "timeAdded": "2026-11-29T10:00:00Z"},
                {"key": "sovereign.io/unschedulable", "value": "Stale", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}],
                "images": [{"names": ["a"], "sizeBytes": 1}]}
        });
        let n: NodeTaints = serde_json::from_value(node).unwrap();
        assert_eq!(n.meta().name.as_deref(), Some("n1"));
        assert_eq!(n.meta().resource_version.as_deref(), Some("42"));
        assert_eq!(n.meta().labels, None);
        let keys: Vec<_> = n.taints().iter().map(|t| t.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "node.kubernetes.io/unreachable",
                "sovereign.io/unschedulable"
            ]
        );
        assert_eq!(n.taints()[1].value.as_deref(), Some("Stale"));
        assert!(n.taints()[0].time_added.is_some());
    }

    #[test]
    fn a_node_without_spec_or_taints_has_none() {
        let n: NodeTaints =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n2"}})).unwrap();
        assert!(n.taints().is_empty());
        assert_eq!(NodeTaints::plural(&()), "nodes");
        assert_eq!(NodeTaints::url_path(&(), None), "/api/v1/nodes");
    }
}
