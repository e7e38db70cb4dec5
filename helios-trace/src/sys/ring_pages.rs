//! The kernel's ring buffer read through its own mapped pages, the reader's position told to
//! the kernel once per batch of records instead of after each (ARCHITECTURE.md, "Data flow" 2).
//!
//! Why by hand: aya's `RingBuf` (as libbpf's `ring_buffer__consume`) stores the consumer
//! position after every record. The kernel reads that position three times for every record
//! a traced call submits (kernel/bpf/ringbuf.c: `__bpf_ringbuf_reserve` for the room left,
//! `bpf_ringbuf_query(BPF_RB_AVAIL_DATA)` in emit.rs's `wakeup_flags`, `bpf_ringbuf_commit` for
//! whether to wake the reader), so while the reader empties the ring on one CPU and a traced
//! program writes on another, that word's cache line went back and forth once a record. Told
//! once a batch, the daemon's CPU per record was 9% lower in a fast phase of the machine (the
//! first version) and 5% in a slower one (the build after the first review); the traced
//! program's side showed nothing (the reader drains for a small part of the time: BENCHMARKS.md,
//! "The reader's position told once a batch"). Neither crate lets the reader say when its
//! position is published; this module is that one choice, with the record format
//! (`Cursor::next`) read as the kernel writes it.
//!
//! The layout (kernel/bpf/ringbuf.c, `ringbuf_map_mmap_kern` and `bpf_ringbuf_area_alloc`): at
//! offset 0 the consumer's page, the only one user space may write (its first word the consumer
//! position); at one page the producer's page (its first word the producer position), then the
//! data pages mapped twice in a row, so that a record running past the end of the ring reads
//! on in one piece. Each record: a u32 length whose top bits say busy (reserved, not yet
//! submitted) and discarded, a u32 page offset, then the record, padded to 8.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::MapData;
use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::sys::ring::Records;

/// A record reserved and not yet submitted (include/uapi/linux/bpf.h, `BPF_RINGBUF_BUSY_BIT`).
const BUSY: u32 = 1 << 31;
/// A record the program discarded (`BPF_RINGBUF_DISCARD_BIT`).
const DISCARD: u32 = 1 << 30;
/// A record's header: its length word and its page offset (`BPF_RINGBUF_HDR_SZ`).
const HEADER_BYTES: usize = 8;

/// Where the reader is: what it has read, what it has told the kernel, and the producer
/// position it last loaded. Works on any memory laid out as the kernel's (a unit test's too).
#[derive(Debug)]
pub(crate) struct Cursor {
    /// The next record's position: a count of bytes since the ring was made, as the kernel's
    /// (which wrap at the word's size, never in practice; the arithmetic on them wraps too).
    pos: usize,
    /// The position last stored for the kernel.
    published: usize,
    /// A store since the last full fence: a look that finds nothing ready must fence and look
    /// once more before it stops (`next`).
    unfenced: bool,
    /// The producer position last loaded: records up to it need no load of it again.
    producer: usize,
    /// Store the position once this many bytes were read since the last store (0: after each
    /// record, as aya does).
    publish_every: usize,
    /// A record longer than what the producer has written was found: the reader stops there
    /// (said once; the kernel counts what it then cannot fit as lost, `events.lost`).
    broken: bool,
}

impl Cursor {
    /// A reader at `consumer`, the position the kernel holds (0 for a new ring).
    pub(crate) fn new(consumer: usize, publish_every: usize) -> Cursor {
        Cursor {
            pos: consumer,
            published: consumer,
            unfenced: false,
            producer: consumer,
            publish_every,
            broken: false,
        }
    }

