//! The mesh versions this operator can install, and the images each one runs.
//!
//! A table is built into the binary; a YAML file (`--versions-file`) adds versions or replaces
//! the images of built-in ones without a rebuild.

use std::cmp::Ordering;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One installable mesh version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshVersion {
    /// The version, as users write it in `spec.version`.
    pub version: SemVer,
    /// The images it runs.
    pub images: Images,
}

/// The images of one mesh version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Images {
    /// The control plane (`weft control-plane`).
    pub control_plane: String,
    /// The node proxy and gateways (Envoy).
    pub proxy: String,
}

/// A semantic version: `major.minor.patch`, optionally with a pre-release.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SemVer {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Patch version.
    pub patch: u64,
    /// Pre-release identifiers, such as `rc.1` (empty for a release).
    pub pre: String,
}

/// A version string that is not a semantic version.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a semantic version such as 1.2.3")]
pub struct BadVersion(pub String);

impl SemVer {
    /// Parses `1.2.3` or `1.2.3-rc.1`.
    pub fn parse(s: &str) -> Result<SemVer, BadVersion> {
        let bad = || BadVersion(s.to_string());
        let (core, pre) = match s.split_once('-') {
            Some((core, pre)) if !pre.is_empty() => (core, pre),
            Some(_) => return Err(bad()),
            None => (s, ""),
        };
        let mut parts = core.split('.').map(|p| {
            if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
                return Err(bad());
            }
            p.parse::<u64>().map_err(|_| bad())
        });
        let (major, minor, patch) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c), None) => (a?, b?, c?),
            _ => return Err(bad()),
        };
        Ok(SemVer {
            major,
            minor,
            patch,
            pre: pre.to_string(),
        })
    }

    /// The version as a DNS-label fragment: `1.2.3-rc.1` → `1-2-3-rc-1`.
    pub fn dashed(&self) -> String {
        self.to_string().replace('.', "-")
    }
}

impl fmt::Display for SemVer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        Ok(())
    }
}

impl Ord for SemVer {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            // A release sorts after its pre-releases.
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl PartialOrd for SemVer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl TryFrom<String> for SemVer {
    type Error = BadVersion;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        SemVer::parse(&s)
    }
}

impl From<SemVer> for String {
    fn from(v: SemVer) -> String {
        v.to_string()
    }
}

/// Errors loading a versions file.
#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    /// The file could not be read.
    #[error("cannot read versions file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a list of versions.
    #[error("versions file {path} is not a YAML list of {{version, images: {{controlPlane, proxy}}}}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
}

/// The versions the operator supports, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionTable {
    versions: Vec<MeshVersion>,
}

/// The image (without its tag) that runs both `weft operator` and `weft control-plane`.
pub const WEFT_IMAGE: &str = "ghcr.io/weft-dev/weft";
const PROXY_IMAGE: &str = "docker.io/envoyproxy/envoy";

/// The operator's own image: [`WEFT_IMAGE`] tagged with this build's version.
pub fn operator_image() -> String {
    format!("{WEFT_IMAGE}:{}", crate::VERSION)
}

/// A mirror every image is pulled from instead of its own registry: `host[:port][/path]`.
///
/// An image keeps its repository path under the mirror (`ghcr.io/weft-dev/weft:1.0.0` becomes
/// `<mirror>/weft-dev/weft:1.0.0`), the layout `skopeo sync` and registry proxies produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRegistry(String);

/// A registry setting that is not `host[:port][/path]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not an image registry: write host[:port][/path], such as registry.example.com:5000 or registry.example.com/mirror (no scheme, tag or digest)"
)]
pub struct BadRegistry(pub String);

impl ImageRegistry {
    /// Checks a registry setting; a trailing `/` is dropped.
    pub fn parse(s: &str) -> Result<ImageRegistry, BadRegistry> {
        let trimmed = s.trim_end_matches('/');
        let host = trimmed.split('/').next().unwrap_or_default();
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-:/".contains(c);
        let ok = !host.is_empty()
            && !trimmed.contains("//")
            && trimmed.chars().all(allowed)
            && !trimmed.split('/').skip(1).any(|segment| segment.contains(':'));
        if ok {
            Ok(ImageRegistry(trimmed.to_string()))
        } else {
            Err(BadRegistry(s.to_string()))
        }
    }

