//! [`SettleWindow`]: the longest settled prefix of an ordered sequence of deliveries.
//!
//! Deliveries enter in order ([`SettleWindow::push`]) and settle in any order
//! ([`SettleWindow::settle`]). The window reports the last delivery before which every
//! delivery is settled — for SSE, the event whose id becomes the checkpoint; for AMQP, the
//! delivery tag up to which one `multiple` ack can cover everything.
//!
//! It is generic over what an entry carries and keeps only what can still matter: the
//! unsettled entries, the settled entry just before each of them (it becomes the prefix's end
//! when that one settles) and the newest entry. One slow delivery at the front therefore
//! costs two entries, however much traffic settles behind it.
//!
//! (It lives in the SSE crate for now; nothing in it is SSE-specific, so it can move to core
//! and serve AMQP's ack coalescing unchanged.)

use std::collections::BTreeMap;
use std::fmt;

/// A position in a [`SettleWindow`], returned by [`SettleWindow::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seq(u64);

impl Seq {
    /// The position as a number (0 for the first entry pushed).
    pub fn get(self) -> u64 {
        self.0
    }
}

struct Entry<T> {
    value: T,
    settled: bool,
}

/// The longest settled prefix of an ordered sequence. See the [module docs](self).
///
/// ```
/// use asyncworker_sse::window::SettleWindow;
///
/// let mut window = SettleWindow::new();
/// let a = window.push("a");
/// let b = window.push("b");
/// let c = window.push("c");
/// assert_eq!(window.settle(b), None); // `a` is still open: the prefix does not move
/// assert_eq!(window.settle(a), Some(&"b")); // a and b settled: the prefix ends at b
/// assert_eq!(window.settle(c), Some(&"c"));
/// assert_eq!(window.prefix_end(), Some(&"c"));
/// ```
pub struct SettleWindow<T> {
    entries: BTreeMap<u64, Entry<T>>,
    next: u64,
    /// The last entry of the settled prefix.
    end: Option<T>,
    unsettled: usize,
}

impl<T> Default for SettleWindow<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: fmt::Debug> fmt::Debug for SettleWindow<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SettleWindow")
            .field("prefix_end", &self.prefix_end())
            .field("unsettled", &self.unsettled)
            .field("retained", &self.entries.len())
            .finish()
    }
}

impl<T> SettleWindow<T> {
    /// An empty window.
    pub fn new() -> Self {
        SettleWindow {
            entries: BTreeMap::new(),
            next: 0,
            end: None,
            unsettled: 0,
        }
    }

    /// A window whose settled prefix already ends at `value` (a checkpoint loaded from a
    /// store, say).
    pub fn starting_at(value: T) -> Self {
        let mut window = Self::new();
        window.end = Some(value);
        window
    }

    /// Add the next delivery, unsettled.
    pub fn push(&mut self, value: T) -> Seq {
        let seq = self.next;
        self.next += 1;
        self.entries.insert(
            seq,
            Entry {
                value,
                settled: false,
            },
        );
        self.unsettled += 1;
        Seq(seq)
    }

    /// Settle `seq`. Returns the new end of the settled prefix when it moved; `None` when it
    /// did not, or when `seq` was already settled (settling is idempotent).
    pub fn settle(&mut self, seq: Seq) -> Option<&T> {
        let k = seq.0;
        let entry = self.entries.get_mut(&k)?;
        if entry.settled {
            return None;
        }
        entry.settled = true;
        self.unsettled -= 1;
        // The settled entry before `k` was kept only as the end-to-be of the prefix before
        // `k`; with `k` settled it can no longer be that.
        if let Some(prev) = k.checked_sub(1)
            && self.entries.get(&prev).is_some_and(|e| e.settled)
        {
            self.entries.remove(&prev);
        }
        // Keep `k` only while it can still end the prefix: its successor is unsettled, or it
        // is the newest entry. (A successor missing from the map was settled and dropped.)
        let keep = k + 1 == self.next || self.entries.get(&(k + 1)).is_some_and(|e| !e.settled);
        if !keep {
            self.entries.remove(&k);
        }
        // Move the prefix forward over settled entries at the front.
        let mut moved = false;
        while let Some(entry) = self.entries.first_entry() {
            if !entry.get().settled {
                break;
            }
            self.end = Some(entry.remove().value);
            moved = true;
        }
        if moved { self.prefix_end() } else { None }
    }

    /// Add a delivery that is settled on arrival (an SSE block that only moves the id).
    pub fn push_settled(&mut self, value: T) -> Option<&T> {
        let seq = self.push(value);
        self.settle(seq)
    }

    /// The last entry of the settled prefix, if any entry (or the starting value) is there.
    pub fn prefix_end(&self) -> Option<&T> {
        self.end.as_ref()
    }

    /// How many entries are unsettled.
    pub fn unsettled(&self) -> usize {
        self.unsettled
    }

    /// How many entries the window holds (unsettled ones and their settled neighbours).
    pub fn retained(&self) -> usize {
        self.entries.len()
    }

