//! Which goroutine created the one that opened a descriptor, in Go programs: Go's net/http
//! dials in a goroutine of its own and a server accepts in one, so the opening stack is Go's
//! own and the telling code is where that goroutine was created (Go's own tracebacks end with
//! "created by F"). The kernel reads the creator's pc (`runtime.g.gopc`) at the call
//! (helios-trace-ebpf/src/goroutines.rs) from where this module says the process's Go version
//! keeps it; this module names it, and keeps one creator per site, exactly or not at all.
//!
//! The offset of `gopc` in `runtime.g` changes between Go versions. A binary built with its
//! DWARF (Go's default) says it itself: `runtime.g`'s members, read with gimli. A stripped one
//! (`-ldflags=-w`) has none, so its offset comes from a table of the releases whose layout was
//! checked here: against the DWARF of a binary that Go built (the unit test
//! `the_table_matches_the_dwarf_of_every_installed_go` does it for each Go `cargo xtask setup
//! --tests` installs: the host's and the roots'), and by the kernel tests that compare the
//! report with Go's own traceback. A stripped binary of a release not in the table gets no
//! creator: no guess.
use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    io::Read as _,
};

use helios_trace_common::GoOffsets;
use object::{CompressionFormat, Object as _, ObjectSection as _};

use crate::model::{fd::SiteId, frame::Frame};

/// `runtime.g.gopc` by Go release (major, minor), checked as the module doc says.
const GOPC_OFFSETS: &[((u32, u32), u32)] = &[
    // Debian 12's golang-go (src/runtime/runtime2.go of go1.19: after `sigpc` at 288).
    ((1, 19), 296),
    // Debian 13's golang-1.24-go, its backports' golang-1.25-go and sid's golang-1.26-go and
    // golang-1.27-go (the roots xtask/src/roots.rs builds): src/runtime/runtime2.go of those
    // releases has `parentGoid` between `sigpc` and `gopc`, and fields before them come and
    // go; their DWARF says 288, 280 (1.25), 288, 288.
    ((1, 24), 288),
    ((1, 25), 280),
    ((1, 26), 288),
    ((1, 27), 288),
];

/// Where a Go release keeps a goroutine's creator, if its layout is known here.
pub(crate) fn offsets(version: &str) -> Option<GoOffsets> {
    let release = release(version)?;
    let (_, gopc) = GOPC_OFFSETS.iter().find(|(r, _)| *r == release)?;
    Some(GoOffsets { gopc: *gopc, reserved: 0, exec_ns: 0 })
}

/// Where a Go binary keeps a goroutine's creator: from the table for its release (no DWARF to
/// inflate), else from its own DWARF.
pub(crate) fn offsets_of_binary(elf: &object::File<'_>, version: Option<&str>) -> Option<GoOffsets> {
    version.and_then(offsets).or_else(|| offsets_from_dwarf(elf))
}

/// Largest DWARF section decompressed (a big Go program's `.debug_info` is tens of MiB); done
/// once per Go binary whose release the table does not know, on the reader's thread.
const MAX_DWARF_SECTION: u64 = 128 << 20;

/// `runtime.g`'s layout from a Go binary's own DWARF: exact for any release. None without
/// DWARF, or when its `runtime.g` has no `gopc` or does not open with `stack` (which the
/// kernel's check relies on).
pub(crate) fn offsets_from_dwarf(elf: &object::File<'_>) -> Option<GoOffsets> {
    let members = struct_members(elf, "runtime.g")?;
    if members.get("stack") != Some(&0) {
        return None;
    }
    Some(GoOffsets { gopc: u32::try_from(*members.get("gopc")?).ok()?, reserved: 0, exec_ns: 0 })
}

