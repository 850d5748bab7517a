//! A one-screen summary of the Sovereign objects in a cluster.

use kube::Resource;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;
use sovereign_crds::{ComputeInstance, Rack, Server, Site, StorageVolume, Tenant};

use crate::Error;

/// How many objects of each kind exist, and how many servers are in maintenance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub sites: usize,
    pub racks: usize,
    pub servers: usize,
    pub servers_in_maintenance: usize,
    pub tenants: usize,
    pub volumes: usize,
    pub instances: usize,
}

/// Counts the objects of `K`, and those of them that `keep` accepts, a page at a time: a summary of a large fleet
/// never holds the whole fleet (the allocator would keep that peak for the process's life).
async fn count<K>(client: &kube::Client, keep: impl Fn(&K) -> bool) -> Result<(usize, usize), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let mut params = ListParams::default().limit(PAGE);
    let (mut n, mut kept) = (0, 0);
    // Bounded: the API server ends the continuation; the cap only guards a misbehaving one.
    for _ in 0..MAX_PAGES {
        let page = api.list(&params).await.map_err(|source| Error::Api {
            context: format!("list {}", K::kind(&K::DynamicType::default())),
            source,
        })?;
        n += page.items.len();
        kept += page.items.iter().filter(|o| keep(o)).count();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok((n, kept))
}

fn all<K>(_: &K) -> bool {
    true
}

const PAGE: u32 = 250;
const MAX_PAGES: usize = 100_000;

/// Counts the Sovereign objects in the cluster.
pub async fn summarise(client: &kube::Client) -> Result<Summary, Error> {
    let (servers, servers_in_maintenance) = count::<Server>(client, |s| s.spec.maintenance).await?;
    Ok(Summary {
        sites: count::<Site>(client, all).await?.0,
        racks: count::<Rack>(client, all).await?.0,
        servers,
        servers_in_maintenance,
        tenants: count::<Tenant>(client, all).await?.0,
        volumes: count::<StorageVolume>(client, all).await?.0,
        instances: count::<ComputeInstance>(client, all).await?.0,
    })
}
