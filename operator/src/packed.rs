//! Workloads and Servers held compressed in the operator's stores.
//!
//! A decoded ComputeInstance costs about 1.4 KB of heap in ~30 allocations (a 360-byte
//! `ObjectMeta`, every string its own allocation); tens of thousands of them were the largest
//! part of the operator's memory. A store holds each workload as its JSON compressed with LZ4
//! against a dictionary of typical objects of its kind (field names, condition reasons and
//! messages repeat from object to object), plus what fleet-wide scans read without decoding
//! (the kind's brief): name, namespace and where each replica is; a Server's
//! [`ServerFacts`]. A reconcile decodes the one object it works on. Workloads are held as
//! [`Compact`] (no `ObjectMeta`) by [`crate::workload_store`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use kube::api::ObjectMeta;
use serde::de::DeserializeOwned;
use sovereign_placement::from_crds::ServerFacts;

/// Where one replica of a workload is, as its status says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spot {
    pub index: u8,
    /// Server and site names are shared by every spot naming them ([`interned`]).
    pub server: Arc<str>,
    pub site: Arc<str>,
}

/// One shared copy of a server or site name: tens of thousands of replicas name a few
/// thousand servers. Names are kept for the process's life (bounded by the fleet's).
pub fn interned(name: &str) -> Arc<str> {
    static NAMES: OnceLock<Mutex<HashSet<Arc<str>>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(n) = names.get(name) {
        return n.clone();
    }
    let n: Arc<str> = name.into();
    names.insert(n.clone());
    n
}

/// A kind that can be held packed.
pub trait Packable:
    kube::Resource<DynamicType = ()>
    + serde::Serialize
    + DeserializeOwned
    + Clone
    + fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// What scans of the whole store read, kept decoded.
    type Brief: Clone + fmt::Debug + Send + Sync + 'static;
    fn brief(&self) -> Self::Brief;
    /// Typical objects of the kind: what compression matches new objects against.
    fn samples() -> Vec<serde_json::Value>;
    /// The kind's dictionary, built once from [`Packable::samples`].
    fn dictionary() -> &'static [u8];
}

/// A workload kind held packed: namespaced, its brief is where its replicas are.
pub trait PackedWorkload:
    Packable<Brief = Box<[Spot]>, Scope = kube::core::NamespaceResourceScope>
{
}

impl<K> PackedWorkload for K where
    K: Packable<Brief = Box<[Spot]>, Scope = kube::core::NamespaceResourceScope>
{
}

/// Builds a dictionary from typical objects, serialised as `K` serialises (its field order).
fn build_dictionary<K: Packable>() -> Vec<u8> {
    let mut dict = Vec::new();
    for sample in K::samples() {
        // A sample that does not decode is a bug in the samples; it only costs compression.
        if let Ok(k) = serde_json::from_value::<K>(sample)
            && let Ok(bytes) = serde_json::to_vec(&k)
        {
            dict.extend_from_slice(&bytes);
        }
    }
    dict
}