    /// Hand the next submitted record of `data` (the ring's data pages, mapped twice: `mask` + 1
    /// bytes each) to `take`; false when none is ready (the reader caught up, or the next one is
    /// still being written), or the reader stopped at a record past what the producer wrote
    /// (`broken`). Discarded records are passed over. The position is stored for the
    /// kernel once `publish_every` bytes were read since the last store, always after `take`
    /// returned: once stored, the kernel may write a new record into that room. When none is
    /// ready it is stored too, and after any store since the last full fence, the fence and one
    /// more look: so either this sees a record submitted meanwhile, or that record's submit sees
    /// the stored position and wakes the reader (the kernel's side of it: `bpf_ringbuf_commit`,
    /// which wakes the reader when the consumer position is the record's, unless told not to;
    /// aya's `RingBuf` does the same with its `needs_wakeup`). That wake-up matters only with
    /// batching off (`Settings::wakeup_bytes` 0): otherwise every submit says whether to wake
    /// (emit.rs, `wakeup_flags`), and the emptier looks on its own timer, at most 20 ms apart.
    /// The caller stores the position itself when it stops early (`publish`: no second look; its
    /// timer brings the next).
    pub(crate) fn next(
        &mut self,
        consumer: &AtomicUsize,
        producer: &AtomicUsize,
        data: &[u8],
        mask: usize,
        take: &mut dyn FnMut(&[u8]),
    ) -> bool {
        if self.broken {
            return false;
        }
        loop {
            if self.pos == self.producer {
                self.producer = producer.load(Ordering::Acquire);
            }
            let ready = if self.pos == self.producer { None } else { header(data, self.pos & mask) };
            let Some(length) = ready else {
                // Caught up, or the next record is busy.
                self.publish(consumer);
                if !self.unfenced {
                    return false;
                }
                fence(Ordering::SeqCst);
                self.unfenced = false;
                continue;
            };
            let len = (length & !(BUSY | DISCARD)) as usize;
            let at = (self.pos & mask) + HEADER_BYTES;
            let room = (HEADER_BYTES + len).next_multiple_of(8);
            // Past what the producer has written (past the ring too): the kernel never writes
            // one, and the records after it cannot be found.
            let record =
                (room <= self.producer.wrapping_sub(self.pos)).then(|| data.get(at..at + len)).flatten();
            let Some(record) = record else {
                log::warn!(
                    "a ring-buffer record of {len} bytes at {} runs past what the kernel wrote; no more records are read",
                    self.pos
                );
                self.broken = true;
                return false;
            };
            let discarded = length & DISCARD != 0;
            // Past it before `take`: a copy that panics skips the record, as aya's reader does
            // (its item's drop), instead of reading it again at every look. Its room is given
            // back only below, once `take` returned.
            self.pos = self.pos.wrapping_add(room);
            if !discarded {
                take(record);
            }
            if self.pos.wrapping_sub(self.published) >= self.publish_every {
                self.publish(consumer);
            }
            if !discarded {
                return true;
            }
        }
    }

    /// Store the position for the kernel, if it moved (its `smp_load_acquire` pairs with this
    /// release: the records before it were read before it can reuse their room).
    pub(crate) fn publish(&mut self, consumer: &AtomicUsize) {
        if self.published != self.pos {
            consumer.store(self.pos, Ordering::Release);
            self.published = self.pos;
            self.unfenced = true;
        }
    }
}

/// The length word of the record header at `offset` of `data` once submitted (busy: None).
/// Acquire, as the kernel's reader pairs with the producer's `xchg` of it at commit: the
/// record's bytes are written before it.
fn header(data: &[u8], offset: usize) -> Option<u32> {
    let word = data.get(offset..offset + 4)?;
    debug_assert_eq!(word.as_ptr() as usize % 4, 0, "headers are 8-aligned in the ring");
    // SAFETY: four bytes of the mapping, 4-aligned (records are 8-aligned: the ring's pages
    // are, and each record's room is a multiple of 8). The kernel writes the word at reserve
    // (a plain store, published by its release of the producer position, which this reader
    // loaded with acquire) and at submit (`xchg`), and not again until the room is given back.
    let length = unsafe { &*word.as_ptr().cast::<AtomicU32>() }.load(Ordering::Acquire);
    (length & BUSY == 0).then_some(length)
}

/// The `EVENTS` ring buffer map, mapped for reading.
pub(crate) struct MappedRing {
    /// The consumer's page; its first word the consumer position.
    consumer: MmapMut,
    /// The producer's page, then the data pages twice.
    producer: Mmap,
    page: usize,
    mask: usize,
    cursor: Cursor,
    /// Keeps the map (its descriptor: the ring's poll, `fd`) as long as the mappings.
    map: MapData,
}

