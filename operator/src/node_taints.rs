//! Nodes as the operator holds them: name, resourceVersion (the taint write's precondition) and
//! taints, decoded straight from the API's JSON. A decoded `Node` is ~1.2 KB before any of its
//! strings (an `ObjectMeta`, a `NodeSpec` and a `NodeStatus` inline), and a trimmed one kept
//! all of that: 5,000 of them held 9 MB the taint writer never read.

use std::borrow::Cow;

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

#[cfg(test)]
mod tests {
    use super::*;

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