    /// The image's name in this mirror (unchanged if it already names the mirror, as images
    /// of a versions file written for the mirror do).
    pub fn mirror(&self, image: &str) -> String {
        match image.strip_prefix(self.0.as_str()) {
            Some(rest) if rest.starts_with('/') => image.to_string(),
            _ => format!("{}/{}", self.0, repository_path(image)),
        }
    }
}

impl fmt::Display for ImageRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An image's name without its registry, by the rule Docker uses: the first segment names a
/// registry when it has a `.` or `:` or is `localhost`; otherwise the image is on Docker Hub,
/// where a bare name lives under `library/`.
fn repository_path(image: &str) -> String {
    match image.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest.to_string(),
        Some(_) => image.to_string(),
        None => format!("library/{image}"),
    }
}

impl VersionTable {
    /// The table built into this binary.
    pub fn builtin() -> VersionTable {
        let v = |version: &str, envoy: &str| MeshVersion {
            version: SemVer::parse(version).expect("built-in versions are valid"),
            images: Images {
                control_plane: format!("{WEFT_IMAGE}:{version}"),
                proxy: format!("{PROXY_IMAGE}:{envoy}"),
            },
        };
        VersionTable::from_versions(vec![v("1.0.0", "v1.35.6"), v("1.1.0", "v1.36.2")])
    }

    /// A table of exactly these versions.
    pub fn from_versions(mut versions: Vec<MeshVersion>) -> VersionTable {
        versions.sort_by(|a, b| a.version.cmp(&b.version));
        versions.dedup_by(|later, earlier| later.version == earlier.version);
        VersionTable { versions }
    }

