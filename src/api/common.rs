//! Types shared by the three kinds: autoscaling, disruption budgets, conditions.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Horizontal pod autoscaling on CPU utilisation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not be greater than autoscaling.maxReplicas"))]
pub struct Autoscaling {
    /// Whether a HorizontalPodAutoscaler scales the workload. When enabled, `replicas` is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The fewest replicas the autoscaler keeps (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_replicas: Option<i32>,
    /// The most replicas the autoscaler may create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<i32>,
    /// The average CPU utilisation, in percent of requests, that the autoscaler aims for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    #[serde(rename = "targetCPUUtilizationPercentage")]
    pub target_cpu_utilization_percentage: Option<i32>,
}

/// A PodDisruptionBudget: set at most one of `minAvailable` and `maxUnavailable`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.minAvailable) && has(self.maxUnavailable))").message("podDisruptionBudget: set at most one of minAvailable and maxUnavailable"))]
pub struct DisruptionBudget {
    /// Whether to create the budget. Unset: created when more than one replica is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How many pods (a number or a percentage) must stay available during voluntary disruptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(cel::COUNT_OR_PERCENT).message("podDisruptionBudget.minAvailable must be a number of pods (0 or more) or a percentage from 0% to 100%, such as 1 or 50%"))]
    pub min_available: Option<IntOrString>,
    /// How many pods (a number or a percentage) may be unavailable during voluntary disruptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(cel::COUNT_OR_PERCENT).message("podDisruptionBudget.maxUnavailable must be a number of pods (0 or more) or a percentage from 0% to 100%, such as 1 or 25%"))]
    pub max_unavailable: Option<IntOrString>,
}

/// Condition types every kind reports (kstatus-compatible).
pub mod condition {
    /// True only when everything the object owns is healthy.
    pub const READY: &str = "Ready";
    /// True while a rollout, promotion or prune is under way.
    pub const RECONCILING: &str = "Reconciling";
    /// True for errors that will not fix themselves.
    pub const STALLED: &str = "Stalled";
}

/// Why an object is `Stalled`: errors that will not fix themselves. The one place these
/// reasons become the API's strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StallReason {
    /// The spec names a mesh version this operator cannot install.
    UnsupportedVersion,
    /// The spec is inconsistent in a way admission could not catch.
    InvalidSpec,
    /// An object could not be encoded (a bug, not a user error).
    RenderFailed,
    /// A tag or revision name is already used by an older MeshInstall.
    NameConflict,
    /// A new revision did not become Ready within its progress deadline.
    RevisionFailed,
    /// The API server refused an object rendered from the spec (nothing was applied).
    Rejected,
    /// A revision tag is pinned to a revision this MeshInstall does not have.
    TagTargetNotFound,
    /// A RemoteCluster's kubeconfig is missing, refused before use, or refused by its API
    /// server.
    InvalidCredentials,
    /// A RemoteCluster's credential lacks permissions discovery needs.
    Forbidden,
    /// The plug-in CA Secret cannot sign: a key is missing, does not match, is not a CA,
    /// has expired, or its chain does not end at `root-cert.pem`.
    InvalidCa,
}

impl StallReason {
    /// The condition reason, as written in status and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            StallReason::UnsupportedVersion => "UnsupportedVersion",
            StallReason::InvalidSpec => "InvalidSpec",
            StallReason::RenderFailed => "RenderFailed",
            StallReason::NameConflict => "NameConflict",
            StallReason::RevisionFailed => "RevisionFailed",
            StallReason::Rejected => "Rejected",
            StallReason::TagTargetNotFound => "TagTargetNotFound",
            StallReason::InvalidCredentials => "InvalidCredentials",
            StallReason::Forbidden => "Forbidden",
            StallReason::InvalidCa => "InvalidCA",
        }
    }
}

