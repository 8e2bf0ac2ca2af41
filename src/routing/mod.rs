//! Pure routing algorithms: no IO, no clocks, no tokio. Each is unit- and property-tested and
//! benched (`benches/route.rs`).
//!
//! - [`prefix`]: the prompt-prefix key (chained XXH3 over the first `prefix_chars` bytes);
//! - [`ring`]: consistent hashing with virtual nodes and bounded loads;
//! - [`affinity`]: placement of prefix keys with bounded key counts (which replica a key lives on);
//! - [`split`]: sticky weighted A/B assignment (weighted rendezvous hashing).
//!
//! The request path (`proxy::route`) feeds them the request's key and each replica's load and
//! health, and turns their answers into a backend and a counted decision.

pub mod affinity;
pub mod prefix;
pub mod ring;
pub mod split;
