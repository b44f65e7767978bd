//! Maps between raw ids (strings or integers, as they appear in the data files) and dense ids
//! `0..n`, in order of first appearance.

use std::collections::HashMap;
use std::hash::Hash;

use crate::error::{RecforgeError, Result};

/// A bijection between raw ids of type `K` and dense `u32` ids numbered by first appearance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdMap<K: Eq + Hash + Clone> {
    to_dense: HashMap<K, u32>,
    to_raw: Vec<K>,
}

impl<K: Eq + Hash + Clone + std::fmt::Debug> IdMap<K> {
    /// An empty map.
    pub fn new() -> Self {
        Self {
            to_dense: HashMap::new(),
            to_raw: Vec::new(),
        }
    }

    /// Builds a map from raw ids, one id per entry (repeats allowed), returning the map and the
    /// dense id of every entry.
    pub fn fit(raw: impl IntoIterator<Item = K>) -> Result<(Self, Vec<u32>)> {
        let mut map = Self::new();
        let dense = raw
            .into_iter()
            .map(|k| map.insert(k))
            .collect::<Result<Vec<_>>>()?;
        Ok((map, dense))
    }

    /// Builds a map from distinct raw ids; a repeated id is an error naming its position.
    pub fn from_unique(raw: impl IntoIterator<Item = K>) -> Result<Self> {
        let mut map = Self::new();
        for (pos, k) in raw.into_iter().enumerate() {
            if map.to_dense.contains_key(&k) {
                return Err(RecforgeError::data(format!(
                    "id {k:?} appears twice (again at position {pos})"
                )));
            }
            map.insert(k)?;
        }
        Ok(map)
    }

    /// Dense id of `k`, adding it if new.
    pub fn insert(&mut self, k: K) -> Result<u32> {
        if let Some(&d) = self.to_dense.get(&k) {
            return Ok(d);
        }
        let d = u32::try_from(self.to_raw.len())
            .ok()
            .filter(|&d| d < u32::MAX)
            .ok_or_else(|| RecforgeError::data("more than 4,294,967,294 distinct ids"))?;
        self.to_dense.insert(k.clone(), d);
        self.to_raw.push(k);
        Ok(d)
    }

    /// Dense id of `k`, if known.
    pub fn get(&self, k: &K) -> Option<u32> {
        self.to_dense.get(k).copied()
    }

    /// Dense ids of raw ids; an unknown id is an error naming it and its position.
    pub fn encode<'a>(&self, raw: impl IntoIterator<Item = &'a K>) -> Result<Vec<u32>>
    where
        K: 'a,
    {
        raw.into_iter()
            .enumerate()
            .map(|(pos, k)| {
                self.get(k).ok_or_else(|| {
                    RecforgeError::data(format!("unknown id {k:?} at position {pos}"))
                })
            })
            .collect()
    }

    /// Raw id of dense id `d`; an out-of-range id is an error.
    pub fn decode(&self, d: u32) -> Result<&K> {
        self.to_raw.get(d as usize).ok_or_else(|| {
            RecforgeError::data(format!(
                "dense id {d} is out of range (size {})",
                self.len()
            ))
        })
    }

    /// Raw ids in dense order.
    pub fn raw(&self) -> &[K] {
        &self.to_raw
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.to_raw.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.to_raw.is_empty()
    }

    /// The map restricted to dense ids `keep` (ascending or not), re-numbered in that order.
    pub fn subset(&self, keep: &[u32]) -> Result<Self> {
        let mut out = Self::new();
        for &d in keep {
            out.insert(self.decode(d)?.clone())?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_appearance_order_and_round_trip() {
        let (m, dense) = IdMap::fit(["b", "a", "b", "c"].map(String::from)).unwrap();
        assert_eq!(dense, vec![0, 1, 0, 2]);
        assert_eq!(m.raw(), &["b", "a", "c"].map(String::from));
        assert_eq!(m.decode(2).unwrap(), "c");
        assert!(m.decode(3).is_err());
        let e = m.encode([&"z".to_string()]).unwrap_err();
        assert!(e.to_string().contains("\"z\""), "{e}");
        let s = m.subset(&[2, 0]).unwrap();
        assert_eq!(s.raw(), &["c", "b"].map(String::from));
    }

    #[test]
    fn from_unique_rejects_repeats() {
        assert!(IdMap::from_unique([1i64, 2, 1]).is_err());
        assert_eq!(IdMap::from_unique([5i64, 3]).unwrap().get(&3), Some(1));
    }
}
