//! k-core filtering: repeatedly drop users and items with too few interactions.

use super::interactions::Interactions;
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
}

/// Keeps the largest sub-graph in which every user has at least `user_k` interactions and every
/// item at least `item_k` (the k-core), by alternately dropping users and items below the
/// thresholds until nothing changes (by peeling, in time linear in the number of entries). Users and items left with no interactions are removed from
/// the id space. Duplicate (user, item) entries each count once per entry.
pub fn k_core(x: &Interactions, user_k: u32, item_k: u32) -> Result<KCore> {
    if user_k == 0 && item_k == 0 {
        return Err(RecforgeError::config(
            "k_core needs user_k or item_k >= 1 (0 and 0 would keep everything, including empty users)",
        ));
    }
    let n_entries = x.n_interactions();
    let cols = x.to_columns();
    let (n_users, n_items) = (x.n_users() as usize, x.n_items() as usize);
    // Peeling: remove every user/item below its threshold, which lowers its neighbours' degrees,
    // which may put them below theirs; each entry is removed at most once, so this is O(entries).
    let mut udeg = x.user_degrees();
    let mut ideg = x.item_degrees();
    // Entries of each item (CSC), to walk an item's users when it is removed.
    let mut item_ptr = vec![0usize; n_items + 1];
    for &i in &cols.items {
        item_ptr[i as usize + 1] += 1;
    }
    for i in 0..n_items {
        item_ptr[i + 1] += item_ptr[i];
    }
    let mut item_entries = vec![0usize; n_entries];
    let mut fill = item_ptr.clone();
    for (e, &i) in cols.items.iter().enumerate() {
        item_entries[fill[i as usize]] = e;
        fill[i as usize] += 1;
    }
    enum Node {
        User(usize),
        Item(usize),
    }
    let mut alive = vec![true; n_entries];
    let mut user_dead = vec![false; n_users];
    let mut item_dead = vec![false; n_items];
    let mut stack = Vec::new();
    for u in 0..n_users {
        if udeg[u] < user_k {
            user_dead[u] = true;
            stack.push(Node::User(u));
        }
    }
    for i in 0..n_items {
        if ideg[i] < item_k {
            item_dead[i] = true;
            stack.push(Node::Item(i));
        }
    }
    while let Some(node) = stack.pop() {
        match node {
            Node::User(u) => {
                for e in x.user_range(u as u32) {
                    if std::mem::take(&mut alive[e]) {
                        let i = cols.items[e] as usize;
                        ideg[i] -= 1;
                        if !item_dead[i] && ideg[i] < item_k {
                            item_dead[i] = true;
                            stack.push(Node::Item(i));
                        }
                    }
                }
            }
            Node::Item(i) => {
                for &e in &item_entries[item_ptr[i]..item_ptr[i + 1]] {
                    if std::mem::take(&mut alive[e]) {
                        let u = cols.users[e] as usize;
                        udeg[u] -= 1;
                        if !user_dead[u] && udeg[u] < user_k {
                            user_dead[u] = true;
                            stack.push(Node::User(u));
                        }
                    }
                }
            }
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
    // Survivors keep their order (user-major, time order within a user) and both re-numberings
    // are monotone, so the filtered CSR needs no new sort.
    let interactions = x.select(&alive)?.renumbered(&kept_users, &item_new);
    Ok(KCore {
        interactions,
        kept_users,
        kept_items,
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