impl MappedRing {
    /// Map `map`, a BPF ring buffer; the position is stored for the kernel every
    /// `publish_every` bytes (`Cursor`).
    pub(crate) fn new(map: MapData, publish_every: usize) -> Result<MappedRing> {
        let info = map.info().context("cannot read the ring buffer map's size")?;
        let size = info.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        if !size.is_power_of_two() || !size.is_multiple_of(page) {
            bail!("the ring buffer map's size {size} is not a power of two of whole pages");
        }
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: the kernel's mappings of a ring buffer map (the module's doc): one writable
        // page at offset 0, the rest read-only. Each mapping holds the map's memory by itself;
        // what is read from them is borrowed from the `MappedRing`, which owns them. The
        // positions and the headers are read through atomics; a record's bytes through a
        // shared slice, as aya's reader does: the kernel wrote them before the submit this
        // reader saw with acquire, and writes that room again only once the position given
        // back is past it (`Cursor::next` gives it back after the record is copied out).
        let mut consumer = unsafe { MmapOptions::new().len(page).map_mut(fd) }
            .context("cannot map the ring buffer's consumer page")?;
        let producer = unsafe { MmapOptions::new().offset(page as u64).len(page + 2 * size).map(fd) }
            .context("cannot map the ring buffer's data")?;
        let cursor = Cursor::new(consumer_position(&mut consumer).load(Ordering::Acquire), publish_every);
        Ok(MappedRing { consumer, producer, page, mask: size - 1, cursor, map })
    }

    /// The ring's descriptor: readable when the kernel wakes its reader.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

impl Records for MappedRing {
    /// `Cursor::next` on this ring.
    fn next_record(&mut self, take: &mut dyn FnMut(&[u8])) -> bool {
        let MappedRing { consumer, producer, page, mask, cursor, .. } = self;
        cursor.next(consumer_position(consumer), producer_position(producer), &producer[*page..], *mask, take)
    }

    fn publish(&mut self) {
        self.cursor.publish(consumer_position(&mut self.consumer));
    }
}

/// The consumer position, the first word of its page, which user space writes: through the
/// mapping's mutable pointer.
fn consumer_position(page: &mut MmapMut) -> &AtomicUsize {
    // SAFETY: the first word of a mapped page, page-aligned; the kernel reads it as an unsigned
    // long with acquire.
    unsafe { &*page.as_mut_ptr().cast::<AtomicUsize>() }
}

/// The producer position, the first word of its read-only page.
fn producer_position(page: &Mmap) -> &AtomicUsize {
    // SAFETY: as above; the kernel writes it with release, this only loads it.
    unsafe { &*page.as_ptr().cast::<AtomicUsize>() }
}

#[cfg(test)]
mod tests {
    use zerocopy::IntoBytes as _;

    use super::*;

    /// A ring of `SIZE` bytes laid out as the kernel's: its data twice in a row.
    const SIZE: usize = 256;

    struct FakeRing {
        consumer: AtomicUsize,
        producer: AtomicUsize,
        /// In words, so that headers are aligned as in the kernel's pages.
        data: Vec<u64>,
        /// A record was written across the ring's end.
        crossed_end: bool,
    }

    impl FakeRing {
        fn new() -> FakeRing {
            FakeRing {
                consumer: AtomicUsize::new(0),
                producer: AtomicUsize::new(0),
                data: vec![0; 2 * SIZE / 8],
                crossed_end: false,
            }
        }

        fn bytes(&mut self) -> &mut [u8] {
            self.data.as_mut_bytes()
        }