/// A DWARF section's bytes, inflated when the linker compressed it (Go compresses its DWARF
/// with zlib by default: SHF_COMPRESSED, or `.zdebug_*` sections before; object finds both).
fn dwarf_section<'a>(elf: &object::File<'a>, name: &str) -> Option<Cow<'a, [u8]>> {
    let compressed = elf.section_by_name(name)?.compressed_data().ok()?;
    match compressed.format {
        CompressionFormat::None => Some(Cow::Borrowed(compressed.data)),
        CompressionFormat::Zlib if compressed.uncompressed_size <= MAX_DWARF_SECTION => {
            let mut out = Vec::with_capacity(usize::try_from(compressed.uncompressed_size).ok()?);
            let mut inflate = flate2::read::ZlibDecoder::new(compressed.data).take(MAX_DWARF_SECTION);
            inflate.read_to_end(&mut out).ok()?;
            (out.len() as u64 == compressed.uncompressed_size).then_some(Cow::Owned(out))
        }
        _ => None,
    }
}

/// Member name → offset of the struct type `name` in the binary's DWARF (the top-level types
/// of each unit, where Go puts them).
fn struct_members(elf: &object::File<'_>, name: &str) -> Option<HashMap<String, u64>> {
    let endian = gimli::LittleEndian;
    let (info, abbrev) = (dwarf_section(elf, ".debug_info")?, dwarf_section(elf, ".debug_abbrev")?);
    let strings = dwarf_section(elf, ".debug_str").unwrap_or_default();
    let debug_info = gimli::DebugInfo::new(&info, endian);
    let debug_abbrev = gimli::DebugAbbrev::new(&abbrev, endian);
    let debug_str = gimli::DebugStr::new(&strings, endian);
    let mut units = debug_info.units();
    while let Some(header) = units.next().ok()? {
        let abbreviations = header.abbreviations(&debug_abbrev).ok()?;
        let mut tree = header.entries_tree(&abbreviations, None).ok()?;
        let root = tree.root().ok()?;
        let mut children = root.children();
        while let Some(child) = children.next().ok()? {
            let entry = child.entry();
            if entry.tag() != gimli::DW_TAG_structure_type
                || entry_name(entry, &debug_str).map(|n| n.slice()) != Some(name.as_bytes())
            {
                continue;
            }
            let mut members = HashMap::new();
            let mut fields = child.children();
            while let Some(field) = fields.next().ok()? {
                let entry = field.entry();
                let offset =
                    entry.attr_value(gimli::DW_AT_data_member_location).and_then(|o| o.udata_value());
                if let (Some(member), Some(offset)) = (entry_name(entry, &debug_str), offset) {
                    members.insert(String::from_utf8_lossy(member.slice()).into_owned(), offset);
                }
            }
            return Some(members);
        }
    }
    None
}

type Dwarf<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

/// A DWARF entry's name, inline (Go writes them so) or in `.debug_str`.
fn entry_name<'a>(
    entry: &gimli::DebuggingInformationEntry<Dwarf<'a>>,
    strings: &gimli::DebugStr<Dwarf<'a>>,
) -> Option<Dwarf<'a>> {
    match entry.attr_value(gimli::DW_AT_name)? {
        gimli::AttributeValue::String(text) => Some(text),
        gimli::AttributeValue::DebugStrRef(offset) => strings.get_str(offset).ok(),
        _ => None,
    }
}

