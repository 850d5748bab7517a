//! Types shared by every Sovereign kind: conditions, quantities, jurisdictions, resource sets.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::quantity::{self, ParsedQuantity};

/// ISO 3166-1 alpha-2 codes (officially assigned), used to refuse made-up jurisdictions.
pub const ISO_3166_ALPHA2: &[&str] = &[
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// An ISO 3166-1 alpha-2 country code naming the jurisdiction whose law governs data at rest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Jurisdiction(pub String);

impl Jurisdiction {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the code is an officially assigned ISO 3166-1 alpha-2 code.
    pub fn is_assigned(&self) -> bool {
        ISO_3166_ALPHA2.binary_search(&self.0.as_str()).is_ok()
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Jurisdiction {
    fn schema_name() -> Cow<'static, str> {
        "Jurisdiction".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let list = ISO_3166_ALPHA2
            .iter()
            .map(|c| format!("'{c}'"))
            .collect::<Vec<_>>()
            .join(",");
        json_schema!({
            "type": "string",
            "description": "ISO 3166-1 alpha-2 country code, upper case (for example VN).",
            "pattern": "^[A-Z]{2}$",
            "minLength": 2,
            "maxLength": 2,
            "x-kubernetes-validations": [{
                "rule": format!("self in [{list}]"),
                "message": "must be an assigned ISO 3166-1 alpha-2 country code"
            }]
        })
    }
}

/// Regular expression for a non-negative Kubernetes quantity ("4", "500m", "64Gi", "1.5T").
pub const QUANTITY_PATTERN: &str = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// A Kubernetes resource quantity. Accepts an integer or a string on the wire, like core
/// Kubernetes does, and keeps the user's spelling so round trips do not rewrite specs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Quantity(pub String);

impl Quantity {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Parses the quantity into an exact value.
    pub fn parse(&self) -> Result<ParsedQuantity, quantity::QuantityError> {
        quantity::parse(&self.0)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Str(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Int(i) => Self(i.to_string()),
            Raw::Float(f) => Self(f.to_string()),
            Raw::Str(s) => Self(s),
        })
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The shape controller-gen emits for resource.Quantity: structural int-or-string.
        // `minimum` refuses negative integers (the pattern only sees strings).
        json_schema!({
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 0,
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": true
        })
    }
}

/// Status of a condition, as in every Kubernetes API.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// A condition in the standard Kubernetes shape (metav1.Condition).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of condition in CamelCase, for example Ready.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 316))]
    pub type_: String,
    /// Status of the condition: True, False or Unknown.
    pub status: ConditionStatus,
    /// The metadata.generation the condition was computed from; older means stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// Last time the condition changed from one status to another.
    pub last_transition_time: Time,
    /// Machine-readable CamelCase reason for the last transition.
    #[schemars(
        length(min = 1, max = 1024),
        pattern(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    )]
    pub reason: String,
    /// Human-readable message about the transition.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
}

/// Extension that makes a condition list a map keyed by type, so server-side apply merges
/// conditions owned by different controllers instead of replacing the list.
pub(crate) fn conditions_list_map(schema: &mut Schema) {
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
}

/// Appends a CEL rule to a schema's `x-kubernetes-validations`, keeping rules the type brought.
pub(crate) fn push_rule(schema: &mut Schema, rule: &str, message: &str) {
    let entry = serde_json::json!({"rule": rule, "message": message});
    match schema
        .get_mut("x-kubernetes-validations")
        .and_then(serde_json::Value::as_array_mut)
    {
        Some(rules) => rules.push(entry),
        None => {
            schema.insert(
                "x-kubernetes-validations".into(),
                serde_json::json!([entry]),
            );
        }
    }
}

/// CEL rule: a quantity (int or string) greater than zero. Malformed strings are left to the
/// pattern so the user sees one clear message, not a CEL evaluation error.
pub const POSITIVE_QUANTITY_RULE: &str =
    "!isQuantity(string(self)) || quantity(string(self)).isGreaterThan(quantity('0'))";

/// Schema transform for a ResourceSet whose quantities must each be greater than zero (a quota:
/// a zero quota is written by leaving the class out of the tenant's plan, not as 0).
pub(crate) fn positive_resources(schema: &mut Schema) {
    for (path, name) in [
        ("self.cpu", "cpu"),
        ("self.memory", "memory"),
        ("self.storage.nvme", "storage.nvme"),
        ("self.storage.ssd", "storage.ssd"),
        ("self.storage.hdd", "storage.hdd"),
    ] {
        let guard = if path.starts_with("self.storage.") {
            format!("!has(self.storage) || !has({path})")
        } else {
            format!("!has({path})")
        };
        let rule = format!(
            "{guard} || !isQuantity(string({path})) || quantity(string({path})).isGreaterThan(quantity('0'))"
        );
        push_rule(schema, &rule, &format!("{name} must be greater than zero"));
    }
}

/// Storage per media tier.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TieredStorage {
    /// NVMe flash capacity (bytes, e.g. 7680Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvme: Option<Quantity>,
    /// SATA/SAS SSD capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssd: Option<Quantity>,
    /// Spinning-disk capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdd: Option<Quantity>,
}

/// A set of schedulable resources: used for capacity, reservations, allocations and quotas.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSet {
    /// CPU in cores (e.g. 64, 500m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory in bytes (e.g. 512Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Whole GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1024))]
    pub gpus: Option<u32>,
    /// Storage per media tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<TieredStorage>,
}

/// Media tier of a volume or a drive.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum StorageTier {
    Nvme,
    Ssd,
    Hdd,
}

/// Failure domain that replicas must not share.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
pub enum Spread {
    #[default]
    Server,
    Rack,
    Site,
}

/// Overall health in Redfish terms; Unknown means no trustworthy reading.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Health {
    #[serde(rename = "OK")]
    Ok,
    Warning,
    Critical,
    #[default]
    Unknown,
}

/// Reference to a Secret in a named namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Namespace of the Secret (the operator's namespace for BMC credentials).
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: String,
}

/// Pattern for DNS-1123 labels (namespaces, short object names).
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Pattern for DNS-1123 subdomains (object names).
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
