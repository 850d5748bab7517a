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

async fn list<K>(client: &kube::Client) -> Result<Vec<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Api {
            context: format!("list {kind}"),
            source,
        })?
        .items)
}

/// Counts the Sovereign objects in the cluster.
pub async fn summarise(client: &kube::Client) -> Result<Summary, Error> {
    let servers: Vec<Server> = list(client).await?;
    Ok(Summary {
        sites: list::<Site>(client).await?.len(),
        racks: list::<Rack>(client).await?.len(),
        servers_in_maintenance: servers.iter().filter(|s| s.spec.maintenance).count(),
        servers: servers.len(),
        tenants: list::<Tenant>(client).await?.len(),
        volumes: list::<StorageVolume>(client).await?.len(),
        instances: list::<ComputeInstance>(client).await?.len(),
    })
}
