//! Names of JIT-compiled code from the perf map a runtime writes (`/tmp/perf-PID.map`: Node.js
//! with `--perf-basic-prof`, CPython 3.12+ with `-X perf`, the JVM — HotSpot 17+ writes it on
//! `jcmd PID Compiler.perfmap`): one line per code object, `START SIZE NAME` (hexadecimal),
//! appended as code is made (the format of linux's tools/perf/Documentation/jit-interface.txt),
//! or written whole again (HotSpot's command truncates the file and writes every live blob).
//!
//! The file is read inside the process's own mount namespace (`/proc/PID/root/tmp/…`) and named
//! by the pid the process sees itself as (the last `NSpid` entry), so a runtime in a container
//! is named like one on the host. It grows while the runtime compiles: an address it does not
//! name yet reads what was appended since (never more than `MAX_BYTES` in all, at most
//! `MAX_READS` times), and so does a stack's first JIT address when the map grew since it was
//! last read (`refresh_if_grown`): V8 frees code and compiles new code where it was, so an
//! address an old line names may hold other code now. Code whose range was written again, in
//! whole or in part, is named by the latest line: a line takes the place of every earlier one
//! it overlaps. A map written whole again is read again from its start, forgetting the old
//! one (HotSpot leaves out the code it freed): HotSpot's (`0x` fields) whenever its size or
//! modification time changed, another when what was read is no longer where it was read.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    sync::Arc,
};

/// A perf map is read at most this many times per process image (the first read included;
/// each read takes only what was appended since the last)...
const MAX_READS: u32 = 1024;
/// ...and no further than this many bytes (a long-running JVM's map can grow without end).
const MAX_BYTES: u64 = 64 << 20;

/// One JIT-compiled function as a frame shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct JitSymbol {
    /// The function (`connectAndKeep`), or the whole name for what is not a JavaScript
    /// function (`Builtin:ArgumentsAdaptorTrampoline`, a JVM method).
    pub(crate) name: Arc<str>,
    pub(crate) file: Option<Arc<str>>,
    /// The line the function starts at (V8 names code by its function, not by line).
    pub(crate) line: Option<u32>,
    /// A copy of CPython's perf trampoline (`py::` lines): the Python function it enters
    /// (resolve/modules/trampoline.rs).
    pub(crate) python: bool,
}

/// The perf map of one process image.
#[derive(Debug)]
pub(crate) struct PerfMap {
    /// The process's root directory (`/proc/PID/root`).
    root: PathBuf,
    /// The map's path inside that root.
    inside: PathBuf,
    /// start → (end, symbol): the latest line for each range (no two overlap).
    code: BTreeMap<u64, (u64, JitSymbol)>,
    /// The file's length at the last read: `refresh_if_grown` reads again only past it (a
    /// last line being written, not yet whole, is not read again and again).
    seen_len: u64,
    /// Reads that named code the map did not (`generation`)...
    generation: u32,
    /// ...and lines that took the place of earlier ones (code freed and made anew).
    replaced: u32,
    /// Where the next read starts: the end of the last whole line read.
    offset: u64,
    /// That last line, newline included: while the file still holds it just before `offset`,
    /// the file was appended to, not written again.
    last_line: Vec<u8>,
    /// Bytes read in all (a map written again is read again: bounded by `MAX_BYTES` too).
    read: u64,
    reads: u32,
    /// HotSpot's map (its fields written `0x…`): always written whole, never appended to, so
    /// read again whole whenever its size or modification time changed (`stamp`).
    whole: bool,
    stamp: Option<(u64, std::time::SystemTime)>,
}

impl PerfMap {
    /// The map of `pid` as seen under `proc_root`; None when the process has none (it does
    /// not write one, or is gone).
    pub(crate) fn open(proc_root: &Path, pid: u32) -> Option<PerfMap> {
        let ns_pid = crate::sys::proc::ns_pid(proc_root, pid)?;
        let root = proc_root.join(pid.to_string()).join("root");
        let inside = PathBuf::from(format!("tmp/perf-{ns_pid}.map"));
        let mut map = PerfMap {
            root,
            inside,
            code: BTreeMap::new(),
            seen_len: 0,
            generation: 0,
            replaced: 0,
            offset: 0,
            last_line: Vec::new(),
            read: 0,
            reads: 0,
            whole: false,
            stamp: None,
        };
        map.refresh().then_some(map)
    }