/// (major, minor) of a Go version string as the toolchain writes it ("go1.19.8", "go1.22rc1");
/// None for a development build ("devel ..."), whose layout may be anything.
pub(crate) fn release(version: &str) -> Option<(u32, u32)> {
    let rest = version.strip_prefix("go")?;
    let mut parts = rest.splitn(2, '.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
    Some((major, minor.parse().ok()?))
}

/// The Go version a binary's `.go.buildinfo` section records (src/debug/buildinfo/buildinfo.go,
/// which stripped binaries keep: `go version FILE` reads it). Since Go 1.18 the section opens
/// with the magic "\xff Go buildinf:", the pointer size, a flags byte whose bit 1 says the
/// strings follow inline, and at offset 32 the version as a uvarint length and its bytes.
/// Older binaries (pointers to strings instead) are not read.
pub(crate) fn buildinfo_version(section: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    const FLAGS_INLINE_STRINGS: u8 = 0x2;
    if !section.starts_with(MAGIC) || section.get(15)? & FLAGS_INLINE_STRINGS == 0 {
        return None;
    }
    let data = section.get(32..)?;
    let (len, used) = uvarint(data)?;
    let bytes = data.get(used..used.checked_add(usize::try_from(len).ok()?)?)?;
    String::from_utf8(bytes.to_vec()).ok()
}

/// encoding/binary's unsigned varint: the value and the bytes it took.
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// What a creator pc says, as Go's traceback would say it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Created {
    /// "created by" this frame.
    By(Frame),
    /// A creator in the runtime itself, which Go's traceback does not show (the main goroutine,
    /// the runtime's own workers: `showfuncinfo` hides unexported runtime functions).
    Hidden(Frame),
}

/// What a creator pc named as `frames` (innermost first, inlined calls before the function
/// they are inlined into) says, as Go's traceback prints it (src/runtime/traceback.go,
/// `printcreatedby1`): the function the pc is in, at the file and line of the `go` statement
/// (the innermost position). None for a pc that names nothing: nothing is known then.
pub(crate) fn created(frames: &[Frame]) -> Option<Created> {
    let (innermost, function) = (frames.first()?, frames.last()?);
    let name = function.symbol.as_deref()?;
    let frame = Frame { file: innermost.file.clone(), line: innermost.line, ..function.clone() };
    let runtime_internal =
        name.strip_prefix("runtime.").is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_uppercase()));
    Some(if runtime_internal { Created::Hidden(frame) } else { Created::By(frame) })
}

/// What a Go program's executable says: its Go version (if its build info records one), and
/// where that release keeps a goroutine's creator (if that is known).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GoImage<'a> {
    pub(crate) version: Option<&'a str>,
    pub(crate) offsets: Option<GoOffsets>,
}

/// Which processes the kernel reads goroutine creators of (`GO_PROCS`), and what it must
/// learn next.
#[derive(Debug, Default)]
pub(crate) struct GoProcesses {
    told: HashSet<u32>,
    updates: Vec<(u32, Option<GoOffsets>)>,
    /// Go versions met whose layout is not known here (said once each).
    unknown: HashSet<String>,
}

impl GoProcesses {
    /// `tgid`'s image was read (at its first sight or its exec); `go` is what its executable
    /// says if it is a Go program. `exec_ns`: the time of the exec record of the image that was
    /// read (0 for an image exec'd before tracing began), which the kernel checks the offsets
    /// against.
    pub(crate) fn seen(&mut self, tgid: u32, exec_ns: u64, go: Option<GoImage<'_>>) {
        if let Some(offsets) = go.and_then(|g| g.offsets) {
            self.told.insert(tgid);
            self.updates.push((tgid, Some(GoOffsets { exec_ns, ..offsets })));
            return;
        }
        if let Some(go) = go {
            let version = go.version.unwrap_or("a Go release it does not record");
            if self.unknown.insert(version.to_string()) {
                log::info!(
                    "{version} program (pid {tgid}) without DWARF that says its layout: the \
                     creators of its goroutines are not read, that Go release is not known here"
                );
            }
        }
        // The kernel drops an entry at the exec; an earlier look may have told one for the
        // image the process has now left.
        if self.told.remove(&tgid) {
            self.updates.push((tgid, None));
        }
    }

    /// The process is gone. The kernel dropped its entry at the exit, but an entry told since
    /// its exec or first sight may not have reached the map yet, and would stay: take it back
    /// (the updates keep their order, so a reused pid's later entry still wins).
    pub(crate) fn exited(&mut self, tgid: u32) {
        if self.told.remove(&tgid) {
            self.updates.push((tgid, None));
        }
    }

