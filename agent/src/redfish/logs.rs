//! System and manager event logs (SEL, IML, ...), paged, newest kept.

use std::sync::Arc;

use nv_redfish::ServiceRoot;
use nv_redfish::computer_system::ComputerSystem;
use nv_redfish::core::Bmc;
use serde_json::Value;

use super::{BmcSample, LogEvent, MAX_EVENTS_PER_LOG, Nav, fail, name_of, opt};

/// Whether a log service holds hardware events, by its type and the words of its Id and Name:
/// SEL and Event logs (`Sel`, `IML`, `IEL`, `EventLog`, `FaultLog`, GPU `XID`, Lenovo's
/// `PlatformLog`/`ActiveLog`, DMTF's `Log1`), never audit, security, journal, dump, debug,
/// diagnostic, maintenance, POST-code or lifecycle logs, whatever their type says.
fn is_event_log(id: &str, name: &str, entry_type: Option<&str>) -> bool {
    let w = crate::readings::words(&format!("{id} {name}"));
    let says = |any: &[&str]| w.iter().any(|x| any.contains(&x.as_str()));
    if says(&[
        "audit",
        "security",
        "journal",
        "dump",
        "debug",
        "diagnostic",
        "maintenance",
        "post",
        "fdr",
        "lclog",
        "token",
        "sa",
    ]) {
        return false;
    }
    matches!(entry_type, Some("Sel" | "Event"))
        || says(&[
            "sel", "iml", "iel", "event", "fault", "xid", "log", "platform", "active",
        ])
}

/// One page of a log's entries: members inline (most BMCs) or as links, and the next page.
#[derive(serde::Deserialize)]
pub(super) struct EntriesPage {
    #[serde(rename = "@odata.id")]
    id: nv_redfish::core::ODataId,
    #[serde(rename = "Members", default)]
    pub(super) members: Vec<Value>,
    #[serde(rename = "Members@odata.nextLink", default)]
    next: Option<String>,
}

impl nv_redfish::core::EntityTypeRef for EntriesPage {
    fn odata_id(&self) -> &nv_redfish::core::ODataId {
        &self.id
    }

    fn etag(&self) -> Option<&nv_redfish::core::ODataETag> {
        None
    }
}

/// Pages of entries read per log and poll: BMCs page at 50 (iDRAC) to 1,000 (bmcweb), oldest or
/// newest first, so the new entries can be on any page; bounded so a huge log cannot eat the
/// poll's deadline.
const MAX_PAGES: usize = 8;
/// Entries fetched one by one per log and poll when a BMC lists links only.
const MAX_LINKED: usize = 32;

/// Sort key putting newer entries last: creation time, then numeric Id.
pub(super) fn age_key(e: &nv_redfish::schema::log_entry::LogEntry) -> (String, u64, String) {
    (
        e.created
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        e.id.parse().unwrap_or(0),
        e.id.clone(),
    )
}

/// Reads a log's entries across pages: inline members parsed, link-only members fetched
/// (the newest [`MAX_LINKED`] by Id). Returns the entries and the errors met on the way.
async fn read_entries<B: Bmc + 'static>(
    bmc: &B,
    first: nv_redfish::core::ODataId,
) -> (
    Vec<Arc<nv_redfish::schema::log_entry::LogEntry>>,
    Vec<(String, B::Error)>,
) {
    use nv_redfish::schema::log_entry::LogEntry;
    let mut entries = Vec::new();
    let mut links: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    let mut next = Some(first);
    for _ in 0..MAX_PAGES {
        let Some(page_id) = next.take() else { break };
        let page = match bmc.get::<EntriesPage>(&page_id).await {
            Ok(p) => p,
            Err(e) => {
                errors.push(("Entries".to_owned(), e));
                break;
            }
        };
        for m in &page.members {
            if m.get("Id").is_some() {
                if let Ok(e) = serde_json::from_value::<LogEntry>(m.clone()) {
                    entries.push(Arc::new(e));
                }
            } else if let Some(link) = m.get("@odata.id").and_then(Value::as_str) {
                links.push(link.to_owned());
            }
        }
        next = page
            .next
            .clone()
            .filter(|n| *n != page_id.to_string())
            .map(nv_redfish::core::ODataId::from);
    }
    let last_number = |l: &String| -> u64 {
        l.rsplit('/')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or(0)
    };
    links.sort_by_key(last_number);
    let skip = links.len().saturating_sub(MAX_LINKED);
    for link in links.into_iter().skip(skip) {
        match bmc
            .get::<LogEntry>(&nv_redfish::core::ODataId::from(link))
            .await
        {
            Ok(e) => entries.push(e),
            Err(e) => errors.push(("Entries/member".to_owned(), e)),
        }
    }
    entries.sort_by_cached_key(|e| age_key(e));
    (entries, errors)
}

