//! The reader's end of the ring buffer (ARCHITECTURE.md, "Data flow" 2): the kernel programs'
//! records, in the order they were submitted.
//!
//! A thread of its own, the **emptier**, takes the records out of the ring at paced looks (below)
//! and whenever the kernel wakes it, and holds them for the engine, which takes them in order. The engine
//! may be busy for tens of milliseconds with one record (a library's DWARF read for the first
//! time, a heap walk at a report), and meanwhile the kernel keeps writing: a ring that only
//! the engine emptied filled in that time and the kernel dropped records (counted, but lost:
//! BENCHMARKS.md, "The ring's emptier"). The emptier only copies; it stops once the records
//! copied out and not yet handled hold as much as the ring itself, and leaves the rest in the
//! ring, where the kernel counts what does not fit, as before. With the ring's worth a look the
//! engine asks for reads past that (`take`), user space holds at most twice the ring's worth of
//! records (`model/sizing.rs`).
//!
//! The emptier looks at the ring on a timer paced by the rate it finds (`next_look`), not only
//! when the kernel wakes it: a wake-up is an interrupt on the CPU of the traced call that
//! submitted the record (an irq_work, a self-IPI: in a VM an APIC write that traps to the
//! hypervisor), paid by the traced program. Paced so that each look takes about a quarter of
//! `Settings::wakeup_bytes`, the ring never holds that much under a steady load and the kernel
//! never has to wake anyone; its wake-up stays for a rate that jumps between two looks.
//!
//! It reads the ring through the kernel's own mapped pages (sys/ring_pages.rs), and tells the
//! kernel how far it has read once a batch (`PUBLISH_SHARE`), whenever no record is ready, and at
//! the end of each look, not after every record.
//!
//! Once the emptier runs, it alone reads the ring. The engine's `take` asks it for a look and
//! waits for the answer, so that `take` returns every record submitted before it was called,
//! oldest first (reconciliation relies on that). When the engine read the ring itself, under
//! the lock the emptier needed, an engine stopped (a debugger) or descheduled inside that read
//! (up to a ring's worth of copying) stopped the emptier too, and the kernel dropped what the
//! emptier would have held. The engine's lock on what the emptier took is held only to move a
//! queue; what the engine has not handled yet still counts against the emptier's hold.
use std::{
    collections::VecDeque,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use bytes::Bytes;
use memmap2::MmapMut;
use zerocopy::IntoBytes as _;

use crate::sys::{decode, own, ring_pages::MappedRing};

/// How long the emptier sleeps when its last look found nothing or little (`next_look`; the
/// kernel wakes it once `Settings::wakeup_bytes` wait, so below that records wait this long at
/// most), and how late it notices that the session ended.
const EMPTIER_WAIT: Duration = Duration::from_millis(20);

/// The shortest wait between two looks, whatever the rate: 1,000 looks a second at most. At
/// 1 KiB a record (a learned chain's), looks of a quarter of the default 1 MiB wake-up
/// threshold come this often at 256,000 records a second; above that each look takes more,
/// and the kernel's wake-up comes first only past 1,000,000 a second.
const MIN_LOOK_INTERVAL: Duration = Duration::from_millis(1);

/// How often at most the emptier has the kernel send the calls it keeps (`send_kept_calls`):
/// each is a walk of the kernel's 1,024 slots (`PAIR_SLOTS`), so not at every look when looks
/// come every millisecond; and each sends every open then kept, whose close can no longer be
/// matched in the kernel, so the fewer the better for a server that holds a few connections at
/// once (nginx under `ab -c 4`, four slots a process: of its 10,000 creating calls 6,624 and
/// 6,927 matched with asks every 10 ms here, 8,982 with 100 ms, and 8,854 in the final build,
/// with keys and no asks at the engine's short timers, `Ring::take_sent`; BENCHMARKS.md "Four
/// slots a process"). A kept open
/// reaches the engine within this and a look: the engine needs nothing sooner (a report, a
/// snapshot, a reconciliation and the once-a-second tick take every record made before a
/// moment, `Ring::take`, and the kernel sends what it keeps first), the live view and `serve`'s
/// metrics are made at that tick.
const KEPT_SEND_INTERVAL: Duration = Duration::from_millis(100);

/// The emptier's time slice: the smallest the kernel takes, so that it runs soon after the
/// kernel wakes it even when every CPU is busy (sys/own.rs, `prefer_short_slices`).
const EMPTIER_SLICE: Duration = Duration::from_micros(100);

/// Records are copied into anonymous mappings of this size (a larger record gets one of its
/// own size), each its own mapping: once every record of one is handled, it goes back to a
/// small pool (`POOLED_CHUNKS`) or is unmapped, which gives its memory back at once. From
/// malloc, what a burst held stayed in the emptier thread's arena (RssAnon 8 MiB up after a
/// flood, which malloc_trim did not release), and a `Bytes` per record was an allocation per
/// record too. Without the pool, every chunk was a fresh mapping whose pages the kernel
/// faulted in and zeroed: nginx ran 1.07× slower than untraced instead of 1.01×, the
/// tracer's CPU per 1,000 requests 3.5 ms instead of 2.5 (BENCHMARKS.md, "The ring's emptier").
const CHUNK_BYTES: usize = 256 * 1024;

/// Chunks kept for reuse: a few are in flight at once while the engine keeps up (one per
/// look of the emptier, a quarter of the wake-up threshold: `next_look`; back when the engine
/// has handled it); what a burst needed beyond
/// them is unmapped.
const POOLED_CHUNKS: usize = 4;

/// The reader's position is told to the kernel once this share of the wake-up threshold
/// (`Settings::wakeup_bytes`) was read since it last was (sys/ring_pages.rs says why not after
/// every record), and at the end of each look. Only during a look, then, does the kernel count
/// records already read as waiting (helios-trace-ebpf's emit.rs, `wakeup_flags`), and as room
/// it cannot use yet: an eighth of the threshold and one record at most, so that it forces no
/// wake-up before nearly seven eighths of the threshold wait unread.
const PUBLISH_SHARE: usize = 8;

/// Each record in a chunk: its length, then its bytes, padded to 8 (the kernel's records are
/// 8-aligned in the ring, and stay so here).
const LENGTH_BYTES: usize = size_of::<u64>();

/// The ring buffer and the records taken out of it for the engine.
pub(crate) struct Ring {
    shared: Arc<Shared>,
    fd: RawFd,
    /// The ring's size: the most the emptier keeps copied out and not yet handled, and the most
    /// a look the engine asked for reads (all the ring can have held when it asked).
    ring_bytes: usize,
    /// How much the emptier aims to take at each look (`next_look`).
    look_bytes: usize,
    /// Wakes the emptier for a look the engine asks for; there once the emptier runs.
    asks: Option<Arc<OwnedFd>>,
    /// The kernel keeps calls (`send_kept_calls`).
    keeps_pairs: bool,
    /// How long the emptier pauses at most with its hold full (`Ring::resume`): `EMPTIER_WAIT`.
    full_pause: Duration,
}

struct Shared {
    /// The ring: read by the engine until the emptier starts (and should the emptier end), by
    /// the emptier alone meanwhile.
    reader: Mutex<Reader>,
    /// What the emptier took, for the engine.
    held: Mutex<Held>,
    /// The emptier answered a look the engine asked for (`Held::answered`), or ended.
    answered: Condvar,
    /// Looks the engine asked for so far; the emptier answers them in one look (`Held::answered`).
    asked: AtomicU64,
    /// Wakes the engine: the emptier took records.
    taken: tokio::sync::Notify,
    /// The emptier pauses with its hold full until the engine has handled a chunk
    /// (`Ring::resume`).
    paused_full: AtomicBool,
    /// Pauses begun with the hold full (a unit test's sign that one waits for `Ring::resume`).
    #[cfg(test)]
    pauses: AtomicUsize,
    stop: AtomicBool,
}

/// Records the emptier took out of the ring, oldest first, and which of the engine's asks it
/// answered.
#[derive(Default)]
struct Held {
    chunks: VecDeque<Bytes>,
    /// Every look asked for up to this one (a count of `Shared::asked`) is in `chunks` or was
    /// taken from there.
    answered: u64,
    /// The emptier's thread ended (a panic): the engine reads the ring itself again.
    emptier_ended: bool,
}

/// Where records come from, oldest first: the kernel's ring buffer, or a unit test's list.
pub(crate) trait Records: Send {
    /// Hand the next record to `take`; false when none waits.
    fn next_record(&mut self, take: &mut dyn FnMut(&[u8])) -> bool;

    /// Give the room of the records read so far back to the writer (the kernel's ring: its
    /// consumer position, which `next_record` stores only once a batch: sys/ring_pages.rs).
    fn publish(&mut self) {}
}

/// The ring and the memory its records are copied into.
struct Reader {
    records: Box<dyn Records>,
    store: Arc<Store>,
}

impl Reader {
    /// Move the records waiting in the ring into chunks at the end of `into` until `read_limit`
    /// bytes were read in this call, or the chunks not yet handled (held or being handled) hold
    /// `alive_limit` bytes; returns the bytes moved.
    fn take_from_ring(&mut self, read_limit: usize, alive_limit: usize, into: &mut VecDeque<Bytes>) -> usize {
        let (store, mut chunk, mut read) = (&self.store, None::<Chunk>, 0);
        // The chunk being filled counts alive once sealed (`Chunk::seal`), its bytes until then.
        let alive = |chunk: &Option<Chunk>| {
            store.alive.load(Ordering::Relaxed) + chunk.as_ref().map_or(0, |c| c.used)
        };
        while read < read_limit && alive(&chunk) < alive_limit {
            let more = self.records.next_record(&mut |record| {
                if chunk.as_ref().is_none_or(|c| !c.fits(record.len())) {
                    if let Some(full) = chunk.take() {
                        into.push_back(full.seal());
                    }
                    chunk = Some(Chunk::new(CHUNK_BYTES.max(Chunk::room(record.len())), store));
                }
                read += chunk.as_mut().expect("made above").push(record);
            });
            if !more {
                break;
            }
        }
        self.records.publish();
        if let Some(last) = chunk {
            into.push_back(last.seal());
        }
        read
    }
}

/// The memory of chunks: those of `CHUNK_BYTES` whose records were all handled, for the next
/// chunks, and how many bytes of records sealed chunks hold not yet dropped (the chunk being
/// filled: `take_from_ring` counts it).
#[derive(Default)]
struct Store {
    pool: Mutex<Vec<MmapMut>>,
    alive: AtomicUsize,
}

impl Store {
    fn reuse(&self) -> Option<MmapMut> {
        self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop()
    }

    fn give_back(&self, map: MmapMut) {
        let mut pool = self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.len() == CHUNK_BYTES && pool.len() < POOLED_CHUNKS {
            pool.push(map);
        }
    }
}

/// Records copied out of the ring, each after its length (`LENGTH_BYTES`), padded to 8.
struct Chunk {
    memory: Memory,
    used: usize,
    store: Arc<Store>,
}

enum Memory {
    Mapped(MmapMut),
    /// Where no memory could be mapped: from malloc, which may then fail as well. In words, so
    /// that records are 8-aligned here too, as decode's in-place reads want (a descriptor record,
    /// its learned chain's addresses: sys/decode.rs, `view` and `RecordChain`).
    Heap(Vec<u64>),
}

impl Memory {
    fn bytes(&self) -> &[u8] {
        match self {
            Memory::Mapped(map) => map,
            Memory::Heap(heap) => heap.as_bytes(),
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Memory::Mapped(map) => map,
            Memory::Heap(heap) => heap.as_mut_bytes(),
        }
    }
}

impl Chunk {
    fn new(bytes: usize, store: &Arc<Store>) -> Chunk {
        let reused = if bytes == CHUNK_BYTES { store.reuse() } else { None };
        let memory = match reused.map_or_else(|| MmapMut::map_anon(bytes), Ok) {
            Ok(map) => Memory::Mapped(map),
            Err(err) => {
                log::debug!("cannot map {bytes} bytes for the ring's records: {err}");
                Memory::Heap(vec![0; bytes.div_ceil(size_of::<u64>())])
            }
        };
        Chunk { memory, used: 0, store: Arc::clone(store) }
    }

    /// What a record of `len` bytes takes in a chunk: as much as in the ring (its 8-byte
    /// header, the record padded to 8: kernel/bpf/ringbuf.c, `__bpf_ringbuf_reserve`).
    fn room(len: usize) -> usize {
        LENGTH_BYTES + len.next_multiple_of(8)
    }

    fn fits(&self, len: usize) -> bool {
        self.memory.bytes().len() - self.used >= Chunk::room(len)
    }

    /// Append `record`; returns the bytes it took, counted alive once the chunk is sealed. Only
    /// what its kernel program wrote is copied (`decode::written_spans`); the bytes between keep
    /// whatever the chunk held, as the ring did.
    fn push(&mut self, record: &[u8]) -> usize {
        let at = self.used;
        let bytes = self.memory.bytes_mut();
        bytes[at..at + LENGTH_BYTES].copy_from_slice(&(record.len() as u64).to_ne_bytes());
        let to = &mut bytes[at + LENGTH_BYTES..at + LENGTH_BYTES + record.len()];
        // A close's, a task's, an exec's and an exit's record are one span, the second empty:
        // no call of `memcpy` for it.
        for span in decode::written_spans(record).into_iter().filter(|span| !span.is_empty()) {
            to[span.clone()].copy_from_slice(&record[span]);
        }
        let took = Chunk::room(record.len());
        self.used += took;
        took
    }

    /// Read-only from here on, and counted alive; given back (or unmapped) when the last
    /// `Bytes` of it goes. Counted here, once a chunk, not at each `push`: a locked add per
    /// record waited for the stores of the record's copy to leave the core (where a profile put
    /// ~9% of the daemon's CPU; once a chunk, its CPU per record was 0–7% lower: BENCHMARKS.md,
    /// "The chunk counted alive once").
    fn seal(self) -> Bytes {
        let used = self.used;
        self.store.alive.fetch_add(used, Ordering::Relaxed);
        Bytes::from_owner(Sealed { memory: self.memory, used, store: self.store }).slice(..used)
    }
}

/// A sealed chunk's memory: no longer counted alive, and back to the pool, when the last of
/// its records is dropped.
struct Sealed {
    memory: Memory,
    used: usize,
    store: Arc<Store>,
}

impl AsRef<[u8]> for Sealed {
    fn as_ref(&self) -> &[u8] {
        self.memory.bytes()
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        self.store.alive.fetch_sub(self.used, Ordering::Relaxed);
        if let Memory::Mapped(map) = std::mem::replace(&mut self.memory, Memory::Heap(Vec::new())) {
            self.store.give_back(map);
        }
    }
}

/// Each record of a chunk (`Ring::take`), in order.
pub(crate) fn records(chunk: &Bytes) -> impl Iterator<Item = &[u8]> {
    let mut rest: &[u8] = chunk;
    std::iter::from_fn(move || {
        let (length, after) = rest.split_first_chunk::<LENGTH_BYTES>()?;
        let len = u64::from_ne_bytes(*length) as usize;
        let record = after.get(..len)?;
        rest = after.get(len.next_multiple_of(8)..).unwrap_or_default();
        Some(record)
    })
}

impl Ring {
    /// The ring buffer map `map`, read by the engine alone until `start_emptier`. The kernel
    /// wakes its reader once `wakeup_bytes` wait (`Settings::wakeup_bytes`); the emptier's looks
    /// aim at a quarter of that (`next_look`). The reader tells the kernel its position once an
    /// eighth of `wakeup_bytes` was read (`PUBLISH_SHARE`; never more than an eighth of a quarter
    /// of the ring, which is what the session's threshold is at most), whenever no record is
    /// ready, and at the end of each look.
    pub(crate) fn new(map: MapData, ring_bytes: usize, wakeup_bytes: usize) -> Result<Ring> {
        let publish_every = wakeup_bytes.min(ring_bytes / 4) / PUBLISH_SHARE;
        let ring =
            MappedRing::new(map, publish_every).context("cannot read the records' ring buffer (EVENTS)")?;
        let fd = ring.fd();
        Ok(Ring::reading(Box::new(ring), fd, ring_bytes, wakeup_bytes))
    }

    /// `new` for any `records`; `fd` is readable (edge-triggered) when the kernel wakes its reader.
    fn reading(records: Box<dyn Records>, fd: RawFd, ring_bytes: usize, wakeup_bytes: usize) -> Ring {
        let shared = Shared {
            reader: Mutex::new(Reader { records, store: Arc::default() }),
            held: Mutex::default(),
            answered: Condvar::new(),
            asked: AtomicU64::new(0),
            taken: tokio::sync::Notify::new(),
            paused_full: AtomicBool::new(false),
            #[cfg(test)]
            pauses: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        };
        Ring {
            shared: Arc::new(shared),
            fd,
            ring_bytes,
            look_bytes: wakeup_bytes / 4,
            asks: None,
            keeps_pairs: false,
            full_pause: EMPTIER_WAIT,
        }
    }

    /// The kernel keeps calls and matches them with their closes (`keeps`;
    /// helios-trace-ebpf/src/pairs.rs): have it send what it keeps before every record made
    /// before a moment is taken (`take`), and every `KEPT_SEND_INTERVAL` at the emptier's looks,
    /// so that a kept open reaches the engine within that interval and a look.
    pub(crate) fn keeping_pairs(mut self, keeps: bool) -> Ring {
        self.keeps_pairs = keeps;
        self
    }

    /// Start the emptier (once). After privileges were dropped: the thread inherits the
    /// reduced sets (sys/privileges.rs).
    pub(crate) fn start_emptier(&mut self) -> Result<()> {
        if self.asks.is_some() {
            return Ok(());
        }
        let asks = Arc::new(counter_fd().context("cannot make the ring emptier's wake-up")?);
        let wakeups = Wakeups::new(self.fd, asks.as_raw_fd()).context("cannot wait for the ring buffer")?;
        let emptier = Emptier {
            shared: Arc::clone(&self.shared),
            wakeups,
            asks: Arc::clone(&asks),
            ring_bytes: self.ring_bytes,
            look_bytes: self.look_bytes,
            keeps_pairs: self.keeps_pairs,
            full_pause: self.full_pause,
        };
        std::thread::Builder::new()
            .name("ring-emptier".into())
            .spawn(move || emptier.run())
            .context("cannot start the ring buffer's emptier")?;
        self.asks = Some(asks);
        Ok(())
    }

    /// Whether the emptier runs: started, and not ended. While it does, it hands the engine
    /// what it took at each look (`taken`): while its hold has room, at most `EMPTIER_WAIT`
    /// after it was submitted, or sooner when the kernel wakes it; when full, at its next look
    /// after the engine has handled a chunk (`resume`), or after its pause.
    pub(crate) fn emptied(&self) -> bool {
        self.asks.is_some() && !lock(&self.shared.held).emptier_ended
    }

    /// Completes when the emptier has taken records (never before `start_emptier`).
    pub(crate) async fn taken(&self) {
        if self.asks.is_some() {
            self.shared.taken.notified().await;
        } else {
            std::future::pending().await
        }
    }

    /// Every record submitted before the call, in chunks (`records`), oldest first: those the
    /// emptier holds, then those in the ring, which the emptier takes out at the engine's ask
    /// (or the engine itself, without an emptier). Of the ring, at most its size is read: a
    /// record takes as much room in a chunk as in the ring (`Chunk::room`), so that is all the
    /// ring held at the call, and a process writing without pause cannot keep the engine here
    /// (it did: nothing was handled for as long as it wrote). Drop each chunk once handled:
    /// until then its bytes count against the emptier's hold.
    pub(crate) fn take(&self) -> VecDeque<Bytes> {
        if self.keeps_pairs {
            send_kept_calls();
        }
        self.take_sent()
    }

    /// `take` without asking the kernel for the calls it keeps first: for the engine's drains
    /// on its short timers, which need promptly what the kernel sent (an exec, a CPython's
    /// records), not what it keeps; an ask sends every open then kept, whose close can then no
    /// longer be matched in the kernel (`KEPT_SEND_INTERVAL`).
    pub(crate) fn take_sent(&self) -> VecDeque<Bytes> {
        if let Some(asks) = &self.asks {
            let asked = self.shared.asked.fetch_add(1, Ordering::SeqCst) + 1;
            add_one(asks);
            let held = lock(&self.shared.held);
            let mut held = self
                .shared
                .answered
                .wait_while(held, |held| held.answered < asked && !held.emptier_ended)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if held.answered >= asked {
                return std::mem::take(&mut held.chunks);
            }
        }
        let mut reader = lock(&self.shared.reader);
        let mut chunks = std::mem::take(&mut lock(&self.shared.held).chunks);
        reader.take_from_ring(self.ring_bytes, usize::MAX, &mut chunks);
        chunks
    }

    /// The engine handled (and dropped) a chunk: end the emptier's pause if it paused with its
    /// hold full, without an ask for a look past the hold (`asked` stays). The engine's drain
    /// every 50 ms used to end it with its ask; since the emptier alone hands it records, only
    /// the rarer asks (the once-a-second tick, a CPython's start, a report) would before the
    /// pause's end (`EMPTIER_WAIT`), while the ring filled.
    pub(crate) fn resume(&self) {
        fence(Ordering::SeqCst);
        if self.shared.paused_full.load(Ordering::Relaxed)
            && let Some(asks) = &self.asks
        {
            add_one(asks);
        }
    }

    /// What the emptier took so far, oldest first (once `taken` completed): no look at the
    /// ring, which the emptier has just had.
    pub(crate) fn take_taken(&self) -> VecDeque<Bytes> {
        std::mem::take(&mut lock(&self.shared.held).chunks)
    }
}

impl Drop for Ring {
    /// The emptier ends within `EMPTIER_WAIT` and `full_pause` (a wait, and a pause when its
    /// hold was full; twice `EMPTIER_WAIT` in the daemon); nothing waits for it.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The emptier's thread (`Ring::start_emptier`).
struct Emptier {
    shared: Arc<Shared>,
    wakeups: Wakeups,
    /// The engine's asks for a look (`Ring::take`), counted by the kernel.
    asks: Arc<OwnedFd>,
    ring_bytes: usize,
    look_bytes: usize,
    keeps_pairs: bool,
    full_pause: Duration,
}

impl Emptier {
    fn run(&self) {
        if let Err(err) = own::prefer_short_slices(EMPTIER_SLICE) {
            log::debug!("the ring's emptier keeps the default time slice: {err}");
        }
        let (mut wait, mut last_look, mut answered) = (EMPTIER_WAIT, Instant::now(), 0);
        let mut kept_sent = Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.wakeups.wait(wait);
            // Cleared before the asks are counted: one that comes after wakes the next wait.
            take_count(&self.asks);
            let asked = self.shared.asked.load(Ordering::SeqCst);
            let look = Instant::now();
            // Whatever the engine asked: `Ring::take_sent`'s asks, every millisecond while a
            // CPython starts, would otherwise put the next send off to the next `Ring::take`.
            if self.keeps_pairs && look.duration_since(kept_sent) >= KEPT_SEND_INTERVAL {
                send_kept_calls();
                kept_sent = look;
            }
            let (took, full) = self.look((asked > answered).then_some(asked));
            wait = next_look(took, look.duration_since(last_look), self.look_bytes);
            last_look = look;
            if asked > answered {
                answered = asked;
                self.shared.answered.notify_all();
            } else if took > 0 {
                self.shared.taken.notify_one();
            }
            if full {
                // Let the engine catch up first: it ends the pause once it has handled a chunk
                // (`Ring::resume`), or its ask does. Told before the hold is read again, as
                // `resume` reads the word after the chunk it dropped (both fenced): either the
                // read here sees that drop, or `resume` sees the pause.
                self.shared.paused_full.store(true, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                if self.hold_full() {
                    #[cfg(test)]
                    self.shared.pauses.fetch_add(1, Ordering::Relaxed);
                    wait_readable(self.asks.as_raw_fd(), self.full_pause);
                }
                self.shared.paused_full.store(false, Ordering::Relaxed);
            }
        }
    }

    fn hold_full(&self) -> bool {
        lock(&self.shared.reader).store.alive.load(Ordering::Relaxed) >= self.ring_bytes
    }

    /// Take records out of the ring for the engine: at most as many as make what it holds
    /// the ring's size, or, answering the engine's ask `answering` (a count of
    /// `Shared::asked`), all the ring holds whatever the emptier holds (the engine takes them at
    /// once). Returns the bytes taken, and whether the hold is full.
    fn look(&self, answering: Option<u64>) -> (usize, bool) {
        let mut reader = lock(&self.shared.reader);
        let mut chunks = VecDeque::new();
        let took = match answering {
            Some(_) => reader.take_from_ring(self.ring_bytes, usize::MAX, &mut chunks),
            None => reader.take_from_ring(usize::MAX, self.ring_bytes, &mut chunks),
        };
        let mut held = lock(&self.shared.held);
        held.chunks.extend(chunks);
        if let Some(asked) = answering {
            held.answered = asked;
        }
        (took, reader.store.alive.load(Ordering::Relaxed) >= self.ring_bytes)
    }
}

impl Drop for Emptier {
    /// Ended (a panic included): the engine reads the ring itself from here on, and stops
    /// waiting for an answer.
    fn drop(&mut self) {
        lock(&self.shared.held).emptier_ended = true;
        self.shared.answered.notify_all();
        // The engine drains on its own timer again (`Ring::emptied`).
        self.shared.taken.notify_one();
    }
}

/// Have the kernel send what its `PAIRS` slots keep (helios-trace-ebpf/src/pairs.rs): a close
/// of `PAIRS_FLUSH_FD`, a number no descriptor has, which the exit program answers for the
/// tracer's own process only. The close fails with `EBADF`, as it should; its records are in
/// the ring when it returns.
fn send_kept_calls() {
    // SAFETY: closing a number that is never open closes nothing.
    unsafe { libc::close(helios_trace_common::PAIRS_FLUSH_FD) };
}

/// How long to wait before the next look at the ring, given that the last one, `since` after
/// the one before, took `took` bytes: about the time the ring takes to fill with `look_bytes`
/// at that rate, within [`MIN_LOOK_INTERVAL`, `EMPTIER_WAIT`]. Nothing taken waits the longest:
/// an idle ring costs 50 looks a second.
fn next_look(took: usize, since: Duration, look_bytes: usize) -> Duration {
    if took == 0 {
        return EMPTIER_WAIT;
    }
    let nanos = since.as_nanos().saturating_mul(look_bytes as u128) / took as u128;
    Duration::from_nanos(nanos.min(EMPTIER_WAIT.as_nanos()) as u64).max(MIN_LOOK_INTERVAL)
}

/// A thread that panicked while holding a lock left the queue of chunks whole (a chunk is pushed
/// whole or not at all) and the ring's reader between two records: go on with them. (What the
/// emptier had copied out in that look and not queued yet is lost, uncounted, and so is a record
/// whose copy panicked: the reader is past it, sys/ring_pages.rs.)
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A counter the kernel keeps (eventfd(2)), readable while above 0: the engine's asks for a
/// look, which wake the emptier (`Wakeups`).
fn counter_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall; the new descriptor is owned at once.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to `counter_fd`'s count. It cannot fail: the emptier sets it back to 0 at every
/// look (`take_count`), far below where a write would block.
fn add_one(counter: &OwnedFd) {
    let one = 1u64;
    // SAFETY: 8 bytes from a valid u64 to a descriptor we own.
    unsafe { libc::write(counter.as_raw_fd(), (&raw const one).cast(), size_of::<u64>()) };
}

/// Set `counter_fd`'s count back to 0 (nothing to do when it is: EAGAIN).
fn take_count(counter: &OwnedFd) {
    let mut count = 0u64;
    // SAFETY: room for the 8 bytes eventfd(2) reads.
    unsafe { libc::read(counter.as_raw_fd(), (&raw mut count).cast(), size_of::<u64>()) };
}

/// The kernel's wake-ups of a ring buffer's readers, edge-triggered: the ring's poll says
/// readable whenever one byte waits (kernel/bpf/ringbuf.c, `ringbuf_map_poll_kern`), so a
/// level-triggered wait would return at once under load and take a few records at a time; the
/// kernel wakes its readers only once `Settings::wakeup_bytes` wait (helios-trace-ebpf's
/// emit.rs, `wakeup_flags`), which the emptier's paced looks (`next_look`) mostly forestall.
/// And the engine's asks (`counter_fd`), level-triggered: the emptier sets their count back to 0.
struct Wakeups {
    epoll: OwnedFd,
}

impl Wakeups {
    fn new(ring: RawFd, asks: RawFd) -> std::io::Result<Wakeups> {
        // SAFETY: plain syscalls; the new descriptor is owned at once.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        for (fd, events) in [(ring, libc::EPOLLIN | libc::EPOLLET), (asks, libc::EPOLLIN)] {
            let mut event = libc::epoll_event { events: events as u32, u64: 0 };
            // SAFETY: valid descriptors and event.
            if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Wakeups { epoll })
    }

    /// Until the kernel wakes the ring's readers, the engine asks for a look, or `timeout`
    /// passed (in whole milliseconds: `next_look` waits no less than one).
    fn wait(&self, timeout: Duration) {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        let timeout = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: room for one event. An error (EINTR) is a wake-up like any other.
        unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &mut event, 1, timeout) };
    }
}

