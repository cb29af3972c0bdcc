//! YAML output for `weft crd` and `weft render`.

use serde::Serialize;

/// An error turning an object into YAML.
#[derive(Debug, thiserror::Error)]
#[error("cannot write YAML: {0}")]
pub struct YamlError(String);

/// Serialises one object as a YAML document that starts with `---`.
pub fn document<T: Serialize>(value: &T) -> Result<String, YamlError> {
    // Through serde_json first, so maps keep the order the Kubernetes types give them and
    // `None` fields are dropped exactly as the API server would see them.
    let json = serde_json::to_value(value).map_err(|e| YamlError(e.to_string()))?;
    let body = serde_saphyr::to_string(&json).map_err(|e| YamlError(e.to_string()))?;
    Ok(format!("---\n{body}"))
}
