//! The calls waiting in one lane of a budget, served in turns by party.
//!
//! A party is whoever the call is for (the tenant, in a budget that several tenants share
//! through one credential). Parties take turns, one call each; within a party calls keep
//! their order. So a tenant that queues 2,000 calls on a shared budget delays another
//! tenant's call by about one call per waiting party, not by 2,000. In a budget of its own a
//! tenant is the only party and the queue is plain first come, first served.
//!
//! An idle queue is one pointer. A call finds its party's queue by a hash lookup, so a
//! decision costs the same with one waiting tenant or thousands; only [`FairQueue::ahead_of`]
//! for a party that already has calls waiting walks the waiting parties.

use std::collections::{HashMap, VecDeque};

#[derive(Debug)]
struct Turns<T> {
    /// Each waiting party's items, in arrival order.
    queues: HashMap<u64, VecDeque<T>>,
    /// Parties with items, in the order of their next turn.
    order: VecDeque<u64>,
    len: usize,
}

/// A round-robin queue over parties, each party's items in arrival order.
#[derive(Debug)]
pub struct FairQueue<T> {
    /// Allocated on first use and kept (a budget that queued once is likely to again).
    turns: Option<Box<Turns<T>>>,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue { turns: None }
    }
}

impl<T> FairQueue<T> {
    pub fn len(&self) -> usize {
        self.turns.as_ref().map_or(0, |t| t.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items `party` already has waiting.
    pub fn len_of(&self, party: u64) -> usize {
        self.turns
            .as_ref()
            .and_then(|t| t.queues.get(&party))
            .map_or(0, VecDeque::len)
    }

    /// How many items are served before one that `party` adds now: its own queue, plus at
    /// most as many of every other party's (they alternate).
    pub fn ahead_of(&self, party: u64) -> usize {
        let Some(t) = &self.turns else { return 0 };
        let own = self.len_of(party);
        if own == 0 {
            // One of each waiting party goes first.
            return t.order.len();
        }
        t.queues
            .iter()
            .map(|(p, q)| {
                if *p == party {
                    own
                } else {
                    q.len().min(own + 1)
                }
            })
            .sum()
    }

    pub fn push(&mut self, party: u64, item: T) {
        let t = self.turns.get_or_insert_with(|| {
            Box::new(Turns {
                queues: HashMap::new(),
                order: VecDeque::new(),
                len: 0,
            })
        });
        t.len += 1;
        let queue = t.queues.entry(party).or_default();
        if queue.is_empty() {
            t.order.push_back(party);
        }
        queue.push_back(item);
    }

    /// The item served next.
    pub fn head(&self) -> Option<&T> {
        let t = self.turns.as_ref()?;
        t.queues.get(t.order.front()?)?.front()
    }

    /// Takes the item served next; its party's turn passes to the next party.
    pub fn pop(&mut self) -> Option<T> {
        let t = self.turns.as_mut()?;
        let party = t.order.pop_front()?;
        let queue = t.queues.get_mut(&party)?;
        let item = queue.pop_front();
        if queue.is_empty() {
            t.queues.remove(&party);
        } else {
            t.order.push_back(party);
        }
        if item.is_some() {
            t.len -= 1;
        }
        item
    }

    /// Removes the first item that matches; returns whether one did.
    pub fn remove_first(&mut self, mut matches: impl FnMut(&T) -> bool) -> bool {
        let Some(t) = self.turns.as_mut() else {
            return false;
        };
        let found = t.queues.iter_mut().find_map(|(party, queue)| {
            let at = queue.iter().position(&mut matches)?;
            queue.remove(at);
            Some((*party, queue.is_empty()))
        });
        match found {
            Some((party, emptied)) => {
                if emptied {
                    t.queues.remove(&party);
                    t.order.retain(|p| *p != party);
                }
                t.len -= 1;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parties_take_turns_and_keep_their_own_order() {
        let mut q = FairQueue::default();
        for i in 0..5 {
            q.push(1, ("a", i));
        }
        q.push(2, ("b", 0));
        q.push(3, ("c", 0));
        q.push(2, ("b", 1));
        assert_eq!(q.len(), 8);
        assert_eq!(q.ahead_of(4), 3, "one of each waiting party");
        assert_eq!(
            q.ahead_of(2),
            2 + 3 + 1,
            "its own two, three of a's, c's one"
        );
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            vec![
                ("a", 0),
                ("b", 0),
                ("c", 0),
                ("a", 1),
                ("b", 1),
                ("a", 2),
                ("a", 3),
                ("a", 4)
            ]
        );
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn removing_the_last_item_of_a_party_drops_its_turn() {
        let mut q = FairQueue::default();
        q.push(1, 10);
        q.push(2, 20);
        q.push(1, 11);
        assert!(q.remove_first(|x| *x == 20));
        assert!(!q.remove_first(|x| *x == 20));
        assert_eq!(q.len(), 2);
        assert_eq!(q.len_of(2), 0);
        assert_eq!(q.pop(), Some(10));
        assert_eq!(q.pop(), Some(11));
    }
}
