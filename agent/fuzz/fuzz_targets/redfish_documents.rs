//! Any bytes, as any kind of Redfish document the collector reads: repaired and decoded, must
//! give a value or an error, never a panic. Run: `cd agent && cargo fuzz run redfish_documents`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sovereign_agent::redfish::{DocumentKind, parse_document};

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, body)) = data.split_first() {
        let kind = DocumentKind::ALL[usize::from(selector) % DocumentKind::ALL.len()];
        let _ = parse_document(kind, body);
    }
});
