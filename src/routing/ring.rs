//! A consistent-hash ring with virtual nodes and bounded loads.
//!
//! Each replica owns `vnodes` points `xxh3("<name>#<i>")` on a 64-bit ring. A key goes to the
//! first replica clockwise from it (its *primary*) unless that replica is not eligible
//! (unhealthy, ejected, already tried) or overloaded, in which case the walk continues
//! clockwise to the next distinct replica. "Overloaded" is the bounded-loads rule of Mirrokni,
//! Thorup and Zadimoghaddam applied to requests in flight ([`Bound`]): a replica whose
//! in-flight count exceeds `load_factor` × the mean over the eligible replicas is skipped,
//! unless it holds no more than `floor` (a few extra requests cost a batching engine little,
//! while moving a prefix away costs its cache). The bound is not rounded, so it stays tight
//! at the small counts an inference pool runs at; if no replica is within it the least loaded
//! eligible replica is used. A key moves only while its primary is overloaded or gone.
//!
//! Removing one replica of `n` moves only the keys it owned (about `1/n`); every gateway
//! builds the same ring from the same names, so they agree with no shared state.
//!
//! | operation | cost |
//! |---|---|
//! | build | O(n·v log(n·v)) |
//! | pick, no spill | O(log(n·v)) + O(n) to sum the loads |
//! | pick, spilling | + O(points walked), at most a full turn |
//!
//! Pools are limited to [`MAX_REPLICAS`] replicas (the walk tracks visited replicas in a
//! fixed-size bitset, so picking never allocates).

/// Most replicas a ring can hold.
pub const MAX_REPLICAS: usize = 256;

/// Why a replica was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The key's primary replica.
    Affinity,
    /// The primary was overloaded; the next replica clockwise that was not.
    SpillOverload,
    /// The primary was not eligible (unhealthy, ejected or already tried).
    SpillUnhealthy,
}

impl Decision {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Affinity => "affinity",
            Self::SpillOverload => "spill_overload",
            Self::SpillUnhealthy => "spill_unhealthy",
        }
    }
}

/// A chosen replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Index of the replica (order given to [`Ring::new`]).
    pub replica: usize,
    /// Why.
    pub decision: Decision,
}

/// Replicas visited during a walk (a 256-bit set, no allocation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaSet([u64; MAX_REPLICAS / 64]);

impl ReplicaSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a replica.
    pub fn insert(&mut self, i: usize) {
        if i < MAX_REPLICAS {
            self.0[i / 64] |= 1 << (i % 64);
        }
    }

    /// Whether a replica is in the set.
    pub fn contains(&self, i: usize) -> bool {
        i < MAX_REPLICAS && self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Number of replicas in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// The ring.
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u64, u16)>,
    replicas: usize,
}

impl Ring {
    /// A ring over replicas named `names` (names, not addresses, so a replica keeps its keys
    /// when its address changes), `vnodes` points each. At most [`MAX_REPLICAS`] are used.
    pub fn new<S: AsRef<str>>(names: &[S], vnodes: usize) -> Self {
        let names = &names[..names.len().min(MAX_REPLICAS)];
        let mut points = Vec::with_capacity(names.len() * vnodes);
        for (i, name) in names.iter().enumerate() {
            for v in 0..vnodes.max(1) {
                let label = format!("{}#{v}", name.as_ref());
                // `i < MAX_REPLICAS`, which fits u16.
                points.push((xxhash_rust::xxh3::xxh3_64(label.as_bytes()), i as u16));
            }
        }
        points.sort_unstable();
        Self {
            points,
            replicas: names.len(),
        }
    }

    /// Number of replicas.
    pub fn len(&self) -> usize {
        self.replicas
    }

    /// Whether the ring has no replicas.
    pub fn is_empty(&self) -> bool {
        self.replicas == 0
    }

    /// The primary replica of `key`, ignoring load and eligibility.
    pub fn primary(&self, key: u64) -> Option<usize> {
        self.walk(key).next()
    }

    /// Distinct replicas clockwise from `key`, primary first.
    pub fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|&(point, _)| point < key);
        let n = self.points.len();
        let mut seen = ReplicaSet::new();
        let mut left = self.replicas;
        (0..n)
            .map(move |i| usize::from(self.points[(start + i) % n].1))
            .filter(move |&r| {
                if left == 0 || seen.contains(r) {
                    return false;
                }
                seen.insert(r);
                left -= 1;
                true
            })
    }

    /// Chooses the replica for `key` given each replica's in-flight `load` and whether it is
    /// `eligible`, within `bound`. `None` only when no replica is eligible.
    pub fn pick(
        &self,
        key: u64,
        load: impl Fn(usize) -> u64,
        eligible: impl Fn(usize) -> bool,
        bound: Bound,
    ) -> Option<Pick> {
        let cap = bound.cap((0..self.replicas).filter(|&r| eligible(r)).map(&load))?;
        let under = |l: u64| l as f64 <= cap;
        let mut primary_eligible = None;
        let mut least: Option<(u64, usize)> = None;
        for r in self.walk(key) {
            let is_eligible = eligible(r);
            let primary_ok = *primary_eligible.get_or_insert(is_eligible);
            if !is_eligible {
                continue;
            }
            let l = load(r);
            if under(l) {
                let decision = if !primary_ok {
                    Decision::SpillUnhealthy
                } else if least.is_none() {
                    Decision::Affinity
                } else {
                    Decision::SpillOverload
                };
                return Some(Pick {
                    replica: r,
                    decision,
                });
            }
            if least.is_none_or(|(best, _)| l < best) {
                least = Some((l, r));
            }
        }
        // Nobody under the bound (only at very low load): the least loaded eligible replica.
        least.map(|(_, replica)| Pick {
            replica,
            decision: Decision::SpillOverload,
        })
    }
}