    /// The built-in table with the versions of a YAML file added (or replacing built-in ones).
    pub fn with_file(path: &Path) -> Result<VersionTable, VersionsError> {
        let text = std::fs::read_to_string(path).map_err(|source| VersionsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let extra: Vec<MeshVersion> = serde_saphyr::from_str(&text).map_err(|e| VersionsError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(VersionTable::builtin().merged(extra))
    }

    /// This table with `extra` added; an entry of `extra` replaces one of the same version.
    pub fn merged(&self, extra: Vec<MeshVersion>) -> VersionTable {
        let mut versions = extra;
        versions.extend(self.versions.iter().cloned());
        // Stable sort keeps `extra` first among equal versions; dedup keeps the first.
        versions.sort_by(|a, b| a.version.cmp(&b.version));
        versions.dedup_by(|later, earlier| later.version == earlier.version);
        VersionTable { versions }
    }

    /// This table with every image pulled from `registry` instead.
    pub fn mirrored(&self, registry: &ImageRegistry) -> VersionTable {
        let versions = self
            .versions
            .iter()
            .map(|v| MeshVersion {
                version: v.version.clone(),
                images: Images {
                    control_plane: registry.mirror(&v.images.control_plane),
                    proxy: registry.mirror(&v.images.proxy),
                },
            })
            .collect();
        VersionTable { versions }
    }

    /// Looks a version up by its string form.
    pub fn get(&self, version: &str) -> Option<&MeshVersion> {
        let wanted = SemVer::parse(version).ok()?;
        self.versions.iter().find(|v| v.version == wanted)
    }

    /// Every version, oldest first.
    pub fn all(&self) -> &[MeshVersion] {
        &self.versions
    }

    /// The supported versions as one comma-separated string (for error messages).
    pub fn list(&self) -> String {
        self.versions
            .iter()
            .map(|v| v.version.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_versions() {
        let mut vs: Vec<SemVer> = ["1.10.0", "1.2.0", "1.2.0-rc.1", "0.9.9"]
            .iter()
            .map(|s| SemVer::parse(s).unwrap())
            .collect();
        vs.sort();
        let shown: Vec<String> = vs.iter().map(|v| v.to_string()).collect();
        assert_eq!(shown, ["0.9.9", "1.2.0-rc.1", "1.2.0", "1.10.0"]);
        assert_eq!(SemVer::parse("1.2.3-rc.1").unwrap().dashed(), "1-2-3-rc-1");
    }

    #[test]
    fn rejects_what_is_not_semver() {
        for bad in ["1.0", "1.0.0.0", "v1.0.0", "01.0.0", "1.0.0-", "", "a.b.c"] {
            assert!(SemVer::parse(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn builtin_table_has_two_versions_oldest_first() {
        let t = VersionTable::builtin();
        let names: Vec<String> = t.all().iter().map(|v| v.version.to_string()).collect();
        assert_eq!(names, ["1.0.0", "1.1.0"]);
        assert!(t.get("1.1.0").is_some());
        assert!(t.get("9.9.9").is_none());
        assert!(t.get("nonsense").is_none());
    }

    #[test]
    fn a_file_adds_versions_and_overrides_images() {
        let dir = std::env::temp_dir().join(format!("weft-versions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("versions.yaml");
        std::fs::write(
            &file,
            "- version: 1.2.0\n  images: {controlPlane: example.org/cp:1.2.0, proxy: example.org/proxy:1}\n\
             - version: 1.0.0\n  images: {controlPlane: mirror.example/cp:1.0.0, proxy: mirror.example/proxy:1}\n",
        )
        .unwrap();
        let t = VersionTable::with_file(&file).unwrap();
        assert_eq!(t.list(), "1.0.0, 1.1.0, 1.2.0");
        assert_eq!(t.get("1.0.0").unwrap().images.control_plane, "mirror.example/cp:1.0.0");
        std::fs::write(&file, "version: nope").unwrap();
        let err = VersionTable::with_file(&file).unwrap_err().to_string();
        assert!(err.contains("is not a YAML list"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_mirror_keeps_each_repository_path() {
        let m = ImageRegistry::parse("registry.internal:5000/mirror/").unwrap();
        assert_eq!(m.to_string(), "registry.internal:5000/mirror");
        assert_eq!(
            m.mirror("ghcr.io/weft-dev/weft:1.0.0"),
            "registry.internal:5000/mirror/weft-dev/weft:1.0.0"
        );
        assert_eq!(
            m.mirror("docker.io/envoyproxy/envoy:v1"),
            "registry.internal:5000/mirror/envoyproxy/envoy:v1"
        );
        assert_eq!(
            m.mirror("localhost/a/b@sha256:00"),
            "registry.internal:5000/mirror/a/b@sha256:00"
        );
        // Docker Hub shorthand: the registry is implied.
        assert_eq!(
            m.mirror("envoyproxy/envoy:v1"),
            "registry.internal:5000/mirror/envoyproxy/envoy:v1"
        );
        assert_eq!(m.mirror("busybox"), "registry.internal:5000/mirror/library/busybox");
        // Mirroring a mirrored name again changes nothing.
        let once = m.mirror("ghcr.io/weft-dev/weft:1.0.0");
        assert_eq!(m.mirror(&once), once);
    }

    #[test]
    fn a_registry_setting_is_host_port_and_path_only() {
        for bad in [
            "",
            "/",
            "https://registry.example.com",
            "Registry.example.com",
            "r.example.com/a:1",
            "r.example.com//a",
            "r example",
        ] {
            assert!(ImageRegistry::parse(bad).is_err(), "{bad:?} was accepted");
        }
        for good in [
            "r.example.com",
            "r.example.com:5000",
            "localhost:5000/weft",
            "10.0.0.1:5000",
        ] {
            assert!(ImageRegistry::parse(good).is_ok(), "{good:?} was refused");
        }
    }

    #[test]
    fn a_mirrored_table_pulls_every_image_from_the_mirror() {
        let m = ImageRegistry::parse("mirror.example").unwrap();
        let t = VersionTable::builtin().mirrored(&m);
        assert_eq!(t.all().len(), VersionTable::builtin().all().len());
        for v in t.all() {
            assert!(
                v.images.control_plane.starts_with("mirror.example/weft-dev/weft:"),
                "{v:?}"
            );
            assert!(v.images.proxy.starts_with("mirror.example/envoyproxy/envoy:"), "{v:?}");
        }
    }
}
