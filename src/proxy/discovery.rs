//! DNS discovery: pools with `discovery = "dns"` have each backend URL's host re-resolved, and
//! every address it resolves to is a replica (a Kubernetes headless Service lists one address
//! per ready pod).
//!
//! Replicas found this way are named `ip:port`, so a pod keeps its prefix keys while its
//! address stays. A failed lookup keeps the pool's previous addresses rather than emptying it.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use crate::config::{BackendAddr, Discovery, GatewayConfig};

/// Resolves every DNS-discovered pool of `config`; pools whose lookups all fail keep their
/// entry from `previous`.
pub async fn resolve(
    config: &GatewayConfig,
    previous: &HashMap<String, Vec<BackendAddr>>,
) -> HashMap<String, Vec<BackendAddr>> {
    let mut out = HashMap::new();
    for (name, pool) in &config.pools {
        if pool.discovery != Discovery::Dns {
            continue;
        }
        let mut addrs = Vec::new();
        let mut any_resolved = false;
        for (i, spec) in pool.backends.iter().enumerate() {
            let Ok(template) = spec.resolve(&format!("pools.{name}.backends[{i}]")) else {
                continue;
            };
            match tokio::net::lookup_host(template.authority.clone()).await {
                Ok(found) => {
                    any_resolved = true;
                    let unique: BTreeSet<SocketAddr> = found.collect();
                    addrs.extend(unique.into_iter().map(|addr| replica(&template, addr)));
                }
                Err(e) => {
                    tracing::warn!(pool = %name, host = %template.authority, error = %e, "DNS lookup failed")
                }
            }
        }
        match (any_resolved, previous.get(name)) {
            (false, Some(old)) => {
                out.insert(name.clone(), old.clone());
            }
            _ => {
                addrs.sort_by(|a, b| a.name.cmp(&b.name));
                addrs.dedup_by(|a, b| a.name == b.name);
                out.insert(name.clone(), addrs);
            }
        }
    }
    out
}

/// The replica at `addr` of a backend URL.
fn replica(template: &BackendAddr, addr: SocketAddr) -> BackendAddr {
    let path = template
        .base
        .strip_prefix("http://")
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("");
    BackendAddr {
        name: addr.to_string(),
        base: format!("http://{addr}{path}"),
        authority: addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_resolves_to_loopback_replicas() {
        let config = GatewayConfig::from_toml(
            r#"
            [pools.k8s]
            discovery = "dns"
            backends = ["http://localhost:8000/prefix"]
            [[routes]]
            model = "*"
            pool = "k8s"
            "#,
        )
        .expect("valid");
        let resolved = resolve(&config, &HashMap::new()).await;
        let replicas = &resolved["k8s"];
        assert!(!replicas.is_empty());
        assert!(
            replicas.iter().all(|r| r.base.ends_with(":8000/prefix")),
            "{replicas:?}"
        );
        assert!(replicas
            .iter()
            .any(|r| r.name == "127.0.0.1:8000" || r.name == "[::1]:8000"));
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_previous_addresses() {
        let config = GatewayConfig::from_toml(
            r#"
            [pools.k8s]
            discovery = "dns"
            backends = ["http://no-such-host.invalid:8000"]
            [[routes]]
            model = "*"
            pool = "k8s"
            "#,
        )
        .expect("valid");
        let old = BackendAddr {
            name: "10.0.0.1:8000".into(),
            base: "http://10.0.0.1:8000".into(),
            authority: "10.0.0.1:8000".into(),
        };
        let previous = HashMap::from([("k8s".to_string(), vec![old.clone()])]);
        let resolved = resolve(&config, &previous).await;
        assert_eq!(resolved["k8s"], vec![old]);
    }
}