    /// What the kernel's `GO_PROCS` map must learn since the last call.
    pub(crate) fn take_updates(&mut self) -> Vec<(u32, Option<GoOffsets>)> {
        std::mem::take(&mut self.updates)
    }
}

/// What a site's goroutines were created by.
#[derive(Clone, Debug, PartialEq)]
enum Creator {
    One(Frame),
    /// Created by the runtime only: Go shows no creator, nor does the site.
    Hidden(Frame),
    /// Descriptors of one site opened by goroutines created at different places (or some by
    /// the runtime, some not): no one creator is the site's.
    Several,
}

/// One creator per site, where every creator read for it is the same. Records whose creator
/// was not read (the process not yet recognised, a call from cgo's C) do not count.
#[derive(Debug, Default)]
pub(crate) struct SiteCreators {
    sites: HashMap<SiteId, Creator>,
}

impl SiteCreators {
    /// Whether `site` already knows the creator at `address` (the common case: nothing to
    /// name).
    pub(crate) fn has(&self, site: SiteId, address: u64) -> bool {
        match self.sites.get(&site) {
            Some(Creator::One(f) | Creator::Hidden(f)) => f.address == Some(address),
            Some(Creator::Several) => true,
            None => false,
        }
    }

    /// A descriptor of `site` was opened by a goroutine `created` so.
    pub(crate) fn note(&mut self, site: SiteId, created: Created) {
        let next = match (self.sites.get(&site), created) {
            (None, Created::By(frame)) => Creator::One(frame),
            (None, Created::Hidden(frame)) => Creator::Hidden(frame),
            (Some(Creator::One(known)), Created::By(frame)) if same_place(known, &frame) => return,
            (Some(Creator::Hidden(_)), Created::Hidden(_)) => return,
            (Some(_), _) => Creator::Several,
        };
        self.sites.insert(site, next);
    }

    pub(crate) fn get(&self, site: SiteId) -> Option<&Frame> {
        match self.sites.get(&site)? {
            Creator::One(frame) => Some(frame),
            Creator::Hidden(_) | Creator::Several => None,
        }
    }

    pub(crate) fn forget(&mut self, site: SiteId) {
        self.sites.remove(&site);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.sites.len()
    }
}

/// The same `go` statement: function, file and line (addresses differ between processes).
fn same_place(a: &Frame, b: &Frame) -> bool {
    a.symbol == b.symbol && a.file == b.file && a.line == b.line && a.module == b.module
}

#[cfg(test)]
mod tests {
    use std::{process::Command, sync::Arc};

    use super::*;
    use crate::{
        model::frame::Language,
        resolve::modules::gopclntab::tests::{go_runs, installed_go_toolchains},
    };

    fn go_frame(symbol: &str, line: u32, inlined: bool) -> Frame {
        Frame {
            symbol: Some(Arc::from(symbol)),
            file: Some(Arc::from("/src/main.go")),
            line: Some(line),
            inlined,
            language: Language::Go,
            ..Frame::native(0x4a0000, Some(Arc::from("/app/server")), Some(0xa0000))
        }
    }

    #[test]
    fn versions_read_as_releases() {
        assert_eq!(release("go1.19.8"), Some((1, 19)));
        assert_eq!(release("go1.22rc1"), Some((1, 22)));
        assert_eq!(release("go1.21"), Some((1, 21)));
        assert_eq!(release("devel go1.23-abc"), None);
        assert_eq!(offsets("go1.19.13"), Some(GoOffsets { gopc: 296, reserved: 0, exec_ns: 0 }));
        assert_eq!(offsets("go1.18.2"), None, "a release whose layout was not checked here");
    }

