//! One stream's subscription to one resource type, for both ADS variants (modelled on
//! go-control-plane's `stream/v3` `Subscription`). Plain and synchronous: it answers what a
//! request changes and what a snapshot's [`TypeSet`] owes the stream, and records what was
//! sent; the server's stream loop only does the I/O around it.
//!
//! State of the world: each request replaces the names (or the wildcard); the stream is
//! owed a response when the version of its view differs from the version last sent. A
//! NACK does not change that version, so the rejected content is not sent again.
//!
//! Delta: requests add and remove names (`*` is the wildcard); the stream is owed the
//! resources whose version differs from what the client holds, the names of those it holds
//! that no longer exist, and, once, the subscribed names that never existed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::snapshot::{TypeSet, wildcard_type};
use crate::xds::translate::encoded::Encoded;

/// The name that stands for "every resource" in a subscription.
const WILDCARD: &str = "*";

/// What one stream subscribed to for one type, and what it was sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Whether the type admits wildcard subscriptions when a request names nothing.
    wildcard_type: bool,
    /// Every resource of the type, whether named or not.
    wildcard: bool,
    /// Resources subscribed to by name.
    names: BTreeSet<String>,
    /// Nonce of the last response.
    nonce: String,
    /// State of the world: the version of the content last sent (none before the first).
    sent_version: Option<String>,
    /// Delta: whether the first request was seen.
    started: bool,
    /// Delta: what the client holds.
    held: Held,
    /// Delta: subscribed names already reported as absent.
    told_missing: BTreeSet<String>,
    /// The snapshot last checked for what it owes, while the subscription stays as it was
    /// then: until either changes, nothing new is owed (every ACK would otherwise check
    /// again).
    checked_at: Option<u64>,
    /// State of the world: a hash of the names last requested, so a request repeating them
    /// (every ACK does) leaves them as they are.
    requested: u64,
}

/// Delta: what the client holds.
#[derive(Clone, Debug, Default)]
struct Held {
    /// Exactly this set's resources (`versions` is then empty): what a wildcard stream
    /// holds once it is caught up, one shared reference instead of every name per stream.
    set: Option<Arc<TypeSet>>,
    /// Otherwise, name → version.
    versions: BTreeMap<String, String>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Held) -> bool {
        let same_set = match (&self.set, &other.set) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        same_set && self.versions == other.versions
    }
}

impl Eq for Held {}

impl Held {
    /// The version the client holds of `name`.
    fn version(&self, name: &str) -> Option<&String> {
        match &self.set {
            Some(set) => set.items.get(name).map(|e| &e.version),
            None => self.versions.get(name),
        }
    }

    /// Every name and version held, to change them one by one.
    fn versions(&mut self) -> &mut BTreeMap<String, String> {
        if let Some(set) = self.set.take() {
            self.versions = set.items.iter().map(|(n, e)| (n.clone(), e.version.clone())).collect();
        }
        &mut self.versions
    }

    /// The names held that `set` does not have.
    fn removed_from(&self, set: &TypeSet) -> Vec<String> {
        let gone = |n: &&String| !set.items.contains_key(*n);
        match &self.set {
            Some(held) => held.items.keys().filter(gone).cloned().collect(),
            None => self.versions.keys().filter(gone).cloned().collect(),
        }
    }
}

/// Whether a state-of-the-world request answers the stream's latest response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// A first request, or one answering the latest response: it was applied.
    Current,
    /// It answers an older response (the newer one is still on its way): ignored.
    Stale,
}

/// A state-of-the-world response the stream is owed.
#[derive(Clone, Debug, PartialEq)]
pub struct SotwOwed<'a> {
    /// The version of the content (`version_info`).
    pub version: String,
    /// What it carries.
    pub resources: SotwResources<'a>,
}

/// The resources of a state-of-the-world response.
#[derive(Clone, Debug, PartialEq)]
pub enum SotwResources<'a> {
    /// Every resource of the set: its shared encoding ([`TypeSet::all_sotw`]).
    Shared(Bytes),
    /// The subscribed resources that exist, encoded for this stream.
    Named(Vec<&'a Encoded>),
}