    /// The code at `address`: from what was read, else after reading what was appended since.
    pub(crate) fn lookup(&mut self, address: u64) -> Option<JitSymbol> {
        if let Some(symbol) = self.find(address) {
            return Some(symbol);
        }
        (self.refresh()).then(|| self.find(address)).flatten()
    }

    /// Read what was appended since the last read, if anything was: before naming the JIT
    /// frames of a stack, whose code may have taken the place of code an earlier line names.
    pub(crate) fn refresh_if_grown(&mut self) {
        let grown = open_in_root(&self.root, &self.inside)
            .and_then(|file| file.metadata().ok())
            .is_some_and(|m| m.len() != self.seen_len || self.whole);
        if !grown {
            return;
        }
        let (generation, replaced) = (self.generation, self.replaced);
        self.refresh();
        // New code elsewhere changes no stack already named, and the stacks with unnamed code
        // are looked at again on their own schedule (resolve/stacks.rs, `unnamed_jit`): only
        // a line that took an earlier one's place makes what was resolved stale.
        if self.replaced == replaced {
            self.generation = generation;
        }
    }

    /// Changes when a read named code the map did not, or named code anew: what was resolved
    /// with the map before may be named otherwise now.
    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    /// Where the copy of CPython's perf trampoline at `address` starts and its size, if a
    /// `py::` line names the code there (read again as `lookup` does on a miss).
    pub(crate) fn python_trampoline_at(&mut self, address: u64) -> Option<(u64, u64)> {
        if self.find(address).is_none() {
            self.refresh();
        }
        let (start, (end, symbol)) = self.code.range(..=address).next_back()?;
        (address < *end && symbol.python).then_some((*start, end - start))
    }

    fn find(&self, address: u64) -> Option<JitSymbol> {
        let (_, (end, symbol)) = self.code.range(..=address).next_back()?;
        (address < *end).then(|| symbol.clone())
    }

    /// Read the lines appended since the last read, or the whole map again when it was written
    /// again; false when nothing new could be read (`generation` counts the reads that did).
    pub(crate) fn refresh(&mut self) -> bool {
        if self.reads >= MAX_READS || self.read >= MAX_BYTES {
            return false;
        }
        let Some(mut file) = open_in_root(&self.root, &self.inside) else { return false };
        let Ok(metadata) = file.metadata() else { return false };
        let (len, modified) = (metadata.len(), metadata.modified().ok());
        if !metadata.is_file() {
            return false;
        }
        self.seen_len = len;
        let stamp = modified.map(|m| (len, m));
        if self.whole && stamp.is_some() && stamp == self.stamp {
            return false;
        }
        if self.whole || !self.still_holds_what_was_read(&mut file, len) {
            // Written whole again: every name may have changed.
            if !self.code.is_empty() {
                self.replaced += 1;
            }
            self.code.clear();
            self.offset = 0;
            self.last_line.clear();
        }
        if len <= self.offset || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        self.reads += 1;
        self.generation += 1;
        let mut text = Vec::new();
        if file.take(MAX_BYTES - self.read).read_to_end(&mut text).is_err() {
            return false;
        }
        // Only whole lines: the runtime may be writing the last one.
        let Some(end) = text.iter().rposition(|b| *b == b'\n') else { return false };
        self.offset += end as u64 + 1;
        self.read += end as u64 + 1;
        let last_start = text[..end].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.last_line = text[last_start..=end].to_vec();
        self.whole |= text.starts_with(b"0x");
        self.stamp = stamp;
        for line in String::from_utf8_lossy(&text[..end]).lines() {
            if let Some((start, size, symbol)) = parse_line(line) {
                self.insert(start, start.saturating_add(size), symbol);
            }
        }
        true
    }

