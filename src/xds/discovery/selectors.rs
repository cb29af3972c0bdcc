//! The mesh's `discoverySelectors`: which namespaces belong to it, judged once per model.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

/// Which namespaces `selectors` pick, worked out once per model rather than per object.
pub(super) struct Selected {
    /// `None` when there are no selectors: every namespace.
    picked: Option<HashSet<String>>,
    /// Every namespace known.
    known: HashSet<String>,
    /// Whether the selectors pick a namespace with no labels (one not known yet is judged
    /// as such, as before it is seen).
    unlabelled: bool,
}

impl Selected {
    pub(super) fn of(namespaces: &Store<Namespace>, selectors: &[LabelSelector]) -> Selected {
        if selectors.is_empty() {
            return Selected {
                picked: None,
                known: HashSet::new(),
                unlabelled: true,
            };
        }
        let all = namespaces.state();
        let picked = all
            .iter()
            .filter(|n| selectors.iter().any(|s| selector_matches(s, n.labels())))
            .map(|n| n.name_any())
            .collect();
        Selected {
            picked: Some(picked),
            known: all.iter().map(|n| n.name_any()).collect(),
            unlabelled: selectors.iter().any(|s| selector_matches(s, &BTreeMap::new())),
        }
    }

    /// Whether namespace `ns` is in the mesh.
    pub(super) fn contains(&self, ns: &str) -> bool {
        match &self.picked {
            None => true,
            Some(picked) => picked.contains(ns) || (self.unlabelled && !self.known.contains(ns)),
        }
    }
}

/// Why a label selector is not one Kubernetes would accept, if it is not: an unknown
/// operator, or values where the operator needs some or none. (Such a selector would match
/// nothing, and a mesh that matches nothing serves nothing.)
pub fn check_selector(s: &LabelSelector) -> Result<(), String> {
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let values = e.values.as_deref().unwrap_or_default();
        let problem = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => "needs at least one value",
            "Exists" | "DoesNotExist" if !values.is_empty() => "takes no values",
            "In" | "NotIn" | "Exists" | "DoesNotExist" => continue,
            _ => "is not an operator (In, NotIn, Exists, DoesNotExist)",
        };
        return Err(format!(
            "matchExpressions[{i}] ({}): operator {:?} {problem}",
            e.key, e.operator
        ));
    }
    Ok(())
}

/// Whether labels match a Kubernetes label selector.
pub fn selector_matches(s: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exact = s.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let exprs = s.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    exact && exprs
}