    #[test]
    fn buildinfo_gives_the_version() {
        let mut section = b"\xff Go buildinf:".to_vec();
        section.extend([8, 2]);
        section.resize(32, 0);
        section.push(8);
        section.extend(b"go1.19.8");
        section.extend([0x20, 0]);
        assert_eq!(buildinfo_version(&section).as_deref(), Some("go1.19.8"));
        let mut old = section.clone();
        old[15] = 0;
        assert_eq!(buildinfo_version(&old), None, "pre-1.18 layout: pointers, not read");
        assert_eq!(buildinfo_version(&section[..36]), None, "cut short");
        assert_eq!(buildinfo_version(b"\x7fELF"), None);
        assert_eq!(uvarint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(uvarint(&[0x80; 11]), None);
    }

    #[test]
    fn created_by_is_the_function_at_the_go_statement() {
        // `go worker()` in an inlined helper: the helper's line, the physical function's name.
        let frames = [go_frame("main.startWorkers", 41, true), go_frame("main.main", 12, false)];
        let Some(Created::By(creator)) = created(&frames) else { panic!("{:?}", created(&frames)) };
        assert_eq!(creator.symbol.as_deref(), Some("main.main"));
        assert_eq!(creator.line, Some(41));
        assert!(!creator.inlined);
        let hidden = |name| matches!(created(&[go_frame(name, 1, false)]), Some(Created::Hidden(_)));
        assert!(hidden("runtime.rt0_go"), "the main goroutine");
        assert!(hidden("runtime.gcBgMarkStartWorkers"));
        let exported = created(&[go_frame("runtime.Goexit", 1, false)]);
        assert!(
            matches!(exported, Some(Created::By(_))),
            "exported runtime functions are shown, as Go shows them"
        );
        let unnamed = Frame::native(0x4a0000, None, None);
        assert_eq!(created(&[unnamed]), None);
        assert_eq!(created(&[]), None);
    }

    #[test]
    fn the_kernel_learns_of_go_programs_of_known_layouts() {
        let known = GoOffsets { gopc: 296, reserved: 0, exec_ns: 0 };
        let at = |exec_ns| Some(GoOffsets { exec_ns, ..known });
        let mut go = GoProcesses::default();
        go.seen(10, 0, Some(GoImage { version: Some("go1.19.8"), offsets: Some(known) }));
        go.seen(11, 5, Some(GoImage { version: Some("go1.99.1"), offsets: None }));
        go.seen(12, 0, None);
        go.seen(14, 0, Some(GoImage::default()));
        assert_eq!(go.take_updates(), [(10, at(0))]);
        assert_eq!(go.unknown.len(), 2, "each unknown release said once");
        // 10 exec'd something else: what was told for its Go image goes.
        go.seen(10, 77, None);
        assert_eq!(go.take_updates(), [(10, None)]);
        go.seen(10, 78, None);
        // 13 exec'd a Go program, told with that exec's time, and exited before the update
        // reached the kernel: taken back after it.
        go.seen(13, 90, Some(GoImage { version: Some("go1.19.1"), offsets: Some(known) }));
        go.exited(13);
        go.exited(13);
        assert_eq!(go.take_updates(), [(13, at(90)), (13, None)]);
    }

    #[test]
    fn a_site_has_one_creator_or_none() {
        let site = SiteId::Stack(1);
        let mut creators = SiteCreators::default();
        assert_eq!(creators.get(site), None);
        let spawn = go_frame("main.spawn", 20, false);
        creators.note(site, Created::By(spawn.clone()));
        assert_eq!(creators.get(site), Some(&spawn));
        assert!(creators.has(site, 0x4a0000));
        assert!(!creators.has(site, 0x4b0000));
        // The same statement at another address (another process of the binary): the same.
        let elsewhere = Frame { address: Some(0x5a0000), ..spawn.clone() };
        creators.note(site, Created::By(elsewhere));
        assert_eq!(creators.get(site), Some(&spawn));
        creators.note(site, Created::By(go_frame("main.other", 30, false)));
        assert_eq!(creators.get(site), None, "two creators: not one of them");
        creators.note(site, Created::By(spawn.clone()));
        assert_eq!(creators.get(site), None, "and it stays so");
        assert!(creators.has(site, 0x4a0000), "nothing to name for it any more");
        creators.forget(site);
        assert_eq!(creators.len(), 0);

        // The runtime's creators are shown as Go shows them: not at all; and a site opened both
        // by the main goroutine and by one a program's `go` statement made has no one creator.
        let main = go_frame("runtime.rt0_go", 1, false);
        creators.note(site, Created::Hidden(main.clone()));
        assert_eq!(creators.get(site), None);
        assert!(creators.has(site, 0x4a0000));
        creators.note(site, Created::Hidden(main.clone()));
        creators.note(site, Created::By(spawn.clone()));
        assert_eq!(creators.get(site), None);
        let other = SiteId::Stack(2);
        creators.note(other, Created::By(spawn));
        creators.note(other, Created::Hidden(main));
        assert_eq!(creators.get(other), None, "whichever came first");
    }

    /// The table against the DWARF of a binary each installed Go built (`cargo xtask setup
    /// --tests`: the host's 1.19 and the roots' 1.24 to 1.27), compressed as Go writes
    /// it by default and not.
    #[test]
    fn the_table_matches_the_dwarf_of_every_installed_go() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.go"), "package main\n\nfunc main() {}\n").unwrap();
        let mut releases = Vec::new();
        for go in installed_go_toolchains().iter().filter(|go| go_runs(go)) {
            let build = |name: &str, flags: &str| {
                let binary = dir.path().join(name);
                let built = Command::new(go)
                    .args(["build", flags, "-o"])
                    .arg(&binary)
                    .arg(dir.path().join("main.go"))
                    .env("GO111MODULE", "off")
                    .env("GOTOOLCHAIN", "local")
                    .env("GOCACHE", dir.path().join("cache"))
                    .output()
                    .unwrap();
                assert!(built.status.success(), "{go:?}: {}", String::from_utf8_lossy(&built.stderr));
                std::fs::read(&binary).unwrap()
            };
            let mut version = String::new();
            for (name, flags) in [("compressed", "-ldflags="), ("plain", "-ldflags=-compressdwarf=false")] {
                let bytes = build(name, flags);
                let elf = object::File::parse(&*bytes).unwrap();
                let format = elf.section_by_name(".debug_info").unwrap().compressed_data().unwrap().format;
                let expected =
                    if name == "compressed" { CompressionFormat::Zlib } else { CompressionFormat::None };
                assert_eq!(format, expected, "{go:?} {name}");
                version = buildinfo_version(elf.section_by_name(".go.buildinfo").unwrap().data().unwrap())
                    .expect("the binary records its Go version");
                let from_table = offsets(&version).unwrap_or_else(|| panic!("{version} is in the table"));
                assert_eq!(offsets_from_dwarf(&elf), Some(from_table), "{version}, {name}");
                assert_eq!(offsets_of_binary(&elf, None), Some(from_table), "no version: the DWARF says it");
            }
            // Stripped of its DWARF, only the table knows; a release it does not know gets nothing.
            let stripped = build("stripped", "-ldflags=-s -w");
            let elf = object::File::parse(&*stripped).unwrap();
            assert_eq!(offsets_from_dwarf(&elf), None);
            assert_eq!(offsets_of_binary(&elf, Some("go1.99.0")), None);
            assert!(offsets_of_binary(&elf, Some(&version)).is_some());
            releases.push(release(&version).unwrap());
        }
        eprintln!("checked against the DWARF of Go {releases:?}");
        if std::env::var_os("CI").is_some() {
            assert_eq!(
                releases,
                [(1, 19), (1, 24), (1, 25), (1, 26), (1, 27)],
                "the releases setup installs"
            );
        }
    }
}