        /// Write a record of `payload` at the producer position with header bits `flags` (in both
        /// copies of the data pages, as the double mapping shows them), and move the producer
        /// on; only into room the reader has given back, as the kernel's reserve does.
        fn write(&mut self, payload: &[u8], flags: u32) {
            let pos = self.producer.load(Ordering::Relaxed);
            let room = (HEADER_BYTES + payload.len()).next_multiple_of(8);
            // kernel/bpf/ringbuf.c, `__bpf_ringbuf_reserve`: no more than the mask ahead.
            assert!(
                pos + room - self.consumer.load(Ordering::Relaxed) < SIZE,
                "no room: the reader has not given it back"
            );
            let mut record = vec![0u8; room];
            record[..4].copy_from_slice(&(payload.len() as u32 | flags).to_ne_bytes());
            record[HEADER_BYTES..HEADER_BYTES + payload.len()].copy_from_slice(payload);
            let bytes = self.bytes();
            for (i, byte) in record.iter().enumerate() {
                let at = (pos + i) % SIZE;
                bytes[at] = *byte;
                bytes[at + SIZE] = *byte;
            }
            self.crossed_end |= flags & DISCARD == 0 && pos % SIZE + room > SIZE;
            self.producer.store(pos + room, Ordering::Relaxed);
        }

        /// Clear the busy bit of the record at `pos`.
        fn submit(&mut self, pos: usize) {
            for at in [pos % SIZE, pos % SIZE + SIZE] {
                let word = u32::from_ne_bytes(self.bytes()[at..at + 4].try_into().unwrap()) & !BUSY;
                self.bytes()[at..at + 4].copy_from_slice(&word.to_ne_bytes());
            }
        }

        /// The next record, checking that its room was not given back before it was taken
        /// (the kernel could have written another into it meanwhile).
        fn read(&self, cursor: &mut Cursor) -> Option<Vec<u8>> {
            let data = self.data.as_bytes();
            let consumer_before = self.consumer.load(Ordering::Relaxed);
            let mut got = None;
            let mut take = |record: &[u8]| {
                let offset = record.as_ptr() as usize - data.as_ptr() as usize - HEADER_BYTES;
                let start = consumer_before + (offset + SIZE - consumer_before % SIZE) % SIZE;
                assert!(
                    self.consumer.load(Ordering::Relaxed) <= start,
                    "the record at {start} was given back before it was taken"
                );
                got = Some(record.to_vec());
            };
            let found = cursor.next(&self.consumer, &self.producer, data, SIZE - 1, &mut take);
            if !found && !cursor.broken {
                // Stopped with nothing ready: everything read given back, and fenced after it.
                assert_eq!(self.consumer.load(Ordering::Relaxed), cursor.pos, "given back when stopping");
                assert!(!cursor.unfenced, "a store since the last fence when stopping");
            }
            found.then(|| got.expect("taken"))
        }
    }

    /// Records come back whole and in order, across the ring's end too, each given back
    /// only once taken; discarded ones are passed over; a busy one stops the reader until it
    /// is submitted. Stored after each record (`publish_every` 0), as aya does.
    #[test]
    fn records_are_read_in_order_across_the_end_and_past_discarded_ones() {
        let mut ring = FakeRing::new();
        let mut cursor = Cursor::new(0, 0);
        assert_eq!(ring.read(&mut cursor), None);
        let mut pos = 0;
        for round in 0..20u8 {
            let payload = vec![round; 13 + round as usize * 5];
            ring.write(&[0xdd; 21], DISCARD);
            let busy_at = ring.producer.load(Ordering::Relaxed);
            ring.write(&payload, BUSY);
            assert_eq!(ring.read(&mut cursor), None, "busy in round {round}");
            ring.submit(busy_at);
            assert_eq!(ring.read(&mut cursor).as_deref(), Some(&payload[..]), "round {round}");
            assert_eq!(ring.read(&mut cursor), None);
            pos +=
                (HEADER_BYTES + 21).next_multiple_of(8) + (HEADER_BYTES + payload.len()).next_multiple_of(8);
            assert_eq!(ring.consumer.load(Ordering::Relaxed), pos, "given back after each record");
        }
        assert!(pos > 2 * SIZE && ring.crossed_end, "records went round the ring and across its end");
    }

