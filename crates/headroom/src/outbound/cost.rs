//! What a call without a stated cost (`Headroom-Cost`) is likely to cost, learned per
//! upstream and route from the costs answers reported: an LLM completion of one endpoint
//! costs much the same from one call to the next, a GraphQL query of one shape too. The
//! estimate is what the call reserves; the answer's reported cost then replaces it in the
//! budget (reconciliation), so an estimate that is off costs pace, not throttles.

use std::collections::HashMap;
use std::sync::Mutex;

use http::Method;

/// How much each new cost moves the estimate (an exponentially weighted mean).
const WEIGHT: f64 = 0.2;
/// The most a call may cost, as `Headroom-Cost` allows.
pub(crate) const MAX_COST: f64 = 1e6;
/// Routes remembered at most (all upstreams): a client that varies its paths endlessly
/// cannot grow the table.
const MAX_ROUTES: usize = 4096;

#[derive(Default)]
pub(crate) struct CostEstimates {
    by_route: Mutex<HashMap<(u32, String), f64>>,
}

impl CostEstimates {
    /// The estimated cost of `method path` at upstream `upstream`, once an answer told one.
    pub(crate) fn estimate(&self, upstream: u32, method: &Method, path: &str) -> Option<f64> {
        let map = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(upstream, route(method, path))).copied()
    }

    /// Learns from a cost an answer reported.
    pub(crate) fn record(&self, upstream: u32, method: &Method, path: &str, cost: f64) {
        if !(cost.is_finite() && cost >= 0.0) {
            return;
        }
        // An answer is untrusted: what it says a call cost counts no more than a caller may
        // state (`Headroom-Cost`).
        let cost = cost.min(MAX_COST);
        let mut map = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
        let key = (upstream, route(method, path));
        let full = map.len() >= MAX_ROUTES;
        match map.get_mut(&key) {
            Some(mean) => *mean += WEIGHT * (cost - *mean),
            None if !full => {
                map.insert(key, cost);
            }
            None => {}
        }
    }
}

/// A call's route: its method and path template (ids as `{id}`), as the metrics name it.
fn route(method: &Method, path: &str) -> String {
    crate::observe::endpoint_template(method.as_str(), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_paths_are_one_route() {
        assert_eq!(
            route(&Method::GET, "/contacts/123"),
            route(&Method::GET, "/contacts/456")
        );
        assert_ne!(
            route(&Method::GET, "/contacts/123"),
            route(&Method::POST, "/contacts/123")
        );
    }

    #[test]
    fn the_estimate_follows_reported_costs_per_route() {
        let costs = CostEstimates::default();
        assert_eq!(costs.estimate(0, &Method::POST, "/chat/completions"), None);
        costs.record(0, &Method::POST, "/chat/completions", 200.0);
        assert_eq!(
            costs.estimate(0, &Method::POST, "/chat/completions"),
            Some(200.0)
        );
        costs.record(0, &Method::POST, "/chat/completions", 300.0);
        assert_eq!(
            costs.estimate(0, &Method::POST, "/chat/completions"),
            Some(220.0)
        );
        // Another route, another upstream: nothing learned there.
        assert_eq!(costs.estimate(0, &Method::POST, "/embeddings"), None);
        assert_eq!(costs.estimate(1, &Method::POST, "/chat/completions"), None);
        costs.record(0, &Method::POST, "/chat/completions", f64::NAN);
        assert_eq!(
            costs.estimate(0, &Method::POST, "/chat/completions"),
            Some(220.0)
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let costs = CostEstimates::default();
        // Names without digits, so that each is a route of its own.
        let name = |mut i: usize| {
            let mut s = String::new();
            loop {
                s.push(char::from(b'a' + (i % 26) as u8));
                i /= 26;
                if i == 0 {
                    return s;
                }
            }
        };
        for i in 0..MAX_ROUTES + 10 {
            costs.record(0, &Method::GET, &format!("/{}", name(i)), 1.0);
        }
        assert!(costs.by_route.lock().unwrap().len() <= MAX_ROUTES);
    }
}
