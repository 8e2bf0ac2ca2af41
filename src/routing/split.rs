//! Deterministic, sticky, weighted A/B assignment: the same (experiment, sticky key) always gets
//! the same arm, and arms receive keys in proportion to their weights.
//!
//! Weighted rendezvous hashing: each arm scores `weight / −ln(u)`, where
//! `u = xxh3(experiment, arm, key)` mapped to (0, 1), and the highest score wins. The winner is
//! arm `i` with probability `w_i / Σw`, exactly. Because each arm's score depends only on its
//! own name and weight, changing one arm's weight (or adding or removing an arm) moves only
//! keys into or out of that arm: as few as the new weights require. (A cumulative-interval
//! split would shift the boundaries of every later arm and move more keys.)
//!
//! Cost: O(arms) hashes per assignment, no allocation.

/// One arm as the splitter sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arm<'a> {
    /// Stable arm name (part of the hash).
    pub name: &'a str,
    /// Relative weight; arms with weight ≤ 0 never win.
    pub weight: f64,
}

/// The winning arm's index for `key`, or `None` when no arm has a positive weight.
pub fn assign(experiment: &str, key: &[u8], arms: &[Arm<'_>]) -> Option<usize> {
    let seed = xxhash_rust::xxh3::xxh3_64(experiment.as_bytes());
    let key_hash = xxhash_rust::xxh3::xxh3_64_with_seed(key, seed);
    let mut best: Option<(f64, usize)> = None;
    for (i, arm) in arms.iter().enumerate() {
        if arm.weight.is_nan() || arm.weight <= 0.0 {
            continue;
        }
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(arm.name.as_bytes(), key_hash);
        let score = arm.weight / -unit(h).ln();
        if best.is_none_or(|(top, _)| score > top) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i)
}

/// Maps 64 random bits to (0, 1), never 0 or 1.
fn unit(h: u64) -> f64 {
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEYS: u32 = 10_000;

    fn split(arms: &[Arm<'_>]) -> Vec<usize> {
        (0..KEYS)
            .map(|k| assign("exp", format!("user-{k}").as_bytes(), arms).expect("an arm"))
            .collect()
    }

    #[test]
    fn ten_thousand_keys_split_seventy_thirty_within_two_percent() {
        let arms = [
            Arm {
                name: "vllm",
                weight: 70.0,
            },
            Arm {
                name: "sglang",
                weight: 30.0,
            },
        ];
        let assigned = split(&arms);
        let share = assigned.iter().filter(|&&a| a == 0).count() as f64 / f64::from(KEYS);
        assert!((0.68..=0.72).contains(&share), "vllm share {share}");
    }

    #[test]
    fn the_same_key_always_gets_the_same_arm() {
        let arms = [
            Arm {
                name: "a",
                weight: 1.0,
            },
            Arm {
                name: "b",
                weight: 1.0,
            },
        ];
        assert_eq!(split(&arms), split(&arms));
        let other = (0..KEYS)
            .map(|k| assign("other-experiment", format!("user-{k}").as_bytes(), &arms))
            .collect::<Vec<_>>();
        assert_ne!(
            other,
            split(&arms).into_iter().map(Some).collect::<Vec<_>>()
        );
    }

    #[test]
    fn changing_one_arm_moves_only_what_the_weights_require() {
        let before = [
            Arm {
                name: "a",
                weight: 60.0,
            },
            Arm {
                name: "b",
                weight: 20.0,
            },
            Arm {
                name: "c",
                weight: 20.0,
            },
        ];
        let after = [
            Arm {
                name: "a",
                weight: 60.0,
            },
            Arm {
                name: "b",
                weight: 20.0,
            },
            Arm {
                name: "c",
                weight: 40.0,
            },
        ];
        let (x, y) = (split(&before), split(&after));
        let moved: Vec<(usize, usize)> = x
            .iter()
            .zip(&y)
            .filter(|(p, q)| p != q)
            .map(|(p, q)| (*p, *q))
            .collect();
        assert!(
            moved.iter().all(|&(_, to)| to == 2),
            "keys only move into the grown arm"
        );
        // Required: c grows from 20% to 33.3%, so 13.3% of keys must move.
        let share = moved.len() as f64 / f64::from(KEYS);
        assert!((0.113..=0.153).contains(&share), "moved {share}");
    }

    #[test]
    fn zero_weights_never_win() {
        let arms = [
            Arm {
                name: "off",
                weight: 0.0,
            },
            Arm {
                name: "on",
                weight: 1.0,
            },
        ];
        assert!(split(&arms).iter().all(|&a| a == 1));
        assert_eq!(
            assign(
                "e",
                b"k",
                &[Arm {
                    name: "off",
                    weight: 0.0
                }]
            ),
            None
        );
    }

    proptest! {
        #[test]
        fn assignment_is_a_function_of_its_inputs(key: Vec<u8>, w1 in 0.1f64..10.0, w2 in 0.1f64..10.0) {
            let arms = [Arm { name: "a", weight: w1 }, Arm { name: "b", weight: w2 }];
            prop_assert_eq!(assign("e", &key, &arms), assign("e", &key, &arms));
            prop_assert!(assign("e", &key, &arms).is_some());
        }
    }
}