    /// With `publish_every`, the position is stored once that much was read, and whenever the
    /// reader catches up; not after every record.
    #[test]
    fn the_position_is_stored_once_a_batch_and_when_caught_up() {
        let mut ring = FakeRing::new();
        let mut cursor = Cursor::new(0, 64);
        for i in 0..6u8 {
            ring.write(&[i; 8], 0); // 16 bytes each in the ring
        }
        let mut published = Vec::new();
        for i in 0..6u8 {
            assert_eq!(ring.read(&mut cursor), Some(vec![i; 8]));
            published.push(ring.consumer.load(Ordering::Relaxed));
        }
        assert_eq!(published, [0, 0, 0, 64, 64, 64]);
        assert_eq!(ring.read(&mut cursor), None);
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 96, "stored once caught up");
        // Stopped early by the caller: `publish` stores what was read.
        ring.write(&[9; 8], 0);
        assert_eq!(ring.read(&mut cursor), Some(vec![9; 8]));
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 96);
        cursor.publish(&ring.consumer);
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 112);
    }

    /// A reader that stops at a busy record stores its position first (so that the record's
    /// submit sees it and wakes the reader), fenced after the store (`read` checks both each
    /// time the reader stops), and reads the record once it is submitted. (What the fence and
    /// the look after it guard against, a submit between the two on another CPU, a
    /// single-threaded test cannot stage.)
    #[test]
    fn a_busy_record_stops_the_reader_after_the_position_is_stored() {
        let mut ring = FakeRing::new();
        let mut cursor = Cursor::new(0, 1 << 20);
        ring.write(&[1; 8], 0);
        ring.write(&[2; 8], BUSY);
        assert_eq!(ring.read(&mut cursor), Some(vec![1; 8]));
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 0, "a batch below publish_every");
        assert_eq!(ring.read(&mut cursor), None);
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 16, "stored before stopping at the busy one");
        ring.submit(16);
        assert_eq!(ring.read(&mut cursor), Some(vec![2; 8]));
    }

    /// A batch's store that lands exactly where the reader catches up is still followed by the
    /// fence before the reader stops.
    #[test]
    fn a_batch_store_where_the_reader_catches_up_is_fenced() {
        let mut ring = FakeRing::new();
        let mut cursor = Cursor::new(0, 16);
        ring.write(&[1; 8], 0);
        assert_eq!(ring.read(&mut cursor), Some(vec![1; 8]));
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 16, "the batch's store");
        assert!(cursor.unfenced);
        // `read` checks that stopping here fences after that store.
        assert_eq!(ring.read(&mut cursor), None);
    }

    /// A copy that panics skips its record (as aya's reader does), instead of meeting it again
    /// at the next look; its room is given back with the next store.
    #[test]
    fn a_record_whose_copy_panicked_is_skipped() {
        let mut ring = FakeRing::new();
        let mut cursor = Cursor::new(0, 0);
        ring.write(&[1; 8], 0);
        ring.write(&[2; 8], 0);
        let data = ring.data.as_bytes();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cursor.next(&ring.consumer, &ring.producer, data, SIZE - 1, &mut |_| panic!("the copy fails"))
        }));
        assert!(panicked.is_err());
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 0, "not given back by the copy that failed");
        assert_eq!(ring.read(&mut cursor), Some(vec![2; 8]));
        assert_eq!(ring.read(&mut cursor), None);
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 32);
    }

    /// A length past what the producer wrote (never so in the kernel's ring), whether past
    /// the ring or within its second mapping, stops the reader there for good, instead of
    /// reading past the mapping or taking old bytes for records.
    #[test]
    fn a_record_longer_than_what_was_written_stops_the_reader() {
        for bad in [3 * SIZE, SIZE, 24] {
            let mut ring = FakeRing::new();
            let mut cursor = Cursor::new(0, 0);
            ring.write(&[1; 8], 0);
            assert_eq!(ring.read(&mut cursor), Some(vec![1; 8]));
            let at = ring.producer.load(Ordering::Relaxed);
            ring.write(&[2; 8], 0);
            ring.bytes()[at..at + 4].copy_from_slice(&(bad as u32).to_ne_bytes());
            assert_eq!(ring.read(&mut cursor), None, "a length of {bad}");
            // The header mended, and more written: the reader stays stopped.
            ring.bytes()[at..at + 4].copy_from_slice(&8u32.to_ne_bytes());
            ring.write(&[3; 8], 0);
            assert_eq!(ring.read(&mut cursor), None, "still stopped after a length of {bad}");
        }
    }
}