    /// Whether `seq` is unsettled.
    pub fn is_unsettled(&self, seq: Seq) -> bool {
        self.entries.get(&seq.0).is_some_and(|e| !e.settled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_settlement_moves_the_prefix_each_time() {
        let mut w = SettleWindow::new();
        let seqs: Vec<_> = (0..5).map(|i| w.push(i)).collect();
        for (i, seq) in seqs.into_iter().enumerate() {
            assert_eq!(w.settle(seq), Some(&i));
        }
        assert_eq!(w.retained(), 0);
        assert_eq!(w.unsettled(), 0);
    }

    #[test]
    fn out_of_order_settlement_waits_for_the_front() {
        let mut w = SettleWindow::new();
        let s: Vec<_> = (0..4).map(|i| w.push(i)).collect();
        assert_eq!(w.settle(s[2]), None);
        assert_eq!(w.settle(s[1]), None);
        assert_eq!(w.settle(s[3]), None);
        assert_eq!(w.prefix_end(), None);
        assert_eq!(w.settle(s[0]), Some(&3));
        assert_eq!(w.retained(), 0);
    }

    #[test]
    fn a_gap_in_the_middle_holds_the_prefix_before_it() {
        let mut w = SettleWindow::new();
        let s: Vec<_> = (0..5).map(|i| w.push(i)).collect();
        w.settle(s[0]);
        w.settle(s[1]);
        w.settle(s[3]);
        w.settle(s[4]);
        assert_eq!(w.prefix_end(), Some(&1));
        assert!(w.is_unsettled(s[2]));
        assert_eq!(w.settle(s[2]), Some(&4));
    }

    #[test]
    fn settling_twice_or_unknown_is_a_no_op() {
        let mut w = SettleWindow::new();
        let a = w.push('a');
        let b = w.push('b');
        assert_eq!(w.settle(a), Some(&'a'));
        assert_eq!(w.settle(a), None);
        assert_eq!(w.settle(Seq(99)), None);
        assert_eq!(w.unsettled(), 1);
        assert_eq!(w.settle(b), Some(&'b'));
    }

    #[test]
    fn one_slow_front_entry_keeps_only_live_entries() {
        let mut w = SettleWindow::new();
        let slow = w.push(0);
        for i in 1..10_000 {
            let seq = w.push(i);
            assert_eq!(w.settle(seq), None);
            assert!(w.retained() <= 2, "retained {} at {i}", w.retained());
        }
        assert_eq!(w.settle(slow), Some(&9_999));
    }

    #[test]
    fn many_open_entries_keep_their_predecessors() {
        let mut w = SettleWindow::new();
        let s: Vec<_> = (0..10).map(|i| w.push(i)).collect();
        // Settle the even ones: each odd one stays, with the even one before it.
        for seq in s.iter().step_by(2) {
            w.settle(*seq);
        }
        assert_eq!(w.prefix_end(), Some(&0));
        assert_eq!(w.unsettled(), 5);
        w.settle(s[1]);
        assert_eq!(w.prefix_end(), Some(&2));
        w.settle(s[5]);
        assert_eq!(w.prefix_end(), Some(&2));
        w.settle(s[3]);
        assert_eq!(w.prefix_end(), Some(&6));
        w.settle(s[9]);
        w.settle(s[7]);
        assert_eq!(w.prefix_end(), Some(&9));
        assert_eq!(w.retained(), 0);
    }

    #[test]
    fn starting_value_and_settled_pushes() {
        let mut w = SettleWindow::starting_at("loaded");
        assert_eq!(w.prefix_end(), Some(&"loaded"));
        let a = w.push("a");
        assert_eq!(w.push_settled("position"), None);
        assert_eq!(w.prefix_end(), Some(&"loaded"));
        assert_eq!(w.settle(a), Some(&"position"));
    }

    /// Pushes, settled pushes and settlements interleaved at random (as a stream does while
    /// its events settle) agree with a plain scan, and the window stays small.
    #[test]
    fn interleaved_pushes_and_settlements_match_a_plain_scan() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..500 {
            let mut w = SettleWindow::new();
            let mut seqs = Vec::new();
            let mut settled: Vec<bool> = Vec::new();
            for _ in 0..200 {
                match next() % 5 {
                    0 | 1 => {
                        seqs.push(w.push(seqs.len()));
                        settled.push(false);
                    }
                    2 => {
                        // Entries are numbered in push order, so this is its `Seq`.
                        seqs.push(Seq(seqs.len() as u64));
                        w.push_settled(seqs.len() - 1);
                        settled.push(true);
                    }
                    _ if !seqs.is_empty() => {
                        let i = (next() % seqs.len() as u64) as usize;
                        w.settle(seqs[i]);
                        settled[i] = true;
                    }
                    _ => {}
                }
                let expected = settled.iter().take_while(|s| **s).count().checked_sub(1);
                assert_eq!(w.prefix_end().copied(), expected);
                let open = settled.iter().filter(|s| !**s).count();
                assert_eq!(w.unsettled(), open);
                assert!(w.retained() <= 2 * open + 1, "{} for {open}", w.retained());
            }
        }
    }

    /// Every settlement order of 6 entries gives the same prefix as a plain scan.
    #[test]
    fn matches_a_plain_scan_for_every_order() {
        fn permutations(items: Vec<usize>) -> Vec<Vec<usize>> {
            if items.len() <= 1 {
                return vec![items];
            }
            let mut all = Vec::new();
            for i in 0..items.len() {
                let mut rest = items.clone();
                let first = rest.remove(i);
                for mut p in permutations(rest) {
                    p.insert(0, first);
                    all.push(p);
                }
            }
            all
        }
        for order in permutations((0..6).collect()) {
            let mut w = SettleWindow::new();
            let seqs: Vec<_> = (0..6).map(|i| w.push(i)).collect();
            let mut settled = [false; 6];
            for i in order {
                w.settle(seqs[i]);
                settled[i] = true;
                let expected = settled.iter().take_while(|s| **s).count().checked_sub(1);
                assert_eq!(w.prefix_end().copied(), expected);
                assert!(w.retained() <= 2 * w.unsettled() + 1);
            }
        }
    }
}
