//! The services the benchmark serves: Services with one EndpointSlice of 5 endpoints each,
//! spread over four namespaces so a control plane can be pointed at the first 100, 1000,
//! 5000 or 10 000 of them with one discovery selector.

use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use weft_e2e::Bed;

/// Service counts the control plane can be pointed at, and the namespace holding the
/// services up to each count (service `i` is in the first tier whose count exceeds `i`).
pub const TIERS: [(usize, &str); 4] = [
    (100, "bench-xds-a"),
    (1000, "bench-xds-b"),
    (5000, "bench-xds-c"),
    (10_000, "bench-xds-d"),
];

/// The namespace of service `i`.
pub fn namespace_of(i: usize) -> &'static str {
    TIERS
        .iter()
        .find(|(upto, _)| i < *upto)
        .map_or(TIERS[3].1, |(_, ns)| ns)
}

/// The namespace label that selects the first `services` services (a `TIERS` count).
pub fn selector_label(services: usize) -> String {
    format!("bench.weft.dev/within-{services}")
}

/// The EDS cluster name of service `i`.
pub fn cluster_name(i: usize) -> String {
    format!("outbound|80||svc-{i}.{}.svc.cluster.local", namespace_of(i))
}

/// Service `i`'s EndpointSlice in cluster number `cluster` (addresses differ per cluster
/// and per generation; they are bookkeeping in 198.18.0.0/15 and never dialled).
pub fn slice(i: usize, generation: usize, cluster: usize) -> EndpointSlice {
    let endpoints: Vec<_> = (0..5)
        .map(|e| {
            let n = i * 5 + e + generation * 7;
            let address = format!(
                "198.{}.{}.{}",
                18 + cluster / 2,
                (cluster % 2) * 64 + (n / 250) % 64,
                n % 250 + 1
            );
            json!({"addresses": [address], "conditions": {"ready": true}, "zone": format!("zone-{}", ["a", "b", "c"][e % 3])})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}-1"), "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .expect("valid EndpointSlice")
}

/// Creates the tiers' namespaces (each labelled for every count it is within) if missing.
async fn namespaces(bed: &Bed) {
    let api: Api<Namespace> = Api::all(bed.client.clone());
    for (t, (upto, name)) in TIERS.iter().enumerate() {
        let labels: serde_json::Map<String, serde_json::Value> = TIERS[t..]
            .iter()
            .map(|(count, _)| (selector_label(*count), json!("true")))
            .collect();
        debug_assert!(labels.contains_key(&selector_label(*upto)));
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("a namespace");
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create namespace {name}: {e}"),
        }
    }
}

/// Creates services `from..to` with their EndpointSlices in cluster number `cluster`.
pub async fn populate(bed: &Bed, cluster: usize, from: usize, to: usize) {
    let started = Instant::now();
    namespaces(bed).await;
    futures::stream::iter(from..to)
        .for_each_concurrent(16, |i| async move {
            let ns = namespace_of(i);
            let svcs: Api<Service> = Api::namespaced(bed.client.clone(), ns);
            let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), ns);
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": format!("svc-{i}")},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
            }))
            .expect("a service");
            svcs.create(&PostParams::default(), &svc).await.expect("create service");
            slices
                .create(&PostParams::default(), &slice(i, 0, cluster))
                .await
                .expect("create endpointslice");
        })
        .await;
    println!(
        "created services {from}..{to} with 5 endpoints each in {} in {:.1?}",
        bed.name,
        started.elapsed()
    );
}
