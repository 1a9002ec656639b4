//! The order services start in: every service after what it depends on (`depends_on`, and the
//! service whose network it shares), ties broken by name so the order is stable.

use crate::compose::{ComposeFile, NetworkMode, Service};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OrderError {
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("service `{0}` depends on `{1}`, which is not in this file")]
    Missing(String, String),
}

/// What `s` must start after.
pub fn dependencies(s: &Service) -> BTreeSet<String> {
    let mut d: BTreeSet<String> = s.depends_on.keys().cloned().collect();
    if let NetworkMode::Service(n) = &s.network_mode {
        d.insert(n.clone());
    }
    d
}

/// Services in start order (dependencies first). Stop in the reverse order.
pub fn start_order(f: &ComposeFile) -> Result<Vec<String>, OrderError> {
    let deps: BTreeMap<&str, BTreeSet<String>> = f
        .services
        .iter()
        .map(|(n, s)| (n.as_str(), dependencies(s)))
        .collect();
    for (n, ds) in &deps {
        for d in ds {
            if !deps.contains_key(d.as_str()) {
                return Err(OrderError::Missing(n.to_string(), d.clone()));
            }
        }
    }
    // Kahn's algorithm over a BTreeSet of ready names: deterministic.
    let mut remaining: BTreeMap<&str, usize> = deps.iter().map(|(n, d)| (*n, d.len())).collect();
    let mut ready: BTreeSet<&str> = remaining
        .iter()
        .filter(|(_, c)| **c == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut out = Vec::new();
    while let Some(n) = ready.pop_first() {
        remaining.remove(n);
        out.push(n.to_string());
        for (m, ds) in &deps {
            if ds.contains(n)
                && let Some(c) = remaining.get_mut(m)
            {
                *c -= 1;
                if *c == 0 {
                    ready.insert(m);
                }
            }
        }
    }
    if remaining.is_empty() {
        return Ok(out);
    }
    Err(OrderError::Cycle(find_cycle(&deps, &remaining)))
}

/// A cycle among the services Kahn's algorithm could not place, for the error message.
fn find_cycle(
    deps: &BTreeMap<&str, BTreeSet<String>>,
    left: &BTreeMap<&str, usize>,
) -> Vec<String> {
    // Every remaining node has a remaining dependency: walk them until a name repeats.
    let Some(start) = left.keys().next() else {
        return Vec::new();
    };
    let mut path: Vec<&str> = vec![start];
    loop {
        let cur = path[path.len() - 1];
        let next = deps[cur]
            .iter()
            .find(|d| left.contains_key(d.as_str()))
            .map(String::as_str);
        let Some(next) = next else {
            return path.iter().map(|s| s.to_string()).collect();
        };
        if let Some(i) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            cycle.push(next.to_string());
            return cycle;
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ComposeFile {
        // Parse without the cross-check (which would refuse the cycles under test).
        let mut services = BTreeMap::new();
        for line in text.lines() {
            let (name, deps) = line.split_once(':').unwrap();
            let mut s = crate::compose::parse("t", "services:\n  x:\n    image: x\n")
                .unwrap()
                .services
                .remove("x")
                .unwrap();
            for d in deps.split_whitespace() {
                if let Some(n) = d.strip_prefix("net=") {
                    s.network_mode = NetworkMode::Service(n.into());
                } else {
                    s.depends_on
                        .insert(d.into(), crate::compose::Condition::Started);
                }
            }
            services.insert(name.trim().to_string(), s);
        }
        ComposeFile {
            name: None,
            services,
            volumes: BTreeMap::new(),
        }
    }

    #[test]
    fn dependencies_first_ties_by_name() {
        let f = file("web: api cache\napi: db\ndb:\ncache:\nworker: db");
        assert_eq!(
            start_order(&f).unwrap(),
            ["cache", "db", "api", "web", "worker"]
        );
    }

    #[test]
    fn network_mode_service_is_a_dependency() {
        let f = file("app: net=vpn\nvpn:");
        assert_eq!(start_order(&f).unwrap(), ["vpn", "app"]);
    }

    #[test]
    fn cycles_are_named() {
        let f = file("a: b\nb: c\nc: a\nd:");
        match start_order(&f) {
            Err(OrderError::Cycle(c)) => {
                assert_eq!(c.first(), c.last());
                assert_eq!(c.len(), 4, "{c:?}");
            }
            other => panic!("{other:?}"),
        }
        let f = file("a: a");
        assert!(matches!(start_order(&f), Err(OrderError::Cycle(_))));
    }

    #[test]
    fn missing_dependency() {
        let f = file("a: ghost");
        assert_eq!(
            start_order(&f),
            Err(OrderError::Missing("a".into(), "ghost".into()))
        );
    }
}