/// Why a packed object could not be unpacked (never expected: it was packed by this process).
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("decompressing a stored {kind}: {source}")]
    Decompress {
        kind: String,
        #[source]
        source: lz4_flex::block::DecompressError,
    },
    #[error("decoding a stored {kind}: {source}")]
    Decode {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Decodes a packed body of `K`.
fn unpack_body<K: Packable>(body: &[u8]) -> Result<K, PackError> {
    let kind = || K::kind(&()).into_owned();
    let json = lz4_flex::block::decompress_size_prepended_with_dict(body, K::dictionary())
        .map_err(|source| PackError::Decompress {
            kind: kind(),
            source,
        })?;
    serde_json::from_slice(&json).map_err(|source| PackError::Decode {
        kind: kind(),
        source,
    })
}

/// An object as a store holds it.
pub struct Packed<K: Packable> {
    /// Name and namespace (the store's key, what triggers read) and resourceVersion (where
    /// the watch resumes from).
    meta: ObjectMeta,
    brief: K::Brief,
    body: Box<[u8]>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Packable> Packed<K> {
    /// Packs an object (its managed fields and annotations dropped: no reader needs them, and
    /// `kubectl apply` keeps the whole last-applied object in an annotation).
    pub fn pack(mut k: K) -> Result<Self, serde_json::Error> {
        let meta = k.meta_mut();
        meta.managed_fields = None;
        meta.annotations = None;
        let json = serde_json::to_vec(&k)?;
        let body = lz4_flex::block::compress_prepend_size_with_dict(&json, K::dictionary());
        let meta = k.meta();
        Ok(Self {
            meta: ObjectMeta {
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                resource_version: meta.resource_version.clone(),
                ..ObjectMeta::default()
            },
            brief: k.brief(),
            body: body.into_boxed_slice(),
            kind: PhantomData,
        })
    }

    /// The object, decoded.
    pub fn unpack(&self) -> Result<K, PackError> {
        unpack_body::<K>(&self.body)
    }

    /// Forgets the resourceVersion once the watch has read it: the watch resumes from the
    /// version it tracks itself, and readers decode the object, whose body keeps it. One
    /// string less per object here and in the store's key.
    pub fn forget_version(&mut self) {
        self.meta.resource_version = None;
    }

    /// What scans read.
    pub fn brief(&self) -> &K::Brief {
        &self.brief
    }

    /// Bytes of compressed JSON held (for the memory bench).
    pub fn packed_len(&self) -> usize {
        self.body.len()
    }
}

impl<K: Packable<Brief = Box<[Spot]>>> Packed<K> {
    /// Where a workload's replicas are.
    pub fn spots(&self) -> &[Spot] {
        &self.brief
    }

    /// Only a name: what a store needs to remove the object it names.
    pub fn named(namespace: &str, name: &str) -> Self {
        Self {
            meta: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            brief: Box::default(),
            body: Box::default(),
            kind: PhantomData,
        }
    }
}

/// A workload as [`crate::workload_store`] holds it: its `namespace/name`, its packed JSON and
/// where its replicas are. No `ObjectMeta` (360 bytes even when only the name is set): a
/// [`Packed`] is built again when a reconcile needs one.
pub struct Compact<K: PackedWorkload> {
    /// `namespace/name`.
    id: Box<str>,
    body: Box<[u8]>,
    spots: Box<[Spot]>,
    kind: PhantomData<fn() -> K>,
}

impl<K: PackedWorkload> Compact<K> {
    pub fn new(packed: Packed<K>) -> Self {
        let meta = packed.meta;
        let id = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        );
        Self {
            id: id.into_boxed_str(),
            body: packed.body,
            spots: packed.brief,
            kind: PhantomData,
        }
    }

    /// `namespace/name`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn namespace(&self) -> &str {
        self.id.split_once('/').map_or("", |(ns, _)| ns)
    }

    pub fn name(&self) -> &str {
        self.id.split_once('/').map_or(&*self.id, |(_, n)| n)
    }

    pub fn spots(&self) -> &[Spot] {
        &self.spots
    }

    pub fn object_ref(&self) -> kube::runtime::reflector::ObjectRef<Packed<K>> {
        kube::runtime::reflector::ObjectRef::new(self.name()).within(self.namespace())
    }

    /// The ledger's name for it (`Kind/namespace/name`).
    pub fn consumer(&self) -> String {
        format!("{}/{}", K::kind(&()), self.id)
    }

    /// As the controllers read it.
    pub fn to_packed(&self) -> Packed<K> {
        Packed {
            brief: self.spots.clone(),
            body: self.body.clone(),
            ..Packed::named(self.namespace(), self.name())
        }
    }

    /// The object, decoded.
    pub fn unpack(&self) -> Result<K, PackError> {
        unpack_body::<K>(&self.body)
    }

    /// Bytes of compressed JSON held (for the memory bench).
    pub fn packed_len(&self) -> usize {
        self.body.len()
    }
}

