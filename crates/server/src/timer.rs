//! A worker's timers: an indexed binary heap over a slab of nodes.
//!
//! Setting, cancelling and firing a timer is O(log n); nodes and heap slots are reused, so once
//! the vectors have grown to the most timers ever armed at once, no timer allocates. Timers with
//! the same deadline fire in the order they were set. A [`TimerId`] carries its node's
//! generation, so cancelling a timer that already fired (its node reused since) does nothing.

use std::time::Instant;

/// A timer set with [`crate::Context::set_timer`], for [`crate::Context::cancel_timer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

struct Node<T> {
    deadline: Instant,
    /// Order of setting, so that equal deadlines fire first-set first.
    seq: u64,
    generation: u32,
    /// Place in `heap`; meaningful while `payload` is set.
    pos: u32,
    payload: Option<T>,
}

/// Timers carrying a `T` each.
pub(crate) struct Timers<T> {
    nodes: Vec<Node<T>>,
    free: Vec<u32>,
    /// Node indices, a min-heap by (deadline, seq).
    heap: Vec<u32>,
    seq: u64,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            nodes: Vec::new(),
            free: Vec::new(),
            heap: Vec::new(),
            seq: 0,
        }
    }
}

impl<T> Timers<T> {
    /// Timers armed now.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Arms a timer for `deadline`.
    pub(crate) fn insert(&mut self, deadline: Instant, payload: T) -> TimerId {
        self.seq += 1;
        let pos = self.heap.len() as u32;
        let index = match self.free.pop() {
            Some(index) => {
                let node = &mut self.nodes[index as usize];
                node.deadline = deadline;
                node.seq = self.seq;
                node.pos = pos;
                node.payload = Some(payload);
                index
            }
            None => {
                self.nodes.push(Node {
                    deadline,
                    seq: self.seq,
                    generation: 0,
                    pos,
                    payload: Some(payload),
                });
                (self.nodes.len() - 1) as u32
            }
        };
        self.heap.push(index);
        self.sift_up(pos as usize);
        TimerId {
            index,
            generation: self.nodes[index as usize].generation,
        }
    }

    /// The payload of `id`, if it is armed.
    pub(crate) fn get(&self, id: TimerId) -> Option<&T> {
        let node = self.nodes.get(id.index as usize)?;
        (node.generation == id.generation)
            .then_some(node.payload.as_ref())
            .flatten()
    }

    /// Disarms `id`; returns its payload if it was still armed.
    pub(crate) fn cancel(&mut self, id: TimerId) -> Option<T> {
        let node = self.nodes.get(id.index as usize)?;
        if node.generation != id.generation || node.payload.is_none() {
            return None;
        }
        let pos = node.pos as usize;
        Some(self.remove_at(pos))
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.first().map(|&i| self.nodes[i as usize].deadline)
    }

    /// Takes the earliest timer if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<T> {
        let &first = self.heap.first()?;
        if self.nodes[first as usize].deadline > now {
            return None;
        }
        Some(self.remove_at(0))
    }

    fn remove_at(&mut self, pos: usize) -> T {
        let index = self.heap[pos];
        let last = self.heap.pop().expect("a timer at pos");
        if pos < self.heap.len() {
            self.heap[pos] = last;
            self.nodes[last as usize].pos = pos as u32;
            self.sift_down(pos);
            self.sift_up(pos);
        }
        let node = &mut self.nodes[index as usize];
        node.generation = node.generation.wrapping_add(1);
        self.free.push(index);
        node.payload.take().expect("an armed timer")
    }

    fn less(&self, a: u32, b: u32) -> bool {
        let (a, b) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        (a.deadline, a.seq) < (b.deadline, b.seq)
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.heap.swap(i, j);
        self.nodes[self.heap[i] as usize].pos = i as u32;
        self.nodes[self.heap[j] as usize].pos = j as u32;
    }

    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if !self.less(self.heap[pos], self.heap[parent]) {
                break;
            }
            self.swap(pos, parent);
            pos = parent;
        }
    }

    fn sift_down(&mut self, mut pos: usize) {
        loop {
            let (left, right) = (2 * pos + 1, 2 * pos + 2);
            let mut smallest = pos;
            if left < self.heap.len() && self.less(self.heap[left], self.heap[smallest]) {
                smallest = left;
            }
            if right < self.heap.len() && self.less(self.heap[right], self.heap[smallest]) {
                smallest = right;
            }
            if smallest == pos {
                break;
            }
            self.swap(pos, smallest);
            pos = smallest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fire_in_deadline_then_setting_order() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut timers = Timers::default();
        for (ms, tag) in [(30, "c"), (10, "a"), (20, "b1"), (20, "b2"), (40, "d")] {
            timers.insert(at(ms), tag);
        }
        assert_eq!(timers.next_deadline(), Some(at(10)));
        assert_eq!(timers.pop_due(at(5)), None);
        let mut fired = Vec::new();
        while let Some(tag) = timers.pop_due(at(35)) {
            fired.push(tag);
        }
        assert_eq!(fired, ["a", "b1", "b2", "c"]);
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn cancel_anywhere_and_stale_ids() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let ids: Vec<TimerId> = (0..100u64)
            .map(|i| timers.insert(t0 + Duration::from_millis((i * 37) % 101), i))
            .collect();
        for id in ids.iter().step_by(3) {
            assert!(timers.cancel(*id).is_some());
            assert!(timers.cancel(*id).is_none(), "cancelled once");
        }
        let mut last = None;
        let mut n = 0;
        while let Some(i) = timers.pop_due(t0 + Duration::from_secs(1)) {
            assert_ne!(i % 3, 0, "a cancelled timer fired");
            let deadline = (i * 37) % 101;
            assert!(last.is_none_or(|l| l <= deadline), "in order");
            last = Some(deadline);
            n += 1;
        }
        assert_eq!(n, 66);
        // A fired timer's id does not cancel the timer that reuses its node.
        let reused = timers.insert(t0, 7);
        assert!(timers.cancel(ids[1]).is_none());
        assert_eq!(timers.cancel(reused), Some(7));
    }

    #[test]
    fn no_allocation_once_grown() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let ids: Vec<_> = (0..1000).map(|i| timers.insert(t0, i)).collect();
        for id in ids {
            timers.cancel(id);
        }
        let caps = (
            timers.nodes.capacity(),
            timers.heap.capacity(),
            timers.free.capacity(),
        );
        for round in 0..3 {
            let ids: Vec<_> = (0..1000).map(|i| timers.insert(t0, i + round)).collect();
            for id in ids.into_iter().rev() {
                timers.cancel(id);
            }
        }
        assert_eq!(
            caps,
            (
                timers.nodes.capacity(),
                timers.heap.capacity(),
                timers.free.capacity()
            )
        );
    }
}