/// Wait until `fd` is readable (a ring buffer has records, `counter_fd` counts above 0), or
/// `timeout` passed.
fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask; the caller keeps the ring's
    // fd open while it waits. ppoll, not poll: the exec lane looks again within 100 µs
    // (resolve/python/early.rs), poll counts in milliseconds. An error (EINTR) is a wake-up
    // like any other: the caller reads what is there and waits again.
    unsafe { libc::ppoll(&mut poll, 1, &timeout, std::ptr::null()) };
}

/// The exec notices (`EXEC_NOTICES`), read by the exec lane's thread (observe/exec_lane.rs)
/// with a blocking wait of its own, apart from the runtime.
pub(crate) struct Notices(RingBuf<MapData>);

impl Notices {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Notices {
        Notices(ring)
    }

    /// Wait until the kernel says notices are waiting, or `timeout` passed.
    pub(crate) fn wait(&self, timeout: Duration) {
        wait_readable(self.0.as_raw_fd(), timeout);
    }

    /// The next notice: the process that exec'd and its exec record's time. A malformed
    /// record is skipped (the exec record in `EVENTS` is the one that counts).
    pub(crate) fn next(&mut self) -> Option<(u32, u64)> {
        loop {
            let record = self.0.next()?;
            if let Ok(notice) = crate::sys::decode::exec_notice(&record) {
                return Some(notice);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of every length (none a descriptor record, whose unwritten parts are not copied:
    /// `a_learned_chains_record_is_read_in_place`) come back whole and in order, across chunks,
    /// one larger than a chunk included, and each starts 8-aligned as in the ring; what is copied out counts
    /// alive until its chunk is dropped, and a chunk of the usual size is reused.
    #[test]
    fn records_come_back_whole_and_in_order() {
        let records: Vec<Vec<u8>> = [1, 7, 8, 9, 612, 9_000, CHUNK_BYTES + 5, 0, 3]
            .iter()
            .enumerate()
            .map(|(i, len)| vec![i as u8; *len])
            .collect();
        let store = Arc::<Store>::default();
        let mut chunks = VecDeque::new();
        let mut chunk = Chunk::new(CHUNK_BYTES, &store);
        for record in &records {
            if !chunk.fits(record.len()) {
                let next = Chunk::new(CHUNK_BYTES.max(Chunk::room(record.len())), &store);
                chunks.push_back(std::mem::replace(&mut chunk, next).seal());
            }
            assert_eq!(chunk.push(record), Chunk::room(record.len()));
        }
        chunks.push_back(chunk.seal());
        let copied: usize = records.iter().map(|r| Chunk::room(r.len())).sum();
        assert_eq!(store.alive.load(Ordering::Relaxed), copied);
        let back: Vec<&[u8]> = chunks.iter().flat_map(records_of).collect();
        assert_eq!(back.len(), records.len());
        for (got, want) in back.iter().zip(&records) {
            assert_eq!(*got, &want[..]);
            assert_eq!(got.as_ptr() as usize % 8, 0, "a record of {} bytes", want.len());
        }
        // Handled: nothing counts alive; the two chunks of the usual size go back to the pool,
        // the larger one is unmapped; the next chunk reuses a pooled one.
        drop(back);
        drop(chunks);
        assert_eq!(store.alive.load(Ordering::Relaxed), 0);
        assert_eq!(store.pool.lock().unwrap().len(), 2);
        let _reused = Chunk::new(CHUNK_BYTES, &store);
        assert_eq!(store.pool.lock().unwrap().len(), 1);
    }

    /// A learned chain's record, copied by its written spans after a record of odd length, is
    /// 8-aligned in its chunk: the engine reads its addresses in place (sys/decode.rs,
    /// `RecordChain`).
    #[test]
    fn a_learned_chains_record_is_read_in_place() {
        use helios_trace_common::{LearnedChain, MAX_CHAIN_FRAMES, kind};

        use crate::sys::{
            decode::tests::{bytes_of, syscall},
            syscalls::Call,
        };
        let mut record = syscall(Call::OpenAt, 3, [libc::AT_FDCWD as u64, 0, 0, 0, 0, 0]);
        record.header.kind = kind::FD_SYSCALL_CHAIN;
        let mut chain = LearnedChain { depth: 2, flags: 0, addresses: [0; MAX_CHAIN_FRAMES] };
        chain.addresses[..2].copy_from_slice(&[0x1000, 0x2000]);
        let store = Arc::<Store>::default();
        let mut chunk = Chunk::new(CHUNK_BYTES, &store);
        chunk.push(&[7; 13]);
        chunk.push(&[bytes_of(&record), bytes_of(&chain)].concat());
        let sealed = chunk.seal();
        let copied = records(&sealed).nth(1).expect("two records");
        let read = decode::learned_chain(copied).unwrap().expect("a chain");
        assert!(matches!(read.addresses, std::borrow::Cow::Borrowed(&[0x1000, 0x2000])), "{read:?}");
    }

    fn records_of(chunk: &Bytes) -> Vec<&[u8]> {
        records(chunk).collect()
    }

    /// A ring of records the test writes, which counts the reads of any thread but the
    /// emptier's, and the records read and not yet given back (`Records::publish`), and panics
    /// at the emptier's first read when told to.
    #[derive(Clone, Default)]
    struct TestRing {
        waiting: Arc<Mutex<VecDeque<Vec<u8>>>>,
        read_by_others: Arc<AtomicUsize>,
        unpublished: Arc<AtomicUsize>,
        emptier_panics: bool,
    }

    impl Records for TestRing {
        fn next_record(&mut self, take: &mut dyn FnMut(&[u8])) -> bool {
            if std::thread::current().name() == Some("ring-emptier") {
                assert!(!self.emptier_panics, "the emptier ends");
            } else {
                self.read_by_others.fetch_add(1, Ordering::Relaxed);
            }
            let Some(record) = self.waiting.lock().unwrap().pop_front() else { return false };
            take(&record);
            self.unpublished.fetch_add(1, Ordering::Relaxed);
            true
        }

        fn publish(&mut self) {
            self.unpublished.store(0, Ordering::Relaxed);
        }
    }

    impl TestRing {
        fn write(&self, records: &[Vec<u8>]) {
            self.waiting.lock().unwrap().extend(records.iter().cloned());
        }

        fn left(&self) -> usize {
            self.waiting.lock().unwrap().len()
        }

        /// A ring of `ring_bytes` read through it, whose kernel never wakes the reader.
        fn ring(&self, ring_bytes: usize) -> (Ring, OwnedFd) {
            let never_woken = counter_fd().unwrap();
            let ring =
                Ring::reading(Box::new(self.clone()), never_woken.as_raw_fd(), ring_bytes, ring_bytes / 4);
            (ring, never_woken)
        }
    }

    fn taken(chunks: &VecDeque<Bytes>) -> Vec<Vec<u8>> {
        chunks.iter().flat_map(records_of).map(<[u8]>::to_vec).collect()
    }

    fn numbered(from: usize, count: usize, len: usize) -> Vec<Vec<u8>> {
        (from..from + count).map(|i| [i.to_ne_bytes().to_vec(), vec![0; len]].concat()).collect()
    }

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < until, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Once the emptier runs, only it reads the ring: an engine stopped inside `take` (a
    /// debugger, a descheduled thread) then never stops it. `take` still returns every record
    /// written before it was called, oldest first: those the emptier held, then the rest of
    /// the ring, past the emptier's own limit; `take_taken` only what the emptier held. With the
    /// engine reading the ring itself under the emptier's lock, this failed at
    /// `read_by_others`.
    #[test]
    fn once_the_emptier_runs_only_it_reads_the_ring_and_take_misses_nothing() {
        const RING: usize = 64 * 1024;
        let test = TestRing::default();
        let (mut ring, _fd) = test.ring(RING);
        // Before the emptier: the engine reads the ring itself.
        test.write(&numbered(0, 10, 100));
        assert_eq!(taken(&ring.take()), numbered(0, 10, 100));
        assert_eq!(test.read_by_others.swap(0, Ordering::Relaxed), 11, "10 records and the end");
        assert_eq!(test.unpublished.load(Ordering::Relaxed), 0, "their room given back");

        ring.start_emptier().unwrap();
        // More than the emptier holds (its limit is the ring's size): it stops at its limit.
        test.write(&numbered(10, 100, 1000));
        wait_for("the emptier's look", || !lock(&ring.shared.held).chunks.is_empty());
        let held_at_limit = 100 - test.left();
        assert!(
            (64..=66).contains(&held_at_limit),
            "the emptier held {held_at_limit} records of 1,008 bytes"
        );
        // Stopped at its limit, records left in the ring: the room of those read given back.
        assert_eq!(test.unpublished.load(Ordering::Relaxed), 0);
        // Taken, not yet handled: the hold stays full.
        let handling = ring.take_taken();
        assert_eq!(taken(&handling), numbered(10, held_at_limit, 1000));
        // The engine asks: the rest of the ring, however full the emptier's hold is.
        test.write(&numbered(110, 20, 7));
        let mut want = numbered(10 + held_at_limit, 100 - held_at_limit, 1000);
        want.extend(numbered(110, 20, 7));
        assert_eq!(taken(&ring.take()), want);
        assert_eq!(test.left(), 0);
        drop(handling);
        // Asked again at once, with nothing new: answered, empty.
        assert!(ring.take().is_empty());
        assert_eq!(test.read_by_others.load(Ordering::Relaxed), 0, "the engine read the ring");
    }

    /// An emptier whose hold is full pauses until the engine has handled a chunk: the engine's
    /// `resume` then wakes it (an ask's wake-up without an ask: `asked` stays). Here the pause
    /// would last an hour: without `resume` the rest of the ring is not taken within
    /// `wait_for`'s 10 s (the engine's drain every 50 ms used to end it with its ask).
    /// `resume` wakes nobody when none pauses.
    #[test]
    fn an_emptier_paused_with_its_hold_full_is_woken_once_the_engine_handled_it() {
        const RING: usize = 64 * 1024;
        let test = TestRing::default();
        let (mut ring, _fd) = test.ring(RING);
        ring.full_pause = Duration::from_secs(3600);
        // Not paused: no wake-up written.
        ring.asks = Some(Arc::new(counter_fd().unwrap()));
        ring.resume();
        let asks = ring.asks.take().unwrap();
        let mut count = 0u64;
        // SAFETY: room for the 8 bytes eventfd(2) reads.
        let read = unsafe { libc::read(asks.as_raw_fd(), (&raw mut count).cast(), size_of::<u64>()) };
        assert_eq!(read, -1, "nothing to read: no wake-up");

        ring.start_emptier().unwrap();
        test.write(&numbered(0, 100, 1000));
        wait_for("the emptier's pause", || ring.shared.pauses.load(Ordering::Relaxed) > 0);
        let left = test.left();
        assert!(left > 0, "the hold is the ring's size: records stay in the ring");
        drop(ring.take_taken());
        ring.resume();
        wait_for("the rest of the ring taken", || test.left() == 0);
        assert_eq!(ring.shared.asked.load(Ordering::Relaxed), 0, "no ask");
        let mut all = taken(&ring.take_taken());
        all.extend(taken(&ring.take()));
        assert_eq!(all, numbered(100 - left, left, 1000));
    }

    /// An emptier that ended (here by a panic) leaves the ring to the engine: `take` reads it
    /// itself instead of waiting for an answer that never comes.
    #[test]
    fn an_emptier_that_ended_leaves_the_ring_to_the_engine() {
        let test = TestRing { emptier_panics: true, ..TestRing::default() };
        let (mut ring, _fd) = test.ring(64 * 1024);
        ring.start_emptier().unwrap();
        test.write(&numbered(0, 3, 10));
        wait_for("the emptier's end", || lock(&ring.shared.held).emptier_ended);
        assert_eq!(taken(&ring.take()), numbered(0, 3, 10));
        assert!(test.read_by_others.load(Ordering::Relaxed) > 0);
    }

    /// The emptier's next look comes when the ring holds about `look_bytes` at the rate its
    /// last look saw: never sooner than 1 ms, never later than an idle ring's 20 ms.
    #[test]
    fn looks_are_paced_by_the_rate_found() {
        const LOOK: usize = 256 * 1024;
        let ms = Duration::from_millis;
        // Nothing, or a trickle (64 KiB in 20 ms): the idle wait.
        assert_eq!(next_look(0, ms(20), LOOK), EMPTIER_WAIT);
        assert_eq!(next_look(64 * 1024, ms(20), LOOK), EMPTIER_WAIT);
        // 256 KiB in 20 ms: the same rate again fills 256 KiB in 20 ms.
        assert_eq!(next_look(LOOK, ms(20), LOOK), ms(20));
        // 5 MiB in 20 ms (262 MB/s): 1 ms, the shortest; and faster still, still 1 ms.
        assert_eq!(next_look(5 * 1024 * 1024, ms(20), LOOK), MIN_LOOK_INTERVAL);
        assert_eq!(next_look(usize::MAX, ms(1), LOOK), MIN_LOOK_INTERVAL);
        // 1 MiB in 20 ms: a quarter of it comes in 5 ms.
        assert_eq!(next_look(1024 * 1024, ms(20), LOOK), ms(5));
        // A look right after a wake-up (since ~0) that took much: the shortest wait.
        assert_eq!(next_look(LOOK * 4, Duration::ZERO, LOOK), MIN_LOOK_INTERVAL);
        // A look long after the last (an emptier that was not scheduled): the rate it saw.
        assert_eq!(next_look(LOOK, Duration::from_secs(3600), LOOK), EMPTIER_WAIT);
    }
}