    /// Code at [start, end): it replaces every earlier line whose range it overlaps (that code
    /// was freed for it to be there).
    fn insert(&mut self, start: u64, end: u64, symbol: JitSymbol) {
        // An empty range names nothing, and takes nothing's place.
        if end <= start {
            return;
        }
        let mut overlapped: Vec<u64> = self.code.range(start..end).map(|(s, _)| *s).collect();
        if let Some((&before, &(before_end, _))) = self.code.range(..start).next_back()
            && before_end > start
        {
            overlapped.push(before);
        }
        for old in &overlapped {
            if self.code.get(old).is_some_and(|(_, named)| *named != symbol || *old != start) {
                self.replaced += 1;
            }
            self.code.remove(old);
        }
        self.code.insert(start, (end, symbol));
    }

    /// Whether the file (`len` bytes now) still has the last line read where it was read: a
    /// runtime that appends keeps it, one that writes the map again (shorter, or other code
    /// at that place) does not. A map written again whose text happens to be the same up to
    /// there is read on from there, which is then as right as reading it again.
    fn still_holds_what_was_read(&self, file: &mut File, len: u64) -> bool {
        if self.last_line.is_empty() {
            return true;
        }
        if len < self.offset {
            return false;
        }
        let mut there = vec![0; self.last_line.len()];
        let start = self.offset - self.last_line.len() as u64;
        file.seek(SeekFrom::Start(start)).is_ok()
            && file.read_exact(&mut there).is_ok()
            && there == self.last_line
    }
}

/// Open `inside` (relative) within the directory `root` as if it were `/`: the process owns
/// its /tmp, and a symbolic link it put there (to `/etc/shadow`, or `tmp` itself a link) must
/// resolve in its own root, never in the tracer's, which an absolute link under
/// /proc/PID/root would (openat2 with RESOLVE_IN_ROOT, include/uapi/linux/openat2.h; Linux
/// 5.6+). Magic links (/proc/self/fd/N) are refused.
fn open_in_root(root: &Path, inside: &Path) -> Option<File> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    let dir = File::open(root).ok()?;
    let path = std::ffi::CString::new(inside.as_os_str().as_bytes()).ok()?;
    // SAFETY: open_how is plain integers; all zero is its empty value (libc marks it
    // non-exhaustive: the kernel may grow it).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid directory descriptor, a NUL-terminated path and an open_how of the size
    // passed; the descriptor returned is owned by the File made of it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            path.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    // SAFETY: a descriptor openat2 just returned, owned by nothing else.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd as i32) })
}

/// `START SIZE NAME`; None for a line that is not one.
fn parse_line(line: &str) -> Option<(u64, u64, JitSymbol)> {
    let mut fields = line.splitn(3, ' ');
    let start = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
    let size = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
    let name = fields.next()?.trim();
    (!name.is_empty()).then(|| (start, size, symbol(name)))
}

/// V8 names JavaScript code `KIND:TIERfunction file:line:column` (src/logging/log.cc,
/// `V8FileLogger::CodeCreateEvent` and `ComputeMarker`): KIND `JS` (`LazyCompile`, `Function`
/// before V8 10), TIER `~` interpreted, `^` baseline, `+` Maglev, `*` optimized. The same
/// function is named alike at every tier, so one line of JavaScript stays one site while V8
/// compiles it again. Any other name is kept whole.
fn symbol(name: &str) -> JitSymbol {
    let whole = || JitSymbol { name: Arc::from(name), file: None, line: None, python: false };
    // CPython's perf trampolines (3.12+ `-X perf`, Python/perf_trampoline.c): `py::QUALNAME:FILE`.
    if let Some((function, file)) = name.strip_prefix("py::").and_then(|rest| rest.split_once(':')) {
        return JitSymbol {
            name: Arc::from(function),
            file: Some(Arc::from(file)),
            line: None,
            python: true,
        };
    }
    if let Some(method) = hotspot_method(name) {
        return JitSymbol { name: Arc::from(method), file: None, line: None, python: false };
    }
    let Some((kind, rest)) = name.split_once(':') else { return whole() };
    if !matches!(kind, "JS" | "LazyCompile" | "Function" | "Script" | "Eval") {
        return whole();
    }
    let rest = rest.trim_start_matches(['~', '^', '+', '*']);
    // The location is the last word: `file:line:column`, the file possibly with colons
    // (`node:net`, `file:///srv/app.js`).
    let (function, location) = match rest.rsplit_once(' ') {
        Some((function, location)) => (function.trim(), location),
        None => ("", rest),
    };
    let mut parts = location.rsplitn(3, ':');
    let (_column, line, file) = (parts.next(), parts.next(), parts.next());
    let (Some(line), Some(file)) = (line.and_then(|l| l.parse().ok()), file) else { return whole() };
    let function = if function.is_empty() { "(anonymous)" } else { function };
    JitSymbol { name: Arc::from(function), file: Some(Arc::from(file)), line: Some(line), python: false }
}