impl std::fmt::Display for StallReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The regular expression a DNS label (RFC 1123) matches.
pub const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Admission rules (CEL) shared by the kinds. Each is a constant so that the same rule, and
/// the same message, guards every field of its kind.
pub mod cel {
    /// Every request and limit of a `resources` block is a quantity, and not negative.
    pub const QUANTITIES: &str = "(!has(self.requests) || self.requests.all(k, isQuantity(string(self.requests[k])) && !string(self.requests[k]).startsWith('-'))) && (!has(self.limits) || self.limits.all(k, isQuantity(string(self.limits[k])) && !string(self.limits[k]).startsWith('-')))";
    /// What a person reads when `QUANTITIES` fails.
    pub const QUANTITIES_MESSAGE: &str =
        "resources: every request and limit must be a quantity of 0 or more, such as 250m, 1, 128Mi or 1Gi";
    /// No request is greater than its limit.
    pub const REQUEST_LE_LIMIT: &str = "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || !isQuantity(string(self.requests[k])) || !isQuantity(string(self.limits[k])) || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)";
    /// What a person reads when `REQUEST_LE_LIMIT` fails.
    pub const REQUEST_LE_LIMIT_MESSAGE: &str = "resources: a request must not be greater than its limit (for example requests.cpu 2 with limits.cpu 1); raise the limit or lower the request";
    /// A pod count or a percentage from 0 % to 100 %.
    pub const COUNT_OR_PERCENT: &str = "type(self) == int ? self >= 0 : self.matches('^(100|[1-9]?[0-9])%$')";
    /// Label keys (and annotation keys, which have the same syntax): an optional DNS-subdomain
    /// prefix and `/`, then a name of at most 63 characters.
    pub const KEYS: &str = "self.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$') && k.indexOf('/') <= 253)";
    /// How a label or annotation key looks, for messages.
    pub const KEY_SYNTAX: &str = "an optional DNS-subdomain prefix and '/' (such as example.com/), then a name of at most 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit";
    /// Label values: at most 63 characters, empty or starting and ending alphanumeric.
    pub const LABEL_VALUES: &str = "self.all(k, self[k].matches('^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$'))";
    /// Label selectors: only the four operators, values exactly where they belong, valid
    /// keys and values.
    pub const SELECTOR_OPERATORS: &str = "self.all(s, !has(s.matchExpressions) || s.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist']))";
    /// In and NotIn need values.
    pub const SELECTOR_VALUES_PRESENT: &str = "self.all(s, !has(s.matchExpressions) || s.matchExpressions.all(e, !(e.operator in ['In', 'NotIn']) || (has(e.values) && size(e.values) > 0)))";
    /// Exists and DoesNotExist take none.
    pub const SELECTOR_VALUES_ABSENT: &str = "self.all(s, !has(s.matchExpressions) || s.matchExpressions.all(e, !(e.operator in ['Exists', 'DoesNotExist']) || !has(e.values) || size(e.values) == 0))";
    /// Keys of `matchLabels` and `matchExpressions` are label keys, values label values.
    pub const SELECTOR_LABELS: &str = "self.all(s, (!has(s.matchLabels) || s.matchLabels.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$') && s.matchLabels[k].matches('^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$'))) && (!has(s.matchExpressions) || s.matchExpressions.all(e, e.key.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$') && (!has(e.values) || e.values.all(v, v.matches('^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$'))))))";
    /// Tolerations: only the operators and effects Kubernetes knows.
    pub const TOLERATION_OPERATORS: &str = "self.all(t, (!has(t.operator) || t.operator in ['Exists', 'Equal']) && (!has(t.effect) || t.effect in ['', 'NoSchedule', 'PreferNoSchedule', 'NoExecute']))";
    /// What a person reads when `TOLERATION_OPERATORS` fails.
    pub const TOLERATION_OPERATORS_MESSAGE: &str =
        "tolerations: operator must be Exists or Equal, and effect NoSchedule, PreferNoSchedule or NoExecute";
    /// Tolerations: `Exists` takes no value, and no key means `Exists` (tolerate everything).
    pub const TOLERATION_VALUES: &str = "self.all(t, has(t.operator) && t.operator == 'Exists' ? (!has(t.value) || t.value == '') : (has(t.key) && t.key != ''))";
    /// What a person reads when `TOLERATION_VALUES` fails.
    pub const TOLERATION_VALUES_MESSAGE: &str =
        "tolerations: a toleration with operator Exists takes no value, and one without a key must use operator Exists";
    /// Tolerations: `tolerationSeconds` only with `NoExecute`.
    pub const TOLERATION_SECONDS: &str =
        "self.all(t, !has(t.tolerationSeconds) || (has(t.effect) && t.effect == 'NoExecute'))";
    /// What a person reads when `TOLERATION_SECONDS` fails.
    pub const TOLERATION_SECONDS_MESSAGE: &str = "tolerations: tolerationSeconds applies to effect NoExecute only";
    /// An image reference: no whitespace (the API server refuses a container image with any).
    pub const IMAGE: &str = "self.matches('^\\\\S+$')";
    /// What a person reads when `IMAGE` fails.
    pub const IMAGE_MESSAGE: &str =
        "image must be an image reference without spaces, such as registry.example.com/weft/weft:1.0.0";
    /// `host:port`: a lower-case DNS name or IPv4 address, or a bracketed IPv6 address, and
    /// a port from 1 to 65535.
    pub const HOST_PORT: &str = "self.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*|\\\\[[0-9a-fA-F:.]+\\\\]):[0-9]{1,5}$') && int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535";
    /// A DNS subdomain (names of PriorityClasses and the like).
    pub const DNS_SUBDOMAIN: &str =
        "size(self) <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
}

