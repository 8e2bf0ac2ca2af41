//! A block-level prefix KV cache with LRU eviction, the way vLLM's automatic prefix caching
//! and SGLang's RadixAttention behave from the outside.
//!
//! The prompt is cut into blocks of `block_tokens` simulated tokens (4 bytes each); only full
//! blocks are cached. Block `i` is identified by a chained hash `h_i = xxh3(block_i, seed =
//! h_{i-1})`, so a block matches only when everything before it matches too. A prompt's cached
//! prefix is the run of leading blocks present. At most `capacity` blocks are kept; inserting
//! past that evicts the least recently used, a chain's tail before its head. As in vLLM, at least the last prompt token is always
//! recomputed, so a fully cached prompt reports `prompt_tokens − 1` rounded down to a block.
//!
//! Lookup and insert are O(blocks · log capacity): a hash map from block hash to its last-use
//! tick, and an ordered map from tick to hash for eviction.

use std::collections::{BTreeMap, HashMap};

use crate::mock::text::BYTES_PER_TOKEN;

/// The chained block hashes of a text's full blocks.
pub fn block_hashes(text: &str, block_tokens: usize) -> Vec<u64> {
    let block_bytes = (block_tokens * BYTES_PER_TOKEN).max(1);
    let mut prev = 0u64;
    text.as_bytes()
        .chunks_exact(block_bytes)
        .map(|block| {
            prev = xxhash_rust::xxh3::xxh3_64_with_seed(block, prev);
            prev
        })
        .collect()
}

/// The cache of one replica.
#[derive(Debug)]
pub struct PrefixCache {
    block_tokens: usize,
    capacity: usize,
    tick: u64,
    last_used: HashMap<u64, u64>,
    by_age: BTreeMap<u64, u64>,
}

impl PrefixCache {
    /// An empty cache of `capacity` blocks of `block_tokens` tokens.
    pub fn new(block_tokens: usize, capacity: usize) -> Self {
        Self {
            block_tokens: block_tokens.max(1),
            capacity,
            tick: 0,
            last_used: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    /// Tokens per block.
    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// Blocks held now.
    pub fn len(&self) -> usize {
        self.last_used.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty()
    }

    /// Cached prompt tokens for a prompt of `prompt_tokens` whose full blocks hash to `blocks`;
    /// marks the matched blocks as just used.
    pub fn lookup(&mut self, blocks: &[u64], prompt_tokens: u64) -> u64 {
        let matched = blocks
            .iter()
            .take_while(|hash| self.last_used.contains_key(hash))
            .count();
        self.touch_chain(&blocks[..matched]);
        let limit = prompt_tokens.saturating_sub(1) / self.block_tokens as u64;
        (matched as u64).min(limit) * self.block_tokens as u64
    }

    /// Caches (or refreshes) these blocks, evicting the least recently used past capacity.
    pub fn insert(&mut self, blocks: &[u64]) {
        if self.capacity == 0 {
            return;
        }
        self.touch_chain(blocks);
        while self.last_used.len() > self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.last_used.remove(&oldest);
        }
    }

    /// Marks a chain as used, tail first, so that under pressure a prompt loses its tail before
    /// its head (a lost head makes the whole chain unreachable; vLLM frees tails first too).
    fn touch_chain(&mut self, blocks: &[u64]) {
        for &hash in blocks.iter().rev() {
            self.touch(hash);
        }
    }

    fn touch(&mut self, hash: u64) {
        self.tick += 1;
        if let Some(old) = self.last_used.insert(hash, self.tick) {
            self.by_age.remove(&old);
        }
        self.by_age.insert(self.tick, hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(blocks: usize, fill: char) -> String {
        std::iter::repeat_n(fill, blocks * 4 * BYTES_PER_TOKEN).collect()
    }

    #[test]
    fn chained_hashes_depend_on_everything_before() {
        let a = block_hashes(&format!("{}{}", text(1, 'a'), text(1, 'c')), 4);
        let b = block_hashes(&format!("{}{}", text(1, 'b'), text(1, 'c')), 4);
        assert_eq!(a.len(), 2);
        assert_ne!(
            a[1], b[1],
            "same second block after a different first block"
        );
        assert_eq!(
            block_hashes("short", 4).len(),
            0,
            "partial blocks are not cached"
        );
    }

    #[test]
    fn leading_run_of_blocks_is_the_cached_prefix() {
        let mut cache = PrefixCache::new(4, 100);
        let first = block_hashes(&format!("{}{}", text(2, 'x'), text(2, 'y')), 4);
        assert_eq!(cache.lookup(&first, 100), 0);
        cache.insert(&first);
        assert_eq!(cache.lookup(&first, 100), 4 * 4);
        let diverging = block_hashes(&format!("{}{}", text(2, 'x'), text(2, 'z')), 4);
        assert_eq!(cache.lookup(&diverging, 100), 2 * 4);
    }

    #[test]
    fn a_fully_cached_prompt_recomputes_its_last_token() {
        let mut cache = PrefixCache::new(4, 100);
        let blocks = block_hashes(&text(3, 'q'), 4);
        cache.insert(&blocks);
        assert_eq!(
            cache.lookup(&blocks, 12),
            8,
            "12 tokens: 11 reusable → 2 full blocks"
        );
        assert_eq!(cache.lookup(&blocks, 13), 12);
    }

    #[test]
    fn least_recently_used_blocks_are_evicted() {
        let mut cache = PrefixCache::new(4, 4);
        let a = block_hashes(&text(2, 'a'), 4);
        let b = block_hashes(&text(2, 'b'), 4);
        let c = block_hashes(&text(2, 'c'), 4);
        cache.insert(&a);
        cache.insert(&b);
        assert_eq!(cache.lookup(&a, 100), 8, "touch a: b is now the oldest");
        cache.insert(&c);
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.lookup(&b, 100), 0, "b was evicted");
        assert_eq!(cache.lookup(&a, 100), 8);
        assert_eq!(cache.lookup(&c, 100), 8);
    }
}