impl<K: PackedWorkload> fmt::Debug for Compact<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compact")
            .field("kind", &K::kind(&()))
            .field("id", &self.id)
            .field("bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl<K: Packable> Clone for Packed<K> {
    fn clone(&self) -> Self {
        Self {
            meta: self.meta.clone(),
            brief: self.brief.clone(),
            body: self.body.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: Packable> fmt::Debug for Packed<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packed")
            .field("kind", &K::kind(&()))
            .field("namespace", &self.meta.namespace)
            .field("name", &self.meta.name)
            .field("bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl<K: Packable> kube::Resource for Packed<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// Decoded from the API as `K`, then packed (watches and lists deliver packed objects).
impl<'de, K: Packable> serde::Deserialize<'de> for Packed<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let k = K::deserialize(d)?;
        Self::pack(k).map_err(serde::de::Error::custom)
    }
}

fn dictionary_of<K: Packable>(cell: &'static OnceLock<Vec<u8>>) -> &'static [u8] {
    cell.get_or_init(build_dictionary::<K>)
}

impl Packable for sovereign_crds::ComputeInstance {
    type Brief = Box<[Spot]>;

    fn brief(&self) -> Box<[Spot]> {
        self.status
            .iter()
            .flat_map(|s| &s.replicas)
            .map(|r| Spot {
                index: r.index,
                server: interned(&r.server),
                site: interned(r.site.as_deref().unwrap_or_default()),
            })
            .collect()
    }

    fn samples() -> Vec<serde_json::Value> {
        super::packed_samples::instances()
    }

    fn dictionary() -> &'static [u8] {
        static DICT: OnceLock<Vec<u8>> = OnceLock::new();
        dictionary_of::<Self>(&DICT)
    }
}

impl Packable for sovereign_crds::StorageVolume {
    type Brief = Box<[Spot]>;

    fn brief(&self) -> Box<[Spot]> {
        self.status
            .iter()
            .flat_map(|s| &s.replicas)
            .map(|r| Spot {
                index: r.index,
                server: interned(&r.server),
                site: interned(&r.site),
            })
            .collect()
    }

    fn samples() -> Vec<serde_json::Value> {
        super::packed_samples::volumes()
    }

    fn dictionary() -> &'static [u8] {
        static DICT: OnceLock<Vec<u8>> = OnceLock::new();
        dictionary_of::<Self>(&DICT)
    }
}

/// A Server as the stores hold it.
pub type PackedServer = Packed<sovereign_crds::Server>;

/// Servers: the facts placement, the roll-ups and the triggers read stay decoded.
impl Packable for sovereign_crds::Server {
    type Brief = ServerFacts;

    fn brief(&self) -> ServerFacts {
        ServerFacts::of(self)
    }

    fn samples() -> Vec<serde_json::Value> {
        super::packed_samples::servers()
    }

    fn dictionary() -> &'static [u8] {
        static DICT: OnceLock<Vec<u8>> = OnceLock::new();
        dictionary_of::<Self>(&DICT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource as _;
    use sovereign_crds::{ComputeInstance, Server, StorageVolume};

    #[test]
    fn every_sample_decodes_and_round_trips_packed() {
        for s in ComputeInstance::samples() {
            let c: ComputeInstance = serde_json::from_value(s).unwrap();
            let p = Packed::pack(c.clone()).unwrap();
            assert_eq!(p.unpack().unwrap(), c);
            assert!(p.packed_len() < serde_json::to_vec(&c).unwrap().len() / 2);
        }
        for s in StorageVolume::samples() {
            let v: StorageVolume = serde_json::from_value(s).unwrap();
            let p = Packed::pack(v.clone()).unwrap();
            assert_eq!(p.unpack().unwrap(), v);
        }
        for s in Server::samples() {
            let v: Server = serde_json::from_value(s).unwrap();
            let p = Packed::pack(v.clone()).unwrap();
            assert_eq!(p.unpack().unwrap(), {
                let mut v = v.clone();
                v.metadata.annotations = None;
                v
            });
            assert_eq!(p.brief(), &ServerFacts::of(&v));
            assert!(p.packed_len() < serde_json::to_vec(&v).unwrap().len() / 2);
        }
    }

    #[test]
    fn replicas_on_one_server_share_its_name() {
        let c: ComputeInstance =
            serde_json::from_value(ComputeInstance::samples().remove(0)).unwrap();
        let (a, b) = (Packed::pack(c.clone()).unwrap(), Packed::pack(c).unwrap());
        assert!(!a.spots().is_empty());
        assert!(Arc::ptr_eq(&a.spots()[0].server, &b.spots()[0].server));
        assert!(Arc::ptr_eq(&a.spots()[0].site, &b.spots()[0].site));
    }

    #[test]
    fn packed_keeps_what_scans_read_and_drops_what_nobody_reads() {
        let mut c: ComputeInstance =
            serde_json::from_value(ComputeInstance::samples().remove(0)).unwrap();
        c.metadata.annotations = Some(
            [(
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "{}".to_owned(),
            )]
            .into(),
        );
        let p = Packed::pack(c.clone()).unwrap();
        assert_eq!(p.meta().name, c.metadata.name);
        assert_eq!(p.meta().namespace, c.metadata.namespace);
        assert_eq!(
            p.meta().resource_version,
            c.metadata.resource_version,
            "watches resume"
        );
        assert_eq!(p.meta().uid, None);
        let mut p = p;
        p.forget_version();
        assert_eq!(p.meta().resource_version, None);
        let back = p.unpack().unwrap();
        assert_eq!(back.metadata.annotations, None);
        assert_eq!(back.metadata.resource_version, c.metadata.resource_version);
        assert_eq!(p.spots(), &*c.brief());
        assert!(!p.spots().is_empty());
    }
}