/// The bounded-loads rule: a replica may take another request while its in-flight count is at
/// most `max(floor, factor × mean)`, the mean taken over the eligible replicas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// `load_factor` (≥ 1).
    pub factor: f64,
    /// In-flight count at or below which a replica is never overloaded.
    pub floor: f64,
}

impl Bound {
    /// The most a replica may hold before taking one more, given the eligible replicas'
    /// loads; `None` when there are none.
    pub fn cap(&self, loads: impl Iterator<Item = u64>) -> Option<f64> {
        let (total, count) = loads.fold((0u64, 0u64), |(t, c), l| (t + l, c + 1));
        (count > 0).then(|| (self.factor * total as f64 / count as f64).max(self.floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BOUND: Bound = Bound {
        factor: 1.25,
        floor: 0.0,
    };

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("replica-{i}")).collect()
    }

    fn keys(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()))
    }

    #[test]
    fn primaries_are_spread_evenly() {
        let ring = Ring::new(&names(4), 160);
        let mut counts = [0u32; 4];
        for key in keys(40_000) {
            counts[ring.primary(key).expect("replica")] += 1;
        }
        for c in counts {
            assert!((8_500..11_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn removing_one_replica_moves_only_its_keys() {
        let all = names(8);
        let before = Ring::new(&all, 160);
        let after = Ring::new(&all[..7], 160);
        let mut moved = 0;
        for key in keys(20_000) {
            let (a, b) = (before.primary(key), after.primary(key));
            if a != Some(7) {
                assert_eq!(a, b, "a key not owned by the removed replica moved");
            } else {
                moved += 1;
            }
        }
        let share = f64::from(moved) / 20_000.0;
        assert!(
            (0.09..0.16).contains(&share),
            "moved {share}, expected about 1/8"
        );
    }

    #[test]
    fn an_overloaded_primary_spills_clockwise() {
        let ring = Ring::new(&names(4), 64);
        let key = 42;
        let order: Vec<usize> = ring.walk(key).collect();
        assert_eq!(order.len(), 4);
        let loads = |r: usize| if r == order[0] { 10 } else { 1 };
        let pick = ring.pick(key, loads, |_| true, BOUND).expect("pick");
        assert_eq!(
            pick,
            Pick {
                replica: order[1],
                decision: Decision::SpillOverload
            }
        );
        let pick = ring
            .pick(key, |_| 0, |r| r != order[0], BOUND)
            .expect("pick");
        assert_eq!(
            pick,
            Pick {
                replica: order[1],
                decision: Decision::SpillUnhealthy
            }
        );
        let pick = ring.pick(key, |_| 0, |_| true, BOUND).expect("pick");
        assert_eq!(pick.decision, Decision::Affinity);
        assert_eq!(ring.pick(key, |_| 0, |_| false, BOUND), None);
    }

    proptest! {
        /// Whatever the loads, the chosen replica ends up within the bound (or is the least
        /// loaded when none is under it), and it is the primary whenever the primary is under it.
        #[test]
        fn bounded_loads_hold(key: u64, loads in proptest::collection::vec(0u64..50, 1..12), factor in 1.0f64..2.0, floor in 0.0f64..8.0) {
            let ring = Ring::new(&names(loads.len()), 32);
            let bound = Bound { factor, floor };
            let pick = ring.pick(key, |r| loads[r], |_| true, bound).expect("pick");
            let mean = loads.iter().sum::<u64>() as f64 / loads.len() as f64;
            let cap = (factor * mean).max(floor);
            let chosen = loads[pick.replica];
            prop_assert!(chosen as f64 <= cap, "load {chosen} cap {cap}");
            let primary = ring.primary(key).expect("primary");
            if loads[primary] as f64 <= cap {
                prop_assert_eq!(pick, Pick { replica: primary, decision: Decision::Affinity });
            }
        }

        /// With equal (or zero) loads the choice is the primary: the key alone decides.
        #[test]
        fn without_load_the_key_alone_decides(key: u64, n in 1usize..20) {
            let ring = Ring::new(&names(n), 16);
            let pick = ring.pick(key, |_| 0, |_| true, BOUND).expect("pick");
            prop_assert_eq!(Some(pick.replica), ring.primary(key));
        }
    }
}