/// HotSpot names a compiled method `RETURN CLASS.METHOD(PARAMETERS)` (hotspot's
/// codeCache.cpp, `CodeCache::write_perf_map`: `Method::external_name`, the same in 17 and 25):
/// `void LeakClient.connectAndKeep(int, int)`. The method is kept with its parameters (which
/// overload), without the return type: `LeakClient.connectAndKeep(int, int)`, the shape
/// model/frame.rs knows a JVM method by. None for its other blobs (`Interpreter`,
/// `StubRoutines (1)`, `I2C/C2I adapters`).
fn hotspot_method(name: &str) -> Option<&str> {
    let open = name.find('(')?;
    // No `:` before the parameters: V8's `KIND:` names (`RegExp:a b.c(d)`) are not methods.
    let (_return_type, method) = name[..open].rsplit_once(' ').filter(|_| !name[..open].contains(':'))?;
    let qualified = method.contains('.') && name.ends_with(')');
    qualified.then(|| &name[open - method.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v8_names_are_function_file_and_line_at_every_tier() {
        let names = [
            "JS:~connectAndKeep /srv/app/client.js:16:24",
            "JS:^connectAndKeep /srv/app/client.js:16:24",
            "JS:*connectAndKeep /srv/app/client.js:16:24",
            "LazyCompile:~connectAndKeep /srv/app/client.js:16:24",
        ];
        for name in names {
            let symbol = symbol(name);
            assert_eq!(
                (&*symbol.name, symbol.file.as_deref(), symbol.line),
                ("connectAndKeep", Some("/srv/app/client.js"), Some(16)),
                "{name}"
            );
        }
        let internal = symbol("JS:~connect node:net:1206:17");
        assert_eq!((internal.file.as_deref(), internal.line), (Some("node:net"), Some(1206)));
        let url = symbol("JS:^ file:///srv/app.mjs:3:9");
        assert_eq!(
            (&*url.name, url.file.as_deref(), url.line),
            ("(anonymous)", Some("file:///srv/app.mjs"), Some(3))
        );
        let python = symbol("py::Handler.on_connect:/srv/app.py");
        assert_eq!((&*python.name, python.file.as_deref()), ("Handler.on_connect", Some("/srv/app.py")));
        assert!(python.python);
        for other in [
            "Builtin:InterpreterEntryTrampoline",
            "Stub:CEntry",
            "Interpreter",
            "StubRoutines (1)",
            "I2C/C2I adapters",
        ] {
            assert_eq!(
                symbol(other),
                JitSymbol { name: Arc::from(other), file: None, line: None, python: false }
            );
        }
    }

    #[test]
    fn hotspot_methods_are_class_method_and_parameters() {
        let names = [
            ("void LeakClient.connectAndKeep(int, int)", "LeakClient.connectAndKeep(int, int)"),
            (
                "void java.net.Socket.<init>(java.net.InetAddress, int)",
                "java.net.Socket.<init>(java.net.InetAddress, int)",
            ),
            ("java.lang.Object[] a.B$C.m()", "a.B$C.m()"),
            (
                "void LeakClient$$Lambda$14/0x0000000800c03000.run()",
                "LeakClient$$Lambda$14/0x0000000800c03000.run()",
            ),
        ];
        for (line, method) in names {
            let symbol = symbol(line);
            assert_eq!((&*symbol.name, symbol.file.as_deref()), (method, None), "{line}");
            assert!(crate::model::frame::is_jvm_method(&symbol.name), "{line}");
        }
        for blob in [
            "Interpreter",
            "StubRoutines (1)",
            "throw_div0_exception Runtime1 stub",
            "Builtin:X",
            "RegExp:a b.c(d)",
        ] {
            assert!(!crate::model::frame::is_jvm_method(&symbol(blob).name), "{blob}");
        }
    }

    /// A procfs of one process whose root's /tmp holds its perf map under its own pid.
    fn procfs(pid: u32, ns_pid: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join(pid.to_string());
        std::fs::create_dir_all(proc.join("root/tmp")).unwrap();
        std::fs::write(proc.join("status"), format!("Name:\tnode\nNSpid:\t{pid}\t{ns_pid}\n")).unwrap();
        let map = proc.join(format!("root/tmp/perf-{ns_pid}.map"));
        (dir, map)
    }

    #[test]
    fn the_map_is_read_in_the_process_namespace_and_again_as_it_grows() {
        let (dir, path) = procfs(4242, 7);
        assert!(PerfMap::open(dir.path(), 4242).is_none(), "no map yet");
        std::fs::write(&path, "7f0000001000 100 JS:~first /a.js:1:1\n7f0000002000 80 Builtin:X\n7f00000030")
            .unwrap();
        let mut map = PerfMap::open(dir.path(), 4242).unwrap();
        assert_eq!(&*map.lookup(0x7f0000001010).unwrap().name, "first");
        assert!(map.lookup(0x7f0000001100).is_none(), "the end is exclusive");
        assert_eq!(&*map.lookup(0x7f000000207f).unwrap().name, "Builtin:X");
        // The half-written line is read once it is whole; a range written again is named by
        // the latest line.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(
            &mut file,
            b"00 40 JS:*third /a.js:9:1\n7f0000001000 100 JS:~again /a.js:2:1\n",
        )
        .unwrap();
        assert_eq!(&*map.lookup(0x7f0000003010).unwrap().name, "third");
        assert_eq!(&*map.lookup(0x7f0000001010).unwrap().name, "again");
        assert!(map.lookup(0x10).is_none());
        // Code made where freed code was, overlapping it without the same start: the new line
        // names the whole of its range, and the old line nothing any more.
        std::io::Write::write_all(
            &mut file,
            b"7f0000000f80 100 JS:*moved /a.js:5:1
",
        )
        .unwrap();
        assert_eq!(&*map.lookup(0x7f0000001010).unwrap().name, "again", "not read yet: a hit reads nothing");
        map.refresh_if_grown();
        assert_eq!(&*map.lookup(0x7f0000001010).unwrap().name, "moved");
        assert!(map.lookup(0x7f00000010a0).is_none(), "past the new code: the old line is gone");
        let reads = map.reads;
        map.refresh_if_grown();
        assert_eq!(map.reads, reads, "a map that did not grow is not read again");
        // What is resolved is stale only when a line took another's place: new code elsewhere
        // leaves the generation; a half-written line is not read again until it grows.
        let generation = map.generation();
        std::io::Write::write_all(&mut file, b"7f0000005000 10 JS:*elsewhere /a.js:7:1\n7f00000060").unwrap();
        map.refresh_if_grown();
        assert_eq!(&*map.lookup(0x7f0000005001).unwrap().name, "elsewhere");
        assert_eq!(map.generation(), generation);
        let reads = map.reads;
        map.refresh_if_grown();
        assert_eq!(map.reads, reads, "the same half line: not read again");
        std::io::Write::write_all(
            &mut file,
            b"00 10 JS:*fifth /a.js:8:1\n7f0000005000 10 JS:*sixth /a.js:9:1\n",
        )
        .unwrap();
        map.refresh_if_grown();
        assert_eq!(&*map.lookup(0x7f0000006001).unwrap().name, "fifth");
        assert_eq!(&*map.lookup(0x7f0000005001).unwrap().name, "sixth");
        assert_ne!(map.generation(), generation, "a line took another's place");
        // A line of no size names nothing and removes nothing.
        std::io::Write::write_all(&mut file, b"7f0000005004 0 JS:*empty /a.js:1:1\n").unwrap();
        map.refresh_if_grown();
        assert_eq!(&*map.lookup(0x7f0000005004).unwrap().name, "sixth");
        // Bounded: unknown addresses do not read the file without end.
        for _ in 0..2 * MAX_READS {
            std::io::Write::write_all(&mut file, b"10 1 JS:~x /a.js:1:1\n").unwrap();
            map.lookup(0x20);
        }
        assert_eq!(map.reads, MAX_READS);
    }

    #[test]
    fn a_map_written_whole_again_is_read_again_from_its_start() {
        // HotSpot's fields (`0x…`: read whole at each change) and another writer's.
        for (pid, x) in [(4244, "0x"), (4245, "")] {
            let (dir, path) = procfs(pid, 9);
            let lines = |l: &[(u32, &str)]| {
                l.iter().map(|(a, m)| format!("{x}{a:x} {x}100 void A.{m}()\n")).collect::<String>()
            };
            std::fs::write(&path, lines(&[(0x1000, "old"), (0x2000, "kept")])).unwrap();
            let mut map = PerfMap::open(dir.path(), pid).unwrap();
            assert_eq!(map.whole, x == "0x");
            assert_eq!(&*map.lookup(0x1010).unwrap().name, "A.old()");
            // Written again: the old code freed, new code, longer.
            std::fs::write(&path, lines(&[(0x2000, "kept"), (0x3000, "compiledSince"), (0x4000, "x")]))
                .unwrap();
            assert_eq!(&*map.lookup(0x3010).unwrap().name, "A.compiledSince()", "{x}");
            assert!(map.lookup(0x1010).is_none(), "freed code is forgotten ({x})");
            assert_eq!(&*map.lookup(0x2010).unwrap().name, "A.kept()");
            // Shorter than what was read: written again too.
            std::fs::write(&path, lines(&[(0x5000, "y")])).unwrap();
            assert_eq!(&*map.lookup(0x5010).unwrap().name, "A.y()");
            assert!(map.lookup(0x3010).is_none());
            // Appended: nothing forgotten.
            let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            std::io::Write::write_all(&mut file, lines(&[(0x6000, "z")]).as_bytes()).unwrap();
            assert_eq!(&*map.lookup(0x6010).unwrap().name, "A.z()");
            assert_eq!(&*map.lookup(0x5010).unwrap().name, "A.y()");
            let generation = map.generation();
            assert!(map.lookup(0x7010).is_none(), "unchanged: nothing read");
            assert_eq!(map.generation(), generation);
        }
    }

    #[test]
    fn a_link_in_the_processs_tmp_resolves_in_its_own_root() {
        let (dir, path) = procfs(4243, 8);
        // The tracer's own file, named absolutely: inside the process's root it does not exist.
        let outside = dir.path().join("secret.map");
        std::fs::write(&outside, "7f0000001000 100 JS:~secret /a.js:1:1\n").unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        assert!(PerfMap::open(dir.path(), 4243).is_none(), "not the tracer's file");
        // A link within its root is followed there.
        std::fs::remove_file(&path).unwrap();
        let real = path.with_file_name("real.map");
        std::fs::write(&real, "7f0000001000 100 JS:~mine /a.js:1:1\n").unwrap();
        std::os::unix::fs::symlink("/tmp/real.map", &path).unwrap();
        let mut map = PerfMap::open(dir.path(), 4243).unwrap();
        assert_eq!(&*map.lookup(0x7f0000001010).unwrap().name, "mine");
    }
}
