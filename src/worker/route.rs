//! Routing: which sinks receive an event of a given source and type.

use crate::config::RouteConfig;
use globset::{Glob, GlobSet, GlobSetBuilder};

struct Route {
    source: String,
    events: GlobSet,
    sinks: Vec<String>,
}

/// The configured routes, with their event-type globs compiled.
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Result<Self, String> {
        let mut compiled = Vec::with_capacity(routes.len());
        for route in routes {
            let mut builder = GlobSetBuilder::new();
            for pattern in &route.events {
                let glob = Glob::new(pattern).map_err(|e| {
                    format!(
                        "route for source {:?}: invalid event glob {pattern:?}: {e}",
                        route.source
                    )
                })?;
                builder.add(glob);
            }
            let events = builder
                .build()
                .map_err(|e| format!("route for source {:?}: {e}", route.source))?;
            compiled.push(Route {
                source: route.source.clone(),
                events,
                sinks: route.sinks.clone(),
            });
        }
        Ok(Self { routes: compiled })
    }

    /// Returns the sinks that receive an event, each once, in the order routes name them.
    pub fn sinks_for(&self, source: &str, event_type: &str) -> Vec<String> {
        let mut sinks: Vec<String> = Vec::new();
        let matching = self
            .routes
            .iter()
            .filter(|route| route.source == source && route.events.is_match(event_type));
        for route in matching {
            for sink in &route.sinks {
                if !sinks.contains(sink) {
                    sinks.push(sink.clone());
                }
            }
        }
        sinks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(source: &str, events: &[&str], sinks: &[&str]) -> RouteConfig {
        RouteConfig {
            source: source.into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn glob_selects_event_types() {
        let router = Router::new(&[
            route("makini", &["work_orders.*"], &["orders"]),
            route("makini", &["*"], &["all", "orders"]),
        ])
        .unwrap();
        assert_eq!(
            router.sinks_for("makini", "work_orders.inserted"),
            ["orders", "all"]
        );
        assert_eq!(
            router.sinks_for("makini", "assets.updated"),
            ["all", "orders"]
        );
        assert!(router.sinks_for("github", "push").is_empty());
    }

    #[test]
    fn star_matches_missing_type() {
        let router = Router::new(&[route("makini", &["*"], &["all"])]).unwrap();
        assert_eq!(router.sinks_for("makini", ""), ["all"]);
    }

    #[test]
    fn invalid_glob_is_rejected() {
        assert!(Router::new(&[route("makini", &["a[b"], &["all"])]).is_err());
    }
}
