//! Where a new workspace goes: a live node that serves the API, offers
//! the runtime and has room, preferring one that already holds the
//! spec's provisioning cache, else the least loaded (its workspaces and
//! running tasks), then the first by name.

use crate::NodeInfo;
use std::collections::BTreeMap;

/// Why no node can take a workspace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no node of the cluster offers the runtime `{runtime}` (nodes: {nodes})")]
    NoRuntime { runtime: String, nodes: String },
    #[error("every node offering the runtime `{runtime}` is full ({nodes})")]
    Full { runtime: String, nodes: String },
}

/// The node to place a workspace of `runtime` on; `workspaces` counts
/// those each node holds now.
pub fn choose<'a>(
    nodes: &'a [NodeInfo],
    workspaces: &BTreeMap<String, usize>,
    runtime: &str,
    cache_key: &str,
) -> Result<&'a NodeInfo, PlacementError> {
    let held = |node: &NodeInfo| workspaces.get(&node.name).copied().unwrap_or(0);
    let offering: Vec<&NodeInfo> = nodes
        .iter()
        .filter(|node| {
            crate::router::node_api(node).is_some() && node.runtimes.iter().any(|r| r == runtime)
        })
        .collect();
    if offering.is_empty() {
        let nodes = if nodes.is_empty() {
            "none live".to_owned()
        } else {
            nodes
                .iter()
                .map(|node| format!("{} offers {}", node.name, node.runtimes.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(PlacementError::NoRuntime {
            runtime: runtime.into(),
            nodes,
        });
    }
    let roomy: Vec<&NodeInfo> = offering
        .iter()
        .copied()
        .filter(|node| node.capacity.is_none_or(|capacity| held(node) < capacity))
        .collect();
    let caching: Vec<&NodeInfo> = roomy
        .iter()
        .copied()
        .filter(|node| node.cache_keys.iter().any(|key| key == cache_key))
        .collect();
    let pool = if caching.is_empty() { roomy } else { caching };
    pool.into_iter()
        .min_by(|a, b| (held(a) + a.running, &a.name).cmp(&(held(b) + b.running, &b.name)))
        .ok_or_else(|| PlacementError::Full {
            runtime: runtime.into(),
            nodes: offering
                .iter()
                .map(|node| {
                    let capacity = node.capacity.map_or("-".into(), |c| c.to_string());
                    format!("{} holds {}/{capacity}", node.name, held(node))
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, runtimes: &[&str], cache: &[&str]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            arch: "x86_64".into(),
            runtimes: runtimes.iter().map(|r| (*r).into()).collect(),
            slots: 4,
            running: 0,
            cache_keys: cache.iter().map(|k| (*k).into()).collect(),
            api: Some(format!("berth.v1.node.{name}")),
            capacity: None,
            started_at: 0,
            heartbeat_at: 0,
        }
    }

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(n, c)| ((*n).into(), *c)).collect()
    }

    #[test]
    fn the_node_holding_the_cache_wins_over_a_less_loaded_one() {
        let nodes = [node("a", &["local"], &[]), node("b", &["local"], &["k"])];
        let held = counts(&[("b", 3)]);
        assert_eq!(choose(&nodes, &held, "local", "k").unwrap().name, "b");
        assert_eq!(choose(&nodes, &held, "local", "other").unwrap().name, "a");
    }

    #[test]
    fn the_least_loaded_counts_running_tasks_and_ties_go_by_name() {
        let mut busy = node("a", &["local"], &[]);
        busy.running = 2;
        let nodes = [busy, node("b", &["local"], &[]), node("c", &["local"], &[])];
        assert_eq!(
            choose(&nodes, &counts(&[("b", 1)]), "local", "k")
                .unwrap()
                .name,
            "c"
        );
        assert_eq!(
            choose(&nodes, &counts(&[]), "local", "k").unwrap().name,
            "b"
        );
    }

    #[test]
    fn a_node_without_the_runtime_is_never_chosen_even_holding_the_cache() {
        let nodes = [node("a", &["docker"], &["k"]), node("b", &["local"], &[])];
        let held = counts(&[("b", 9)]);
        assert_eq!(choose(&nodes, &held, "local", "k").unwrap().name, "b");
        let err = choose(&nodes, &held, "sandbox", "k").unwrap_err();
        assert!(err.to_string().contains("runtime `sandbox`"), "{err}");
        assert!(err.to_string().contains("a offers docker"), "{err}");
    }

    #[test]
    fn a_full_node_or_one_serving_no_api_is_passed_over() {
        let mut full = node("a", &["local"], &["k"]);
        full.capacity = Some(1);
        let mut silent = node("b", &["local"], &[]);
        silent.api = None;
        let nodes = [full, silent];
        let err = choose(&nodes, &counts(&[("a", 1)]), "local", "k").unwrap_err();
        assert_eq!(
            err,
            PlacementError::Full {
                runtime: "local".into(),
                nodes: "a holds 1/1".into()
            }
        );
        assert_eq!(
            choose(&nodes, &counts(&[]), "local", "k").unwrap().name,
            "a"
        );
    }
}
