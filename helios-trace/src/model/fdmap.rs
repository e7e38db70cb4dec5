//! A process's open descriptors by number, in order: what `FdTable` keeps per process
//! (model/fdtable.rs).
//!
//! The kernel gives out the lowest free number (fs/file.c, `alloc_fd` from `next_fd`), so a
//! process's numbers are nearly all small and dense: a slot per number, indexed by it, finds,
//! adds and removes one without a search or a node to rebalance, and walks them in order for
//! close_range and reports. A `BTreeMap`, which it replaces, was a sixth of the daemon's CPU per
//! record (BENCHMARKS.md, "The descriptor table by number"). A number far above how many are
//! open (bash's 255, a dup2 to a high number, what is left when most have closed) goes to a
//! `BTreeMap` beside the slots, so that memory follows how many are open, not the highest
//! number: the slots reach at most `max(MIN_SLOTS, 2 × open)`, and are cut back when fewer
//! than an eighth of them are used. Every number in the slots is below every number in the
//! map but the negative ones (none from the kernel; kept in order all the same).
//!
//! By hand: the crates for integer-keyed maps (`vec_map`, `intmap`, `slab`) are unmaintained,
//! unordered, or choose the keys themselves.
use std::{
    collections::BTreeMap,
    fmt::{self, Debug},
    ops::{Bound, Index, Range, RangeBounds, RangeInclusive},
};

/// Slots a process may have whatever it holds: a shell's and a small service's numbers.
const MIN_SLOTS: usize = 64;

#[derive(Clone)]
pub(crate) struct FdMap<V> {
    /// `slots[n]` is number n's, for every n below `slots.len()`; the last is never empty.
    slots: Vec<Option<V>>,
    /// How many of `slots` hold one.
    in_slots: usize,
    /// The numbers not in `slots`: negative ones, and those at or past `slots.len()`.
    others: BTreeMap<i32, V>,
}

impl<V> Default for FdMap<V> {
    fn default() -> Self {
        FdMap { slots: Vec::new(), in_slots: 0, others: BTreeMap::new() }
    }
}