/// A delta response the stream is owed.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaOwed<'a> {
    /// New or changed resources in scope, by name.
    pub changed: Vec<(&'a str, &'a Encoded)>,
    /// Resources the client holds that no longer exist.
    pub removed: Vec<String>,
    /// Subscribed names that do not exist and were not reported yet.
    pub unknown: Vec<String>,
    /// Whether `changed` is the whole set, so the set's shared encoding
    /// ([`TypeSet::all_delta`]) can be sent instead.
    pub whole_set: bool,
}

impl DeltaOwed<'_> {
    /// Every name the response reports removed: the removed ones, then the unknown ones.
    pub fn removed_resources(&self) -> Vec<String> {
        self.removed.iter().chain(&self.unknown).cloned().collect()
    }
}

impl Subscription {
    /// A subscription to `type_url` before its first request.
    pub fn new(type_url: &str) -> Subscription {
        Subscription {
            wildcard_type: wildcard_type(type_url),
            ..Default::default()
        }
    }

    /// Whether it covers every resource of the type.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The resources subscribed to by name.
    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }

    /// The nonce of the last response ("" before the first).
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// State of the world: applies a request naming `names` that answers `response_nonce`
    /// ("" for none). Names nothing or `*`: a wildcard, where the type allows one.
    pub fn sotw_request(&mut self, names: &[String], response_nonce: &str) -> Freshness {
        if !response_nonce.is_empty() && response_nonce != self.nonce {
            return Freshness::Stale;
        }
        let requested = names_hash(names);
        if self.nonce.is_empty() || requested != self.requested {
            self.requested = requested;
            self.wildcard = self.wildcard_type && (names.is_empty() || names.iter().any(|n| n == WILDCARD));
            self.names = names.iter().filter(|n| *n != WILDCARD).cloned().collect();
            self.checked_at = None;
        }
        Freshness::Current
    }

    /// State of the world: the response `set` owes the stream, if its view's version
    /// differs from the one last sent.
    pub fn sotw_owed<'a>(&self, set: &'a TypeSet) -> Option<SotwOwed<'a>> {
        if self.wildcard {
            let version = &set.wildcard_version;
            if self.sent_version.as_ref() == Some(version) {
                return None;
            }
            return Some(SotwOwed {
                version: version.clone(),
                resources: SotwResources::Shared(set.all_sotw()),
            });
        }
        // Each name is looked up once: for the version and for the response.
        let found: Vec<Option<&Encoded>> = self.names.iter().map(|n| set.items.get(n)).collect();
        let version = named_version(self.requested, &found);
        if self.sent_version.as_deref() == Some(version.as_str()) {
            return None;
        }
        Some(SotwOwed {
            version,
            resources: SotwResources::Named(found.into_iter().flatten().collect()),
        })
    }

    /// State of the world: records `owed` as sent with `nonce`.
    pub fn sotw_sent(&mut self, owed: &SotwOwed<'_>, nonce: &str) {
        self.sent_version = Some(owed.version.clone());
        self.nonce = nonce.to_string();
    }

    /// Delta: applies a request. The first one sets the wildcard (when it subscribes to
    /// nothing and the type allows one) and what the client already holds.
    pub fn delta_request(
        &mut self,
        subscribe: &[String],
        unsubscribe: &[String],
        initial_versions: &HashMap<String, String>,
    ) {
        if !self.started {
            self.started = true;
            self.wildcard = self.wildcard_type && subscribe.is_empty();
            self.held = Held {
                set: None,
                versions: initial_versions.clone().into_iter().collect(),
            };
        }
        if !subscribe.is_empty() || !unsubscribe.is_empty() {
            self.checked_at = None;
        }
        for name in subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
            }
        }
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(name);
            }
            if self.held.version(name).is_some() {
                self.held.versions().remove(name);
            }
            self.told_missing.remove(name);
        }
    }

    /// Delta: what `set` owes the stream since the client last heard, if anything.
    pub fn delta_owed<'a>(&self, set: &'a Arc<TypeSet>) -> Option<DeltaOwed<'a>> {
        let all = &set.items;
        let stale = |(n, e): &(&'a String, &'a Encoded)| self.held.version(n) != Some(&e.version);
        let (changed, removed) = match (&self.held.set, self.wildcard) {
            // Caught up with this very set: only unknown names can be owed.
            (Some(held), _) if Arc::ptr_eq(held, set) => (Vec::new(), Vec::new()),
            (Some(held), true) => diff(held, set),
            (_, true) => (
                all.iter().filter(stale).map(|(n, e)| (n.as_str(), e)).collect(),
                self.held.removed_from(set),
            ),
            // A stream that names its resources looks up only those: with thousands of
            // streams each naming a few, walking the whole set per stream would dominate.
            (_, false) => (
                self.names
                    .iter()
                    .filter_map(|n| all.get_key_value(n))
                    .filter(stale)
                    .map(|(n, e)| (n.as_str(), e))
                    .collect(),
                self.held.removed_from(set),
            ),
        };
        // A subscribed name that does not exist is reported removed once, so the client
        // does not wait for it.
        let unknown: Vec<String> = self
            .names
            .iter()
            .filter(|n| !all.contains_key(*n) && self.held.version(n).is_none() && !self.told_missing.contains(*n))
            .cloned()
            .collect();
        if changed.is_empty() && removed.is_empty() && unknown.is_empty() {
            return None;
        }
        let whole_set = changed.len() == all.len();
        Some(DeltaOwed {
            changed,
            removed,
            unknown,
            whole_set,
        })
    }

    /// Delta: records `owed` (from `set`) as sent with `nonce`: the client now holds the
    /// changed resources and none of the removed ones, and knows the removed and unknown
    /// names it subscribed to are absent (so they are not reported again).
    pub fn delta_sent(&mut self, owed: &DeltaOwed<'_>, nonce: &str, set: &Arc<TypeSet>) {
        if self.wildcard {
            // Everything was in scope and everything owed was sent: the client holds
            // exactly the set.
            self.held = Held {
                set: Some(Arc::clone(set)),
                versions: BTreeMap::new(),
            };
        } else {
            let held = self.held.versions();
            for (name, e) in &owed.changed {
                held.insert((*name).to_string(), e.version.clone());
            }
            for name in &owed.removed {
                held.remove(name);
            }
        }
        for (name, _) in &owed.changed {
            self.told_missing.remove(*name);
        }
        for name in &owed.removed {
            // Still subscribed by name: the client now knows it is absent.
            if self.names.contains(name) {
                self.told_missing.insert(name.clone());
            }
        }
        self.told_missing.extend(owed.unknown.iter().cloned());
        self.nonce = nonce.to_string();
    }

    /// Whether the subscription was checked against snapshot `version` and has not changed
    /// since: nothing new can be owed.
    pub fn checked(&self, version: u64) -> bool {
        self.checked_at == Some(version)
    }

    /// Records that the subscription was checked against snapshot `version`.
    pub fn mark_checked(&mut self, version: u64) {
        self.checked_at = Some(version);
    }
}

