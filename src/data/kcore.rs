//! k-core filtering: repeatedly drop users and items with too few interactions.

use super::interactions::{Columns, Interactions};
use crate::error::{RecforgeError, Result};

/// The result of [`k_core`].
#[derive(Debug, Clone)]
pub struct KCore {
    /// The filtered interactions, re-indexed to dense ids `0..kept_users.len()` and
    /// `0..kept_items.len()`; entries keep their original row index.
    pub interactions: Interactions,
    /// Old user id of each new user id (ascending).
    pub kept_users: Vec<u32>,
    /// Old item id of each new item id (ascending).
    pub kept_items: Vec<u32>,
    /// Number of filtering passes until nothing changed.
    pub rounds: u32,
}

/// Keeps the largest sub-graph in which every user has at least `user_k` interactions and every
/// item at least `item_k` (the k-core), by alternately dropping users and items below the
/// thresholds until nothing changes. Users and items left with no interactions are removed from
/// the id space. Duplicate (user, item) entries each count once per entry.
pub fn k_core(x: &Interactions, user_k: u32, item_k: u32) -> Result<KCore> {
    if user_k == 0 && item_k == 0 {
        return Err(RecforgeError::config(
            "k_core needs user_k or item_k >= 1 (0 and 0 would keep everything, including empty users)",
        ));
    }
    let n_entries = x.n_interactions();
    let cols = x.to_columns();
    let mut alive = vec![true; n_entries];
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut udeg = vec![0u32; x.n_users() as usize];
        let mut ideg = vec![0u32; x.n_items() as usize];
        for e in (0..n_entries).filter(|&e| alive[e]) {
            udeg[cols.users[e] as usize] += 1;
            ideg[cols.items[e] as usize] += 1;
        }
        let mut changed = false;
        for e in 0..n_entries {
            if alive[e]
                && (udeg[cols.users[e] as usize] < user_k || ideg[cols.items[e] as usize] < item_k)
            {
                alive[e] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Re-index the survivors.
    let mut user_new = vec![u32::MAX; x.n_users() as usize];
    let mut item_new = vec![u32::MAX; x.n_items() as usize];
    for e in (0..n_entries).filter(|&e| alive[e]) {
        user_new[cols.users[e] as usize] = 0;
        item_new[cols.items[e] as usize] = 0;
    }
    let mut kept_users = Vec::new();
    for (old, slot) in user_new.iter_mut().enumerate() {
        if *slot == 0 {
            *slot = kept_users.len() as u32;
            kept_users.push(old as u32);
        }
    }
    let mut kept_items = Vec::new();
    for (old, slot) in item_new.iter_mut().enumerate() {
        if *slot == 0 {
            *slot = kept_items.len() as u32;
            kept_items.push(old as u32);
        }
    }
    let pick = |e: &usize| alive[*e];
    let idx: Vec<usize> = (0..n_entries).filter(pick).collect();
    let new_cols = Columns {
        users: idx
            .iter()
            .map(|&e| user_new[cols.users[e] as usize])
            .collect(),
        items: idx
            .iter()
            .map(|&e| item_new[cols.items[e] as usize])
            .collect(),
        ratings: cols
            .ratings
            .as_ref()
            .map(|r| idx.iter().map(|&e| r[e]).collect()),
        timestamps: cols
            .timestamps
            .as_ref()
            .map(|t| idx.iter().map(|&e| t[e]).collect()),
        rows: idx.iter().map(|&e| cols.rows[e]).collect(),
    };
    Ok(KCore {
        interactions: Interactions::from_columns(
            new_cols,
            kept_users.len() as u32,
            kept_items.len() as u32,
        ),
        kept_users,
        kept_items,
        rounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_core_by_hand() {
        // user 0: items 0,1 ; user 1: items 0,1,2 ; user 2: item 3 ; user 3: items 2, 3
        // Item 2 (users 1,3), item 3 (users 2,3) have degree 2; user 2 has degree 1 -> dropped,
        // then item 3 has degree 1 -> dropped, then user 3 has degree 1 -> dropped, then item 2
        // has degree 1 -> dropped. Left: users 0,1 with items 0,1.
        let users = [0, 0, 1, 1, 1, 2, 3, 3];
        let items = [0, 1, 0, 1, 2, 3, 2, 3];
        let x = Interactions::from_arrays(&users, &items, None, None, None, None).unwrap();
        let k = k_core(&x, 2, 2).unwrap();
        assert_eq!(k.kept_users, vec![0, 1]);
        assert_eq!(k.kept_items, vec![0, 1]);
        assert_eq!(k.interactions.n_interactions(), 4);
        assert_eq!(k.interactions.rows(), &[0, 1, 2, 3]);
        assert!(k.rounds >= 3);
        for d in k.interactions.user_degrees() {
            assert!(d >= 2);
        }
        for d in k.interactions.item_degrees() {
            assert!(d >= 2);
        }
    }

    #[test]
    fn k_zero_is_a_config_error() {
        let x = Interactions::from_arrays(&[0], &[0], None, None, None, None).unwrap();
        assert!(matches!(k_core(&x, 0, 0), Err(RecforgeError::Config(_))));
    }
}