impl<V> FdMap<V> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.in_slots + self.others.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most slots for `open` numbers: beyond it a new number goes to `others`.
    fn slot_bound(open: usize) -> usize {
        MIN_SLOTS.max(2 * open)
    }

    fn slot(fd: i32) -> Option<usize> {
        usize::try_from(fd).ok()
    }

    pub(crate) fn get(&self, fd: &i32) -> Option<&V> {
        match Self::slot(*fd).and_then(|n| self.slots.get(n)) {
            Some(slot) => slot.as_ref(),
            None => self.others.get(fd),
        }
    }

    pub(crate) fn get_mut(&mut self, fd: &i32) -> Option<&mut V> {
        match Self::slot(*fd).and_then(|n| self.slots.get_mut(n)) {
            Some(slot) => slot.as_mut(),
            None => self.others.get_mut(fd),
        }
    }

    pub(crate) fn contains_key(&self, fd: &i32) -> bool {
        self.get(fd).is_some()
    }

    /// Add or replace number `fd`'s entry; the one it replaced.
    pub(crate) fn insert(&mut self, fd: i32, value: V) -> Option<V> {
        let Some(n) = Self::slot(fd) else { return self.others.insert(fd, value) };
        if n >= self.slots.len() {
            if self.others.contains_key(&fd) || n >= Self::slot_bound(self.len() + 1) {
                return self.others.insert(fd, value);
            }
            self.slots.resize_with(n + 1, || None);
            // The numbers between the old end and this one come into the slots (every number
            // in the slots stays below every non-negative one in `others`).
            let coming: Vec<i32> = self.others.range(0..fd).map(|(m, _)| *m).collect();
            for m in coming {
                self.slots[m as usize] = self.others.remove(&m);
                self.in_slots += 1;
            }
        }
        let previous = self.slots[n].replace(value);
        if previous.is_none() {
            self.in_slots += 1;
        }
        previous
    }

    pub(crate) fn remove(&mut self, fd: &i32) -> Option<V> {
        let Some(n) = Self::slot(*fd).filter(|&n| n < self.slots.len()) else {
            return self.others.remove(fd);
        };
        let removed = self.slots[n].take()?;
        self.in_slots -= 1;
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        if self.slots.len() > MIN_SLOTS && self.slots.len() > 8 * self.in_slots.max(1) {
            self.cut_slots();
        }
        Some(removed)
    }

    /// Move the numbers past `slot_bound` of what is open to `others` and give the memory of
    /// their slots back: a process that once held many and holds few now.
    fn cut_slots(&mut self) {
        let keep = Self::slot_bound(self.len());
        for (n, slot) in self.slots.iter_mut().enumerate().skip(keep) {
            if let Some(value) = slot.take() {
                self.others.insert(n as i32, value);
                self.in_slots -= 1;
            }
        }
        self.slots.truncate(keep);
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        self.slots.shrink_to(self.slots.len().max(MIN_SLOTS));
    }

    /// In order of number.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (i32, &V)> + '_ {
        self.range(..)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = i32> + '_ {
        self.iter().map(|(fd, _)| fd)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, value)| value)
    }

    /// The open numbers in `range`, in order: the negative ones (`others`), the slots', the
    /// ones past the slots (`others`).
    pub(crate) fn range(&self, range: impl RangeBounds<i32>) -> impl Iterator<Item = (i32, &V)> + '_ {
        let (numbers, slots) = self.parts(&range).unzip();
        let slots = slots.unwrap_or(0..0);
        let others = || {
            let entries = numbers.clone().map(|numbers| self.others.range(numbers));
            entries.into_iter().flatten().map(|(fd, value)| (*fd, value))
        };
        let in_slots = self.slots[slots.clone()].iter().zip(slots);
        let in_slots = in_slots.filter_map(|(slot, n)| Some((n as i32, slot.as_ref()?)));
        let negative = others().take_while(|(fd, _)| *fd < 0);
        negative.chain(in_slots).chain(others().skip_while(|(fd, _)| *fd < 0))
    }

    /// As [`FdMap::range`], the entries to change (close_range's: rare, so collected).
    pub(crate) fn range_mut(&mut self, range: impl RangeBounds<i32>) -> impl Iterator<Item = (i32, &mut V)> {
        let Some((numbers, slots)) = self.parts(&range) else { return Vec::new().into_iter() };
        let FdMap { slots: all_slots, others, .. } = self;
        let (mut entries, past): (Vec<_>, Vec<_>) =
            others.range_mut(numbers).map(|(fd, value)| (*fd, value)).partition(|(fd, _)| *fd < 0);
        let in_slots = all_slots[slots.clone()].iter_mut().zip(slots);
        entries.extend(in_slots.filter_map(|(slot, n)| Some((n as i32, slot.as_mut()?))));
        entries.extend(past);
        entries.into_iter()
    }

    /// The numbers `range` holds (None: none; `BTreeMap::range` panics on some empty ranges),
    /// and the indices of `slots` among them.
    fn parts(&self, range: &impl RangeBounds<i32>) -> Option<(RangeInclusive<i32>, Range<usize>)> {
        // As a half-open range of i64, where every bound has a successor.
        let start = match range.start_bound() {
            Bound::Included(&fd) => i64::from(fd),
            Bound::Excluded(&fd) => i64::from(fd) + 1,
            Bound::Unbounded => i64::from(i32::MIN),
        };
        let end = match range.end_bound() {
            Bound::Included(&fd) => i64::from(fd) + 1,
            Bound::Excluded(&fd) => i64::from(fd),
            Bound::Unbounded => i64::from(i32::MAX) + 1,
        };
        if start >= end {
            return None;
        }
        let len = self.slots.len() as i64;
        let slots = start.clamp(0, len) as usize..end.clamp(0, len) as usize;
        Some((start as i32..=(end - 1) as i32, slots))
    }
}

impl<V> Index<&i32> for FdMap<V> {
    type Output = V;

    fn index(&self, fd: &i32) -> &V {
        self.get(fd).unwrap_or_else(|| panic!("descriptor {fd} not in the map"))
    }
}

impl<V> FromIterator<(i32, V)> for FdMap<V> {
    fn from_iter<I: IntoIterator<Item = (i32, V)>>(entries: I) -> Self {
        let mut map = FdMap::new();
        for (fd, value) in entries {
            map.insert(fd, value);
        }
        map
    }
}

impl<V> IntoIterator for FdMap<V> {
    type Item = (i32, V);
    type IntoIter = std::vec::IntoIter<(i32, V)>;

    /// In order of number (a process's last walk, at its exit: collected).
    fn into_iter(self) -> Self::IntoIter {
        let FdMap { slots, others, .. } = self;
        let (mut entries, past): (Vec<_>, Vec<_>) = others.into_iter().partition(|(fd, _)| *fd < 0);
        entries.extend(slots.into_iter().enumerate().filter_map(|(n, slot)| Some((n as i32, slot?))));
        entries.extend(past);
        entries.into_iter()
    }
}

/// Equal when the same numbers hold equal entries, however they are kept.
impl<V: PartialEq> PartialEq for FdMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<V: Eq> Eq for FdMap<V> {}