/// What a client holding exactly `held` is owed of `set`: new or changed resources, and
/// the names gone. Both are sorted by name, so one pass over each does.
fn diff<'a>(held: &TypeSet, set: &'a TypeSet) -> (Vec<(&'a str, &'a Encoded)>, Vec<String>) {
    let (mut changed, mut removed) = (Vec::new(), Vec::new());
    let mut old = held.items.iter().peekable();
    for (name, e) in &set.items {
        while let Some((gone, _)) = old.next_if(|(o, _)| *o < name) {
            removed.push(gone.clone());
        }
        match old.next_if(|(o, _)| *o == name) {
            Some((_, was)) if was.version == e.version => {}
            _ => changed.push((name.as_str(), e)),
        }
    }
    removed.extend(old.map(|(n, _)| n.clone()));
    (changed, removed)
}

/// The version of what a subscription to named resources sees: a hash of which names
/// (`names`, the hash of the request) and each one's version, or its absence.
fn named_version(names: u64, found: &[Option<&Encoded>]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(&names.to_le_bytes());
    for e in found {
        feed(e.map_or("-", |e| e.version.as_str()).as_bytes());
        feed(b";");
    }
    format!("{h:016x}")
}

/// A hash of requested names, in the order given.
fn names_hash(names: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for name in names {
        for b in name.as_bytes().iter().chain(b"\n") {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::xds::serve::snapshot::{CLUSTER, ENDPOINT, LISTENER};

    fn set(items: &[(&str, &str)]) -> Arc<TypeSet> {
        Arc::new(TypeSet::new(
            items
                .iter()
                .map(|(name, version)| {
                    let e = Encoded {
                        any: std::sync::Arc::new(Any {
                            type_url: "type.googleapis.com/test".into(),
                            value: name.as_bytes().to_vec(),
                        }),
                        version: version.to_string(),
                    };
                    (name.to_string(), e)
                })
                .collect(),
        ))
    }

    fn names(ns: &[&str]) -> Vec<String> {
        ns.iter().map(|n| n.to_string()).collect()
    }

    fn named<'a>(owed: &SotwOwed<'a>) -> Vec<&'a [u8]> {
        match &owed.resources {
            SotwResources::Named(items) => items.iter().map(|e| e.any.value.as_slice()).collect(),
            SotwResources::Shared(_) => panic!("expected named resources, got the shared encoding"),
        }
    }

    /// Sends what is owed, as the stream loop does, and returns it.
    fn sotw_send<'a>(sub: &mut Subscription, set: &'a TypeSet, nonce: &str) -> Option<SotwOwed<'a>> {
        let owed = sub.sotw_owed(set)?;
        sub.sotw_sent(&owed, nonce);
        Some(owed)
    }

    fn delta_send<'a>(sub: &mut Subscription, set: &'a Arc<TypeSet>, nonce: &str) -> Option<DeltaOwed<'a>> {
        let owed = sub.delta_owed(set)?;
        sub.delta_sent(&owed, nonce, set);
        Some(owed)
    }

    #[test]
    fn sotw_wildcard_gets_the_shared_encoding_and_names_only_theirs() {
        let s = set(&[("a", "1"), ("b", "2")]);
        let mut wild = Subscription::new(CLUSTER);
        assert_eq!(wild.sotw_request(&[], ""), Freshness::Current);
        assert!(wild.is_wildcard());
        let owed = wild.sotw_owed(&s).expect("a first response");
        assert_eq!(owed.version, s.wildcard_version);
        assert_eq!(owed.resources, SotwResources::Shared(s.all_sotw()));

        let mut star = Subscription::new(LISTENER);
        star.sotw_request(&names(&["*", "a"]), "");
        assert!(star.is_wildcard(), "`*` is a wildcard too");
        assert!(star.names().contains("a") && !star.names().contains("*"));

        let mut by_name = Subscription::new(CLUSTER);
        by_name.sotw_request(&names(&["b", "missing"]), "");
        assert!(!by_name.is_wildcard());
        assert_eq!(named(&by_name.sotw_owed(&s).unwrap()), [b"b".as_slice()]);
    }

    #[test]
    fn sotw_types_without_wildcards_get_only_what_they_name() {
        let s = set(&[("a", "1")]);
        let mut sub = Subscription::new(ENDPOINT);
        sub.sotw_request(&[], "");
        assert!(!sub.is_wildcard());
        let owed = sub.sotw_owed(&s).expect("an empty first response");
        assert!(named(&owed).is_empty());
        sub.sotw_request(&names(&["*"]), "");
        assert!(!sub.is_wildcard() && sub.names().is_empty());
    }

    #[test]
    fn sotw_sends_a_version_once_and_again_only_when_the_view_changes() {
        let mut sub = Subscription::new(ENDPOINT);
        sub.sotw_request(&names(&["a"]), "");
        let v1 = set(&[("a", "1"), ("b", "1")]);
        let owed = sotw_send(&mut sub, &v1, "1").expect("first response");
        assert_eq!(sub.nonce(), "1");
        assert!(sub.sotw_owed(&v1).is_none(), "already sent");
        // ACK.
        assert_eq!(sub.sotw_request(&names(&["a"]), "1"), Freshness::Current);
        assert!(sub.sotw_owed(&v1).is_none());
        assert!(
            sub.sotw_owed(&set(&[("a", "1"), ("b", "2")])).is_none(),
            "b is not watched"
        );
        let v2 = set(&[("a", "2")]);
        assert_ne!(sub.sotw_owed(&v2).unwrap().version, owed.version);
    }

    #[test]
    fn sotw_stale_nonces_are_ignored() {
        let mut sub = Subscription::new(CLUSTER);
        sub.sotw_request(&[], "");
        let s = set(&[("a", "1")]);
        sotw_send(&mut sub, &s, "1");
        sotw_send(&mut sub, &set(&[("a", "2")]), "2");
        // The answer to response 1 arrives after response 2 was sent: it changes nothing.
        assert_eq!(sub.sotw_request(&names(&["a"]), "1"), Freshness::Stale);
        assert!(sub.is_wildcard());
        assert_eq!(sub.sotw_request(&names(&["a"]), "2"), Freshness::Current);
        assert!(!sub.is_wildcard());
        let mut fresh = Subscription::new(CLUSTER);
        assert_eq!(
            fresh.sotw_request(&[], "7"),
            Freshness::Stale,
            "a nonce this subscription never sent"
        );
    }

    #[test]
    fn sotw_a_nack_keeps_the_sent_version_so_it_is_not_resent() {
        let mut sub = Subscription::new(CLUSTER);
        sub.sotw_request(&[], "");
        let s = set(&[("a", "1")]);
        sotw_send(&mut sub, &s, "1");
        // A NACK names the same resources and answers the latest nonce.
        assert_eq!(sub.sotw_request(&[], "1"), Freshness::Current);
        assert!(sub.sotw_owed(&s).is_none(), "the rejected content is not sent again");
        assert!(sub.sotw_owed(&set(&[("a", "1"), ("b", "1")])).is_some(), "a change is");
    }

    #[test]
    fn delta_first_request_sets_the_wildcard_and_what_the_client_holds() {
        let s = set(&[("a", "1"), ("b", "2")]);
        let mut sub = Subscription::new(CLUSTER);
        sub.delta_request(&[], &[], &HashMap::from([("a".to_string(), "1".to_string())]));
        assert!(sub.is_wildcard());
        let owed = sub.delta_owed(&s).unwrap();
        let changed: Vec<&str> = owed.changed.iter().map(|(n, _)| *n).collect();
        assert_eq!(changed, ["b"], "a is held at its current version");
        assert!(!owed.whole_set);

        // Initial versions count on the first request only.
        let mut later = Subscription::new(CLUSTER);
        later.delta_request(&[], &[], &HashMap::new());
        later.delta_request(&[], &[], &HashMap::from([("a".to_string(), "1".to_string())]));
        assert_eq!(later.delta_owed(&s).unwrap().changed.len(), 2);

        let mut named = Subscription::new(CLUSTER);
        named.delta_request(&names(&["a"]), &[], &HashMap::new());
        assert!(
            !named.is_wildcard(),
            "a first request naming resources is not a wildcard"
        );
        let mut eds = Subscription::new(ENDPOINT);
        eds.delta_request(&[], &[], &HashMap::new());
        assert!(!eds.is_wildcard(), "EDS has no implicit wildcard");
    }

    #[test]
    fn delta_a_new_subscriber_gets_the_whole_set_encoding_then_only_changes() {
        let mut sub = Subscription::new(LISTENER);
        sub.delta_request(&[], &[], &HashMap::new());
        let v1 = set(&[("a", "1"), ("b", "1")]);
        let owed = delta_send(&mut sub, &v1, "1").unwrap();
        assert!(owed.whole_set, "everything at once shares the snapshot's encoding");
        assert_eq!(owed.changed.len(), 2);
        assert!(sub.delta_owed(&v1).is_none());
        let v2 = set(&[("a", "2"), ("b", "1")]);
        let owed = delta_send(&mut sub, &v2, "2").unwrap();
        assert_eq!(owed.changed.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["a"]);
        assert!(!owed.whole_set && owed.removed.is_empty() && owed.unknown.is_empty());
    }

    #[test]
    fn delta_subscribe_unsubscribe_and_the_star() {
        let s = set(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let mut sub = Subscription::new(ENDPOINT);
        sub.delta_request(&names(&["a"]), &[], &HashMap::new());
        delta_send(&mut sub, &s, "1");
        sub.delta_request(&names(&["b"]), &[], &HashMap::new());
        let owed = delta_send(&mut sub, &s, "2").unwrap();
        assert_eq!(owed.changed.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["b"]);
        // Unsubscribed: forgotten, so a later subscription sends it again.
        sub.delta_request(&[], &names(&["a"]), &HashMap::new());
        assert!(sub.delta_owed(&s).is_none());
        assert_eq!(sub.names().iter().collect::<Vec<_>>(), ["b"]);
        sub.delta_request(&names(&["a"]), &[], &HashMap::new());
        assert_eq!(sub.delta_owed(&s).unwrap().changed.len(), 1);
        delta_send(&mut sub, &s, "3");
        // `*` subscribes to everything, and unsubscribing it leaves the names.
        sub.delta_request(&names(&["*"]), &[], &HashMap::new());
        assert!(sub.is_wildcard());
        let owed = delta_send(&mut sub, &s, "4").unwrap();
        assert_eq!(owed.changed.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["c"]);
        sub.delta_request(&[], &names(&["*"]), &HashMap::new());
        assert!(!sub.is_wildcard());
        assert_eq!(sub.names().len(), 2);
    }

    #[test]
    fn delta_removed_and_never_existing_names_are_reported_once() {
        let mut sub = Subscription::new(ENDPOINT);
        sub.delta_request(&names(&["a", "b", "zzz"]), &[], &HashMap::new());
        let v1 = set(&[("a", "1"), ("b", "1")]);
        let owed = delta_send(&mut sub, &v1, "1").unwrap();
        assert_eq!(owed.unknown, ["zzz"]);
        assert_eq!(owed.removed_resources(), ["zzz"]);
        assert!(owed.whole_set, "a and b are every resource there is");
        let v2 = set(&[("a", "1")]);
        let owed = delta_send(&mut sub, &v2, "2").unwrap();
        assert!(owed.changed.is_empty());
        assert_eq!(owed.removed, ["b"]);
        assert!(owed.unknown.is_empty(), "zzz was reported already");
        assert!(sub.delta_owed(&v2).is_none(), "b was reported already");
        // zzz appears, then goes away again: reported again.
        delta_send(&mut sub, &set(&[("a", "1"), ("zzz", "1")]), "3").unwrap();
        let owed = delta_send(&mut sub, &v2, "4").unwrap();
        assert_eq!(owed.removed, ["zzz"]);
        assert_eq!(sub.nonce(), "4");
    }

    #[test]
    fn delta_a_caught_up_wildcard_stream_holds_the_set_itself_and_is_owed_the_difference() {
        let v1 = set(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let mut sub = Subscription::new(CLUSTER);
        sub.delta_request(&[], &[], &HashMap::new());
        delta_send(&mut sub, &v1, "1").unwrap();
        assert!(sub.held.set.as_ref().is_some_and(|h| Arc::ptr_eq(h, &v1)) && sub.held.versions.is_empty());
        let v2 = set(&[("a", "2"), ("b", "1"), ("d", "1")]);
        // The same answer as a client that says what it holds, name by name.
        let mut told = Subscription::new(CLUSTER);
        let held: HashMap<String, String> = [("a", "1"), ("b", "1"), ("c", "1")]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        told.delta_request(&[], &[], &held);
        for sub in [&sub, &told] {
            let owed = sub.delta_owed(&v2).unwrap();
            assert_eq!(owed.changed.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["a", "d"]);
            assert_eq!(owed.removed, ["c"]);
        }
        // Unsubscribing one name spells out the rest of what it holds.
        sub.delta_request(&[], &names(&["b"]), &HashMap::new());
        assert!(sub.held.set.is_none());
        assert_eq!(sub.held.versions.keys().collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn a_set_version_is_the_hash_of_its_names_and_versions() {
        let (a, b, one) = ("a".to_string(), "b".to_string(), "1".to_string());
        let v = crate::xds::serve::snapshot::set_version([(&a, Some(&one)), (&b, None)].into_iter());
        assert_eq!(v, crate::render::fnv1a("a=1;b=-;"));
    }

    #[test]
    fn sotw_a_request_repeating_its_names_keeps_them_and_new_names_replace_them() {
        let s = set(&[("a", "1"), ("b", "1")]);
        let mut sub = Subscription::new(ENDPOINT);
        sub.sotw_request(&names(&["a"]), "");
        sotw_send(&mut sub, &s, "1").unwrap();
        sub.mark_checked(7);
        sub.sotw_request(&names(&["a"]), "1");
        assert!(sub.checked(7), "an ACK leaves the subscription as it was");
        sub.sotw_request(&names(&["a", "b"]), "1");
        assert!(!sub.checked(7));
        assert_eq!(named(&sotw_send(&mut sub, &s, "2").unwrap()), [b"a".as_slice(), b"b"]);
    }
}