pub(super) async fn read_log<B: Bmc + 'static>(
    owner: &str,
    bmc: &B,
    log: &nv_redfish::log_service::LogService<B>,
    sample: &mut BmcSample,
) {
    use nv_redfish::core::EntityTypeRef as _;
    let raw = log.raw();
    let entry_type = raw
        .log_entry_type
        .as_ref()
        .and_then(Option::as_ref)
        .map(name_of);
    if !is_event_log(&raw.id, &raw.name, entry_type.as_deref()) {
        return;
    }
    let name = format!("{owner}/{}", raw.id);
    let Some(entries_ref) = &raw.entries else {
        return;
    };
    let (entries, errors) = read_entries(bmc, entries_ref.odata_id().clone()).await;
    for (section, e) in &errors {
        fail(sample, format!("{name}/{section}"), &Nav(e));
    }
    let skip = entries.len().saturating_sub(MAX_EVENTS_PER_LOG);
    for e in entries.iter().skip(skip) {
        sample.events.push(LogEvent {
            log: name.clone(),
            id: e.id.clone(),
            created: e.created.as_ref().map(ToString::to_string),
            severity: e.severity.as_ref().and_then(Option::as_ref).map(name_of),
            message: opt(e.message.as_ref()),
            message_id: e.message_id.clone(),
        });
    }
}

/// System event logs under Systems.
pub(super) async fn system_logs<B: Bmc + 'static>(
    members: &[ComputerSystem<B>],
    bmc: &B,
    sample: &mut BmcSample,
) {
    for system in members {
        let owner = format!("Systems/{}", system.raw().id);
        match system.log_services().await {
            Ok(logs) => {
                for log in logs.unwrap_or_default() {
                    read_log(&owner, bmc, &log, sample).await;
                }
            }
            Err(e) => fail(sample, format!("{owner}/LogServices"), &e),
        }
    }
}

/// System event logs under Managers (iDRAC, iLO and bmcweb keep the SEL there).
pub(super) async fn manager_logs<B: Bmc + 'static>(
    root: &ServiceRoot<B>,
    bmc: &B,
    sample: &mut BmcSample,
) {
    match root.managers().await {
        Ok(Some(managers)) => match managers.members().await {
            Ok(members) => {
                for manager in members {
                    let owner = format!("Managers/{}", manager.raw().id);
                    match manager.log_services().await {
                        Ok(logs) => {
                            for log in logs.unwrap_or_default() {
                                read_log(&owner, bmc, &log, sample).await;
                            }
                        }
                        Err(e) => fail(sample, format!("{owner}/LogServices"), &e),
                    }
                }
            }
            Err(e) => fail(sample, "Managers", &e),
        },
        Ok(None) => {}
        Err(e) => fail(sample, "Managers", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::is_event_log;

    #[test]
    fn event_logs_by_type_and_words() {
        // (Id, Name, LogEntryType) from the vendor captures, and whether they hold events.
        let cases = [
            ("Sel", "SEL Log Service", Some("Sel"), true),
            ("FaultList", "FaultListEntries", Some("Sel"), true),
            (
                "Lclog",
                "LifeCycle Controller Log Service",
                Some("Oem"),
                false,
            ),
            ("IML", "Integrated Management Log", None, true),
            ("IEL", "iLO Event Log", None, true),
            ("SL", "Security Log", None, false),
            ("AuditLog", "LogService", Some("Multiple"), false),
            ("DiagnosticLog", "LogService", Some("Multiple"), false),
            ("PlatformLog", "LogService", Some("Multiple"), true),
            ("SaLog", "LogService", Some("Multiple"), false),
            ("Journal", "Open BMC Journal Log Service", None, false),
            ("Dump", "Dump LogService", None, false),
            ("PostCodes", "POST Code Log Service", None, false),
            ("EventLog", "Event Log Service", None, true),
            ("XID", "XID Log Service", None, true),
            ("Logs", "IPMI Chassis Logs", Some("Sel"), true),
            ("LocalLog1", "Local Log", Some("Event"), true),
        ];
        for (id, name, kind, want) in cases {
            assert_eq!(is_event_log(id, name, kind), want, "{id} {name}");
        }
    }
}
