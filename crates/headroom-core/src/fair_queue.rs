//! The calls waiting in one lane of a budget, served in turns by party.
//!
//! A party is whoever the call is for (the tenant, in a budget that several tenants share
//! through one credential). Parties take turns, one call each; within a party calls keep
//! their order. So a tenant that queues 2,000 calls on a shared budget delays another
//! tenant's call by about one call per waiting party, not by 2,000. In a budget of its own a
//! tenant is the only party and the queue is plain first come, first served.
//!
//! An empty queue holds no allocation. Finding a party's place is a scan of the parties
//! that have calls waiting (not of the calls), which is short in practice.

use std::collections::VecDeque;

#[derive(Debug)]
struct Turn<T> {
    party: u64,
    items: VecDeque<T>,
}

/// A round-robin queue over parties, each party's items in arrival order.
#[derive(Debug)]
pub struct FairQueue<T> {
    /// Parties with items, in the order of their next turn.
    turns: VecDeque<Turn<T>>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            turns: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items `party` already has waiting.
    pub fn len_of(&self, party: u64) -> usize {
        self.turns
            .iter()
            .find(|t| t.party == party)
            .map_or(0, |t| t.items.len())
    }

    /// How many items are served before one that `party` adds now: its own queue, plus at
    /// most as many of every other party's (they alternate).
    pub fn ahead_of(&self, party: u64) -> usize {
        let own = self.len_of(party);
        self.turns
            .iter()
            .map(|t| {
                if t.party == party {
                    own
                } else {
                    t.items.len().min(own + 1)
                }
            })
            .sum()
    }

    pub fn push(&mut self, party: u64, item: T) {
        self.len += 1;
        match self.turns.iter_mut().find(|t| t.party == party) {
            Some(turn) => turn.items.push_back(item),
            None => self.turns.push_back(Turn {
                party,
                items: VecDeque::from([item]),
            }),
        }
    }

    /// The item served next.
    pub fn head(&self) -> Option<&T> {
        self.turns.front().and_then(|t| t.items.front())
    }

    /// Takes the item served next; its party's turn passes to the next party.
    pub fn pop(&mut self) -> Option<T> {
        let mut turn = self.turns.pop_front()?;
        let item = turn.items.pop_front();
        if !turn.items.is_empty() {
            self.turns.push_back(turn);
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    /// Removes the first item that matches; returns whether one did.
    pub fn remove_first(&mut self, mut matches: impl FnMut(&T) -> bool) -> bool {
        for i in 0..self.turns.len() {
            let turn = &mut self.turns[i];
            if let Some(at) = turn.items.iter().position(&mut matches) {
                turn.items.remove(at);
                if turn.items.is_empty() {
                    self.turns.remove(i);
                }
                self.len -= 1;
                return true;
            }
        }
        false
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
