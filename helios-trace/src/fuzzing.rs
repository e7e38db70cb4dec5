//! The parsers of untrusted input, as fuzz targets: ring-buffer records (written by our kernel
//! programs, but a bug or a future layout must not crash the daemon) and the /proc text the
//! traced processes control (paths and names with newlines, invalid UTF-8, huge values).
//!
//! `fuzz/` drives these with cargo-fuzz (coverage-guided, `cargo xtask fuzz`); the test suite
//! replays the committed corpus through them (tests/integration/fuzz_corpus.rs). None may panic.
use crate::{
    resolve::{holders, modules::maps::ProcessMaps, python},
    sys::{checks, decode, proc, syscalls::SyscallTable},
};

/// A ring-buffer record.
pub fn record(data: &[u8]) {
    thread_local!(static TABLE: SyscallTable = SyscallTable::native());
    TABLE.with(|table| {
        let _ = decode::decode(data, table);
        // Both ways a record is read: in place where aligned (the ring emptier's chunks), copied
        // where not (sys/decode.rs, `view`); libFuzzer's data is malloc's, aligned.
        let mut shifted = vec![0u8; data.len() + 1];
        shifted[1..].copy_from_slice(data);
        let _ = decode::decode(&shifted[1..], table);
        let _ = decode::user_stack(data);
        let _ = decode::learned_chain(data);
        for span in decode::written_spans(data) {
            let _ = &data[span];
        }
    });
}

/// /proc/PID/maps text.
pub fn maps(data: &[u8]) {
    let maps = ProcessMaps::parse(&String::from_utf8_lossy(data));
    for probe in [0u64, 0x1000, 0x7fff_ffff_f000, u64::MAX] {
        let _ = maps.lookup(probe);
    }
}

/// /proc/PID/fdinfo/FD text, /proc/self/status, a tracepoint format file, a kernel release.
pub fn proc_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = proc::fds::parse_fdinfo_cloexec(&text);
    let _ = checks::effective_capabilities(&text);
    let _ = checks::tracepoint_field_offset(&text, "group_dead");
    let _ = checks::kernel_version(&text);
}

/// A /proc/PID/fd link target, and the text any path or name becomes in reports.
pub fn fd_link(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(target) = text.parse::<procfs::process::FDTarget>() {
        let _ = proc::fds::classify(&target, || {
            Some(u32::from_le_bytes([data.first().copied().unwrap_or(0), 0x80, 0, 0]))
        });
    }
    let printed = crate::model::fd::printable(data, 64);
    assert!(!printed.contains('\n'), "printable text never contains a raw newline");
}

/// What a traced CPython process's memory supplies: line tables and `_Py_DebugOffsets`. The
/// first byte picks the parser (3.10 table, 3.11+ table, debug offsets), the next four are an
/// instruction offset.
pub fn python(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    let offset = rest.get(..4).map_or(0, |b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64);
    let table = rest.get(4..).unwrap_or_default();
    match which % 3 {
        0 => {
            let _ = python::lines::line_310(table, 1, offset);
        }
        1 => {
            let _ = python::lines::line_311(table, 1, offset);
        }
        _ => {
            let _ = python::layout::layout_from_debug_offsets(rest, 13);
        }
    }
}

/// A CPython heap as the traced process's memory supplies it (resolve/holders): the first
/// byte picks the version (3.10 to 3.14), the rest is memory at 0x10000 starting with
/// `_PyRuntime`. Pointers anywhere, rings that loop, sizes that lie: the walk ends, bounded.
pub fn heap(data: &[u8]) {
    let Some((&which, image)) = data.split_first() else { return };
    let _ = holders::walk_image(10 + u32::from(which % 5), 0x10000, image);
}