impl<V: Debug> Debug for FdMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Step {
        Insert(i32, u32),
        Remove(i32),
        /// close_range's: every entry in [first, last] changed.
        Mark(i32, i32),
    }

    /// Numbers as a process has them: mostly small, some high, now and then a negative one
    /// (never from the kernel) or the largest.
    fn fd() -> impl Strategy<Value = i32> {
        prop_oneof![
            8 => 0..100i32,
            2 => 200..400i32,
            1 => -3..0i32,
            1 => Just(i32::MAX),
            1 => Just(i32::MIN),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (fd(), any::<u32>()).prop_map(|(fd, v)| Step::Insert(fd, v)),
            3 => fd().prop_map(Step::Remove),
            1 => (fd(), fd()).prop_map(|(a, b)| Step::Mark(a, b)),
        ]
    }

    fn assert_same(map: &FdMap<u32>, model: &BTreeMap<i32, u32>, probe: &[i32]) {
        assert_eq!(map.len(), model.len());
        assert_eq!(map.is_empty(), model.is_empty());
        let all: Vec<(i32, u32)> = map.iter().map(|(fd, v)| (fd, *v)).collect();
        let expected: Vec<(i32, u32)> = model.iter().map(|(fd, v)| (*fd, *v)).collect();
        assert_eq!(all, expected, "in order");
        for fd in probe {
            assert_eq!(map.get(fd), model.get(fd));
            assert_eq!(map.contains_key(fd), model.contains_key(fd));
        }
        for &(a, b) in &[(0, 50), (-2, 10), (60, 300), (5, 5), (i32::MIN, i32::MAX)] {
            let got: Vec<i32> = map.range(a..=b).map(|(fd, _)| fd).collect();
            let want: Vec<i32> = model.range(a..=b).map(|(fd, _)| *fd).collect();
            assert_eq!(got, want, "range {a}..={b}");
        }
        let got: Vec<i32> = map.range(3..3).map(|(fd, _)| fd).collect();
        assert!(got.is_empty());
        let (high, low) = (10, 2);
        assert!(map.range(high..=low).next().is_none(), "an empty range, not a panic");
        assert!(map.range((Bound::Excluded(4), Bound::Excluded(4))).next().is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// The map holds, finds, walks and changes what a BTreeMap would, whatever the numbers.
        #[test]
        fn it_behaves_as_an_ordered_map(steps in prop::collection::vec(step(), 1..300)) {
            let mut map = FdMap::new();
            let mut model = BTreeMap::new();
            let mut probe = Vec::new();
            for step in steps {
                match step {
                    Step::Insert(fd, v) => {
                        prop_assert_eq!(map.insert(fd, v), model.insert(fd, v));
                        probe.push(fd);
                    }
                    Step::Remove(fd) => prop_assert_eq!(map.remove(&fd), model.remove(&fd)),
                    Step::Mark(a, b) => {
                        let (a, b) = (a.min(b), a.max(b));
                        let got: Vec<i32> = map.range_mut(a..=b).map(|(fd, v)| { *v = v.wrapping_add(1); fd }).collect();
                        let want: Vec<i32> = model.range_mut(a..=b).map(|(fd, v)| { *v = v.wrapping_add(1); *fd }).collect();
                        prop_assert_eq!(got, want);
                    }
                }
                assert_same(&map, &model, &probe);
                prop_assert!(map.slots.last().is_none_or(Option::is_some), "no empty slot at the end");
                prop_assert!(map.slots.len() <= MIN_SLOTS.max(8 * map.len()), "{} slots for {}", map.slots.len(), map.len());
            }
            let rebuilt: FdMap<u32> = model.clone().into_iter().collect();
            prop_assert_eq!(&rebuilt, &map);
            let owned: Vec<(i32, u32)> = map.into_iter().collect();
            prop_assert_eq!(owned, model.into_iter().collect::<Vec<_>>());
        }
    }

    /// A process that held many and holds few gives their slots back: its memory follows what
    /// it holds, not the most it held.
    #[test]
    fn the_slots_follow_what_is_open() {
        let mut map = FdMap::new();
        for fd in 0..10_000 {
            map.insert(fd, ());
        }
        assert_eq!(map.slots.len(), 10_000, "dense numbers are slots");
        assert!(map.others.is_empty());
        for fd in 3..9_999 {
            map.remove(&fd);
        }
        assert_eq!(map.keys().collect::<Vec<_>>(), vec![0, 1, 2, 9_999]);
        assert!(map.slots.len() <= MIN_SLOTS, "{} slots for 4 numbers", map.slots.len());
        assert!(map.slots.capacity() <= 2 * MIN_SLOTS, "capacity {}", map.slots.capacity());
        assert_eq!(map.others.keys().copied().collect::<Vec<_>>(), vec![9_999]);
        // bash's 255 beside 0, 1 and 2: not 256 slots.
        let mut shell = FdMap::new();
        for fd in [0, 1, 2, 255] {
            shell.insert(fd, ());
        }
        assert_eq!(shell.slots.len(), 3);
        assert_eq!(shell.keys().collect::<Vec<_>>(), vec![0, 1, 2, 255]);
    }
}