/// Size bounds on schemas of Kubernetes types we embed. The API server estimates the cost
/// of every CEL rule from the largest input the schema allows; without bounds on these maps,
/// lists and strings the rules above would be refused as too expensive. Each bound is far
/// above what a real spec holds.
pub mod bounds {
    use schemars::Schema;
    use serde_json::{Value, json};

    /// Sets `key: value` on the node reached by `path` (keys such as `properties`, `items`),
    /// looking through the `anyOf` an optional field may be wrapped in.
    fn set(schema: &mut Value, path: &[&str], key: &str, value: Value) {
        let Some(node) = walk(schema, path) else { return };
        if let Some(obj) = node.as_object_mut() {
            obj.insert(key.to_string(), value);
        }
    }

    /// Runs `f` on the schema as JSON; a result that is no longer a schema leaves it as it was.
    fn edit(schema: &mut Schema, f: impl FnOnce(&mut Value)) {
        let mut value = schema.as_value().clone();
        f(&mut value);
        if let Ok(edited) = Schema::try_from(value) {
            *schema = edited;
        }
    }

    fn walk<'a>(node: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
        let Some((first, rest)) = path.split_first() else {
            return Some(node);
        };
        if node.get(*first).is_none() {
            // An optional field may be `anyOf: [T, null]` before kube flattens it.
            let inner = node
                .get_mut("anyOf")?
                .as_array_mut()?
                .iter_mut()
                .find(|s| s.get(*first).is_some())?;
            return walk(inner, path);
        }
        walk(node.get_mut(*first)?, rest)
    }

    /// `requests` and `limits`: at most 16 resources, each quantity at most 64 characters.
    pub fn resources(schema: &mut Schema) {
        edit(schema, |value| {
            for map in ["requests", "limits"] {
                set(value, &["properties", map], "maxProperties", json!(16));
                set(
                    value,
                    &["properties", map, "additionalProperties"],
                    "maxLength",
                    json!(64),
                );
            }
            set(value, &["properties", "claims"], "maxItems", json!(16));
        });
    }

    /// A label map (node selectors): at most 64 labels, values at most 63 characters.
    pub fn labels(schema: &mut Schema) {
        edit(schema, |value| {
            set(value, &[], "maxProperties", json!(64));
            set(value, &["additionalProperties"], "maxLength", json!(63));
        });
    }

    /// Tolerations: at most 32, with strings as long as Kubernetes allows.
    pub fn tolerations(schema: &mut Schema) {
        edit(schema, |value| {
            set(value, &[], "maxItems", json!(32));
            for (field, max) in [("key", 317), ("operator", 16), ("value", 63), ("effect", 32)] {
                set(value, &["items", "properties", field], "maxLength", json!(max));
            }
        });
    }

    /// A list of label selectors: at most 32 labels and 16 requirements each, 32 values per
    /// requirement, keys and values as long as Kubernetes allows.
    pub fn selectors(schema: &mut Schema) {
        edit(schema, selectors_json);
    }

    fn selectors_json(value: &mut Value) {
        let sel = ["items", "properties"];
        let expr = [&sel[..], &["matchExpressions", "items", "properties"]].concat();
        set(
            value,
            &[&sel[..], &["matchLabels"]].concat(),
            "maxProperties",
            json!(32),
        );
        set(
            value,
            &[&sel[..], &["matchLabels", "additionalProperties"]].concat(),
            "maxLength",
            json!(63),
        );
        set(
            value,
            &[&sel[..], &["matchExpressions"]].concat(),
            "maxItems",
            json!(16),
        );
        set(value, &[&expr[..], &["key"]].concat(), "maxLength", json!(317));
        set(value, &[&expr[..], &["operator"]].concat(), "maxLength", json!(16));
        set(value, &[&expr[..], &["values"]].concat(), "maxItems", json!(32));
        set(
            value,
            &[&expr[..], &["values", "items"]].concat(),
            "maxLength",
            json!(63),
        );
    }
}

/// The schema of a string enum: the Kubernetes-style (CamelCase) values first, then the
/// spellings an earlier version used, still accepted and read as the same values (see the
/// README's note on enum spellings).
pub fn string_enum(values: &[&str]) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": values})
}

/// Implements `JsonSchema` for a string enum with these values (canonical, then legacy).
macro_rules! string_enum_schema {
    ($t:ty, $name:literal, [$($v:literal),* $(,)?]) => {
        impl schemars::JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                $crate::api::common::string_enum(&[$($v),*])
            }
        }
    };
}
pub(crate) use string_enum_schema;
