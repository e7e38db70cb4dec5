//! A process's open descriptors by number, in order: what `FdTable` keeps per process
//! (model/fdtable.rs).
//!
//! The kernel gives out the lowest free number (fs/file.c, `alloc_fd` from `next_fd`), so a
//! process's numbers are nearly all small and dense: a slot per number, indexed by it, finds,
//! adds and removes one without a search or a node to rebalance, and walks them in order for
//! close_range and reports. With a `BTreeMap` of all of them, which it replaces, the table and
//! the allocator under it were a fifth of the daemon's CPU samples at 200,000 records a second
//! (BENCHMARKS.md, "The descriptor table by number").
//!
//! A number the slots do not reach goes to a `BTreeMap` beside them (`others`): bash's 255, a
//! dup2 to a high number, what is left high when most have closed. So memory follows how many
//! are open, not the highest number ever held:
//! - the slots grow only to a number within `MIN_SLOTS` of their end (the lowest free one is
//!   the kernel's next, so a process opening its way up grows them one at a time; a dup2 far
//!   past them does not write a run of empty slots) and below `max(MIN_SLOTS, 2 × open)`;
//! - they are cut back to that bound whenever they exceed `max(MIN_SLOTS, 8 × open)`, the
//!   numbers past it moved to `others`, and their capacity is given back once it is over four
//!   times their length: at any time `slots.len() ≤ max(MIN_SLOTS, 8 × open)`.
//!
//! Every number in the slots is below every non-negative number in `others`; negative numbers
//! (the table never stores one: `FdTable::insert`) are kept in `others`, in order all the same.
//!
//! By hand: of the crates for integer-keyed maps, `vec_map` is unmaintained and its memory
//! follows the highest key, `intmap` is unordered, and `slab` chooses the keys itself.
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

    /// Past this many slots for `open` numbers, they are cut back to `slot_bound`.
    fn slot_limit(open: usize) -> usize {
        MIN_SLOTS.max(8 * open)
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
            let reached = n < self.slots.len() + MIN_SLOTS && n < Self::slot_bound(self.len() + 1);
            if !reached || self.others.contains_key(&fd) {
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
        let removed = match Self::slot(*fd).filter(|&n| n < self.slots.len()) {
            Some(n) => {
                let removed = self.slots[n].take()?;
                self.in_slots -= 1;
                removed
            }
            None => self.others.remove(fd)?,
        };
        self.fit_slots();
        Some(removed)
    }

    /// Keep the slots within `slot_limit` of what is open and their capacity within four times
    /// their length (the module's doc): after any removal, from the slots or from `others`,
    /// since either lowers the limit.
    fn fit_slots(&mut self) {
        self.drop_empty_end();
        if self.slots.len() > Self::slot_limit(self.len()) {
            // Numbers past the bound move to `others` (a process that held many and holds
            // few, the survivors high).
            let keep = Self::slot_bound(self.len());
            for (n, slot) in self.slots.iter_mut().enumerate().skip(keep) {
                if let Some(value) = slot.take() {
                    self.others.insert(n as i32, value);
                    self.in_slots -= 1;
                }
            }
            self.slots.truncate(keep);
            self.drop_empty_end();
        }
        if self.slots.capacity() > MIN_SLOTS.max(4 * self.slots.len()) {
            self.slots.shrink_to(MIN_SLOTS.max(2 * self.slots.len()));
        }
    }

    /// Pop the empty slots at the end: the last slot is never empty.
    fn drop_empty_end(&mut self) {
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
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
        /// A process opening its way up: `from`, `from + 1`, ... (past the slots' bound too).
        Fill(i32, u16),
        /// What a close_range or an exec closes: every number in [first, last], upwards or
        /// downwards.
        RemoveAll(i32, i32, bool),
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
            8 => (fd(), any::<u32>()).prop_map(|(fd, v)| Step::Insert(fd, v)),
            6 => fd().prop_map(Step::Remove),
            2 => (fd(), fd()).prop_map(|(a, b)| Step::Mark(a, b)),
            1 => (0..300i32, 1..300u16).prop_map(|(from, n)| Step::Fill(from, n)),
            1 => (fd(), fd(), any::<bool>()).prop_map(|(a, b, up)| Step::RemoveAll(a, b, up)),
        ]
    }

    /// What the map's doc promises of its layout, looked at directly.
    fn assert_layout(map: &FdMap<u32>) {
        assert_eq!(
            map.in_slots,
            map.slots.iter().filter(|s| s.is_some()).count(),
            "in_slots counts the slots"
        );
        assert!(map.slots.last().is_none_or(Option::is_some), "no empty slot at the end");
        assert!(
            map.others.keys().all(|&fd| fd < 0 || fd as usize >= map.slots.len()),
            "no number of `others` the slots reach"
        );
        assert!(
            map.slots.len() <= FdMap::<u32>::slot_limit(map.len()),
            "{} slots for {} open",
            map.slots.len(),
            map.len()
        );
    }

    /// After a removal, the slots' capacity too.
    fn assert_capacity(map: &FdMap<u32>) {
        let capacity = map.slots.capacity();
        assert!(
            capacity <= MIN_SLOTS.max(4 * map.slots.len()),
            "capacity {capacity} for {} slots",
            map.slots.len()
        );
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
                    Step::Fill(from, n) => {
                        for fd in from..from + i32::from(n) {
                            prop_assert_eq!(map.insert(fd, fd as u32), model.insert(fd, fd as u32));
                        }
                    }
                    Step::RemoveAll(a, b, up) => {
                        let (a, b) = (a.min(b), a.max(b));
                        let mut fds: Vec<i32> = model.range(a..=b).map(|(fd, _)| *fd).collect();
                        if !up {
                            fds.reverse();
                        }
                        for fd in fds {
                            prop_assert_eq!(map.remove(&fd), model.remove(&fd));
                            assert_layout(&map);
                            assert_capacity(&map);
                        }
                    }
                    Step::Mark(a, b) => {
                        let (a, b) = (a.min(b), a.max(b));
                        let got: Vec<i32> = map.range_mut(a..=b).map(|(fd, v)| { *v = v.wrapping_add(1); fd }).collect();
                        let want: Vec<i32> = model.range_mut(a..=b).map(|(fd, v)| { *v = v.wrapping_add(1); *fd }).collect();
                        prop_assert_eq!(got, want);
                    }
                }
                assert_same(&map, &model, &probe);
                assert_layout(&map);
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
        // The same closed from the top down: every slot stays full until it goes, and the
        // memory goes with them.
        let mut map = FdMap::new();
        for fd in 0..10_000 {
            map.insert(fd, ());
        }
        for fd in (3..10_000).rev() {
            map.remove(&fd);
        }
        assert_eq!(map.slots.len(), 3);
        assert!(map.slots.capacity() <= MIN_SLOTS, "capacity {}", map.slots.capacity());
        // A dup2 far past the slots does not fill the way there with empty ones.
        let mut map = FdMap::new();
        for fd in 0..1_000 {
            map.insert(fd, ());
        }
        map.insert(1_999, ());
        assert_eq!((map.slots.len(), map.others.len()), (1_000, 1));
        map.remove(&1_999);
        assert_eq!((map.slots.len(), map.others.len()), (1_000, 0));
        // Closing what the B-tree holds lowers the limit as well: the slots are cut back then too.
        let mut map = FdMap::new();
        for fd in (0..=99).chain(1_000..=1_009) {
            map.insert(fd, ());
        }
        assert_eq!((map.slots.len(), map.others.len()), (100, 10));
        for fd in 0..=96 {
            map.remove(&fd);
        }
        assert_eq!(map.slots.len(), 100, "within 8 × the 13 open");
        map.remove(&1_000);
        assert!(map.slots.len() <= 8 * 12, "{} slots for 12 open", map.slots.len());
        assert_eq!(
            map.keys().collect::<Vec<_>>(),
            [97, 98, 99].into_iter().chain(1_001..=1_009).collect::<Vec<_>>()
        );
        // bash's 255 beside 0, 1 and 2: not 256 slots.
        let mut shell = FdMap::new();
        for fd in [0, 1, 2, 255] {
            shell.insert(fd, ());
        }
        assert_eq!(shell.slots.len(), 3);
        assert_eq!(shell.keys().collect::<Vec<_>>(), vec![0, 1, 2, 255]);
    }
}
