//! Go's own function and line table (`.gopclntab`), which every Go binary carries for its
//! tracebacks and keeps when it is stripped (`go build -ldflags="-s -w"`, as images and
//! distributions ship Go programs): function names, files and lines, and the functions inlined
//! at an address.
//!
//! No maintained crate reads it for a symbolizer (blazesym reads ELF symbols, DWARF, Gsym and
//! Breakpad; the Go-specific crates are reverse-engineering tools without an address lookup),
//! so this follows the layout Go's own readers use: src/runtime/symtab.go (`pcHeader`,
//! `moduledata`, `pcvalue`, `step`, `funcline1`), src/runtime/runtime2.go (`_func`),
//! src/runtime/symtabinl.go and src/debug/gosym/pclntab.go (`InlineTree`). Two layouts are
//! read, the ones of every Go since 1.18:
//! - 1.18 and 1.19 (magic 0xfffffff0; Debian 12's golang-go is 1.19): `_func` without
//!   `startLine` (40 bytes), `inlinedCall` {parent i16, funcID u8, _ u8, file i32, line i32,
//!   func_ i32, parentPc i32};
//! - 1.20 and later (magic 0xfffffff1): `_func` with `startLine` (44 bytes), `inlinedCall`
//!   {funcID u8, _ [3]u8, nameOff i32, parentPc i32, startLine i32}.
//!
//! Within the second, later releases moved what the table is read with: 1.26 no longer writes
//! the text's start into the header (it is taken from the module data) and keeps the module
//! data in a section of its own, and 1.27 added fields to it (`find_module_data`). The unit
//! test reads binaries of every Go release `cargo xtask setup --tests` installs (1.19, 1.24
//! to 1.27).
//!
//! Older layouts (Go 1.2 to 1.17, unsupported upstream for years) are not read: such a binary
//! falls back to its ELF symbols. Every read is bounds-checked; a damaged table names nothing
//! rather than something wrong.
use std::{ops::Range, sync::Arc};

use memmap2::Mmap;
use object::{Object as _, ObjectSection as _};

use helios_trace_common::GoOffsets;

use crate::resolve::{goroutines, symbolize::Symbol};

/// The two table layouts (runtime/symtab.go's pcHeader magic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GoLayout {
    /// Go 1.18 and 1.19.
    Go118,
    /// Go 1.20 and later.
    Go120,
}

/// The newest Go release whose binaries the tests read (`installed_go_toolchains`).
const LAST_CHECKED_RELEASE: (u32, u32) = (1, 27);

const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;
/// runtime/symtab.go: `_PCDATA_InlTreeIndex`, `_FUNCDATA_InlTree`.
const PCDATA_INL_TREE_INDEX: usize = 2;
const FUNCDATA_INL_TREE: usize = 3;
/// Inlined calls followed at one address at most (the compiler's inlining budget keeps real
/// chains short; a cycle in damaged data stops here).
const MAX_INLINE_DEPTH: usize = 64;

/// `name` as Go's tracebacks print it, when that differs: a generic instantiation's type
/// arguments (and an array's length) are `[...]`. Go 1.19's linker wrote names so
/// (cmd/link/internal/ld/pcln.go, `nameParts`); 1.24's and later write them whole and the
/// runtime elides them when it prints (runtime/traceback.go, `funcNamePiecesForPrint`), so one
/// statement has one name whatever Go built it. Go 1.27's rule, which 1.24 to 1.26's is
/// wherever a name has one bracketed group: what lies between the first `[` and the last `]`,
/// except that a generic method of a generic type (1.27) keeps its method's name between two
/// groups (`T[...].G[...]`); a name whose brackets do not pair so is printed whole.
fn printed_name(name: &str) -> Option<String> {
    let open = name.find('[')?;
    let close = name.rfind(']').filter(|close| *close > open)?;
    let (before, interior, after) = (&name[..open], &name[open + 1..close], &name[close + 1..]);
    if !interior.contains('[') {
        return Some(format!("{before}[...]{after}"));
    }
    // The receiver's group closes (depth 0), the method's opens (depth 1 again).
    let (mut depth, mut receiver_end, mut method_start) = (1i32, None, None);
    for (at, byte) in interior.bytes().enumerate() {
        match byte {
            b'[' => {
                depth += 1;
                if depth == 1 {
                    method_start = Some(at);
                    break;
                }
            }
            b']' => {
                depth -= 1;
                if depth < 0 {
                    break;
                }
                if depth == 0 {
                    receiver_end = Some(at);
                }
            }
            _ => {}
        }
    }
    match (depth, receiver_end, method_start) {
        (1, Some(end), Some(start)) if start > end => {
            Some(format!("{before}[...]{}[...]{after}", &interior[end + 1..start]))
        }
        (1, None, None) => Some(format!("{before}[...]{after}")),
        _ => None,
    }
}

/// What the tables need of the module data (`GoTable::find_module_data`).
struct ModuleData {
    text: u64,
    gofunc: Option<u64>,
}

/// The `.gopclntab` of a Go binary, parsed lazily: the header at load, the rest per lookup.
#[derive(Debug)]
pub(crate) struct GoTable {
    map: Arc<Mmap>,
    /// The section's bytes in the file.
    tab: Range<usize>,
    layout: GoLayout,
    quantum: u64,
    nfunc: usize,
    text_start: u64,
    funcnames: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    functab: usize,
    /// `moduledata.gofunc` (the base of funcdata offsets, where inline trees are), when the
    /// module data was found; without it, no inlined frames.
    gofunc: Option<u64>,
    /// PT_LOAD segments: (file offset, SVMA, file size), to read the inline trees (the
    /// module's own, elf.rs).
    segments: Arc<[(u64, u64, u64)]>,
    /// The Go version that built the binary, from its `.go.buildinfo` (resolve/goroutines.rs).
    version: Option<Box<str>>,
    /// Where that release keeps a goroutine's creator, if known (resolve/goroutines.rs).
    goroutine_offsets: Option<GoOffsets>,
}

impl GoTable {
    /// The table of `elf` if it is a Go binary of a layout read here.
    pub(crate) fn parse(
        elf: &object::File<'_>,
        map: &Arc<Mmap>,
        segments: &Arc<[(u64, u64, u64)]>,
    ) -> Option<GoTable> {
        let section = elf.section_by_name(".gopclntab")?;
        let (offset, size) = section.file_range()?;
        let tab = usize::try_from(offset).ok()?..usize::try_from(offset.checked_add(size)?).ok()?;
        let bytes = map.get(tab.clone())?;
        let layout = match u32_at(bytes, 0)? {
            MAGIC_GO118 => GoLayout::Go118,
            MAGIC_GO120 => GoLayout::Go120,
            _ => return None,
        };
        // pcHeader: magic, pad1, pad2, minLC, ptrSize, then nfunc, nfiles, textStart and the
        // table offsets, each pointer-sized.
        let (quantum, ptr) = (*bytes.get(6)?, *bytes.get(7)?);
        if ptr != 8 || bytes.get(4..6)? != [0, 0] || quantum == 0 {
            return None;
        }
        let word = |i: usize| u64_at(bytes, 8 + 8 * i);
        let at = |i: usize| word(i).and_then(|v| usize::try_from(v).ok()).filter(|v| *v < bytes.len());
        let mut table = GoTable {
            map: map.clone(),
            layout,
            quantum: u64::from(quantum),
            nfunc: usize::try_from(word(0)?).ok()?,
            text_start: word(2)?,
            funcnames: at(3)?,
            cutab: at(4)?,
            filetab: at(5)?,
            pctab: at(6)?,
            functab: at(7)?,
            gofunc: None,
            segments: segments.clone(),
            tab,
            version: None,
            goroutine_offsets: None,
        };
        // The function table must hold nfunc + 1 entries of two u32 (the last one the end).
        table.bytes().get(table.functab..table.functab.checked_add((table.nfunc + 1).checked_mul(8)?)?)?;
        table.version = elf
            .section_by_name(".go.buildinfo")
            .and_then(|s| s.data().ok())
            .and_then(goroutines::buildinfo_version)
            .map(Box::from);
        let module_data = table.find_module_data(elf, section.address());
        if table.text_start == 0 {
            // Go 1.26 and later: the functions' base is only in the module data.
            table.text_start = module_data.as_ref()?.text;
        }
        table.gofunc = module_data.and_then(|m| m.gofunc);
        table.goroutine_offsets = goroutines::offsets_of_binary(elf, table.version.as_deref());
        Some(table)
    }

    /// Where the binary's Go release keeps a goroutine's creator, if that is known.
    pub(crate) fn goroutine_offsets(&self) -> Option<GoOffsets> {
        self.goroutine_offsets
    }

    /// The Go version that built the binary ("go1.19.8"), if its build info says it.
    pub(crate) fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    #[cfg(test)]
    pub(crate) fn layout(&self) -> GoLayout {
        self.layout
    }

    fn bytes(&self) -> &[u8] {
        &self.map[self.tab.clone()]
    }

    /// From the first module data (in a section of its own, `.go.module`, since Go 1.26; in
    /// `.noptrdata` before), found by its first field, a pointer to the pcHeader: `text` (the
    /// base of the functions' entry offsets) and `gofunc` (the base of funcdata offsets,
    /// where inline trees are). runtime/symtab.go's `moduledata` up to `gofunc`: pcHeader, six
    /// slices (funcnametab, cutab, filetab, pctab, pclntable, ftab), findfunctab, minpc, maxpc,
    /// text, etext, noptrdata..enoptrbss (8 words), [covctrs, ecovctrs: 1.20+], end, gcdata,
    /// gcbss, types, [typedesclen: 1.27+], etypes, [itaboffset, itabsize: 1.27+], rodata,
    /// gofunc. A release after the last one checked here (`LAST_CHECKED_RELEASE`) may have
    /// moved `gofunc` again: none (no inlined frames) rather than a wrong one. Without a
    /// recorded version, the layout its table's magic says.
    fn find_module_data(&self, elf: &object::File<'_>, pcheader: u64) -> Option<ModuleData> {
        let section = elf.section_by_name(".go.module").or_else(|| elf.section_by_name(".noptrdata"))?;
        let data = section.data().ok()?;
        let release = self.version.as_deref().and_then(goroutines::release);
        // Where `types`, `etypes`, `rodata` and `gofunc` are.
        let fields = match (self.layout, release) {
            (GoLayout::Go118, _) => Some([280, 288, 296, 304]),
            (GoLayout::Go120, Some(release)) if release > LAST_CHECKED_RELEASE => None,
            (GoLayout::Go120, Some(release)) if release >= (1, 27) => Some([296, 312, 336, 344]),
            (GoLayout::Go120, _) => Some([296, 304, 312, 320]),
        };
        const MINPC_AT: usize = 8 + 6 * 24 + 8;
        const TEXT_AT: usize = MINPC_AT + 16;
        // The function table's first entry and its end, as offsets from the text.
        let entry =
            |i: usize| u32_at(self.bytes(), self.functab.checked_add(i.checked_mul(8)?)?).map(u64::from);
        let (first, end) = (entry(0)?, entry(self.nfunc)?);
        (0..data.len().saturating_sub(TEXT_AT + 8)).step_by(8).find_map(|at| {
            let word = |i: usize| u64_at(data, at + i);
            // The pcHeader, and `text` equal to the header's textStart where it has one (Go
            // 1.26 writes 0 there: runtime/symtab.go, "The next field used to be textStart").
            let text = word(TEXT_AT)?;
            if word(0)? != pcheader || (self.text_start != 0 && text != self.text_start) {
                return None;
            }
            // What the runtime checks of its own module data (runtime/symtab.go,
            // `moduledataverify1`): minpc and maxpc are the text addresses of the function
            // table's first entry and of its end. A `text` read at the wrong place would name
            // every function wrongly; this makes that nothing instead.
            if word(MINPC_AT)? != text.checked_add(first)? || word(MINPC_AT + 8)? != text.checked_add(end)? {
                return None;
            }
            self.at_svma(text, 1)?;
            let gofunc = fields.and_then(|[types, etypes, rodata, gofunc]| {
                let (types, etypes, rodata, gofunc) =
                    (word(types)?, word(etypes)?, word(rodata)?, word(gofunc)?);
                (types <= etypes && rodata <= gofunc && self.at_svma(gofunc, 1).is_some()).then_some(gofunc)
            });
            Some(ModuleData { text, gofunc })
        })
    }

    /// `len` bytes at an address as the file states it.
    fn at_svma(&self, svma: u64, len: usize) -> Option<&[u8]> {
        let (offset, start, _) =
            self.segments.iter().find(|(_, start, size)| (*start..start + size).contains(&svma))?;
        let from = usize::try_from(offset + (svma - start)).ok()?;
        self.map.get(from..from.checked_add(len)?)
    }

    /// The functions at `svma`, innermost first: the inlined ones (`inlined`, no offset),
    /// then the function their code was compiled into. Empty outside the table's functions.
    pub(crate) fn symbols(&self, svma: u64) -> Vec<Symbol> {
        self.lookup(svma).unwrap_or_default()
    }

    fn lookup(&self, svma: u64) -> Option<Vec<Symbol>> {
        let func = self.func(svma)?;
        let mut out = Vec::new();
        let (mut file, mut line) = self.position(&func, svma);
        let mut index = self.inline_index(&func, svma);
        while let Some(ix) = index.filter(|_| out.len() < MAX_INLINE_DEPTH) {
            // At an address in inlined code, the innermost inlined call is inlTree[ix], at the
            // tables' file and line there; its caller is the parent entry (1.18, 1.19:
            // `parent`, at the entry's own call-site file and line) or the entry at the
            // caller's instruction entry + parentPc (1.20+, runtime/symtabinl.go), at that
            // instruction's file and line. No parent: the function itself.
            let call = self.inlined_call(&func, ix)?;
            out.push(Symbol {
                name: self.name(call.name_off)?,
                file,
                line,
                offset: None,
                inlined: true,
                go: true,
            });
            match self.layout {
                GoLayout::Go118 => {
                    (file, line) = (self.file(&func, call.file), u32::try_from(call.line).ok());
                    index = call.parent.and_then(|p| u32::try_from(p).ok());
                }
                GoLayout::Go120 => {
                    let pc = func.entry.checked_add(u64::try_from(call.parent_pc).ok()?)?;
                    (file, line) = self.position(&func, pc);
                    index = self.inline_index(&func, pc);
                }
            }
        }
        // Past the end of the function's line table: code the table does not describe (the C
        // objects of a cgo binary lie between Go functions), not this function's.
        self.pcvalue(func.pcln, func.entry, svma)?;
        out.push(Symbol {
            name: self.name(func.name_off)?,
            file,
            line,
            offset: Some(svma - func.entry),
            inlined: false,
            go: true,
        });
        Some(out)
    }

    /// The `_func` whose code holds `svma` (binary search of the function table).
    fn func(&self, svma: u64) -> Option<Func> {
        let rel = u32::try_from(svma.checked_sub(self.text_start)?).ok()?;
        let bytes = self.bytes();
        let entry_off = |i: usize| u32_at(bytes, self.functab + 8 * i);
        // The last entry (index nfunc) is the end of the text.
        if rel >= entry_off(self.nfunc)? {
            return None;
        }
        let (mut lo, mut hi) = (0, self.nfunc);
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if entry_off(mid)? <= rel { lo = mid } else { hi = mid }
        }
        if entry_off(lo)? > rel {
            return None;
        }
        let at =
            self.functab.checked_add(usize::try_from(u32_at(bytes, self.functab + 8 * lo + 4)?).ok()?)?;
        let field = |i: usize| u32_at(bytes, at + 4 * i);
        if field(0)? != entry_off(lo)? {
            return None;
        }
        let header = match self.layout {
            GoLayout::Go118 => 40,
            GoLayout::Go120 => 44,
        };
        Some(Func {
            at,
            entry: self.text_start + u64::from(field(0)?),
            name_off: field(1)?,
            pcfile: field(5)?,
            pcln: field(6)?,
            npcdata: field(7)?,
            cu_offset: field(8)?,
            nfuncdata: u32::from(*bytes.get(at + header - 1)?),
            header,
        })
    }

    /// A function's name as Go's tracebacks print it (`printed_name`).
    fn name(&self, name_off: u32) -> Option<Arc<str>> {
        let name = self.string(self.funcnames.checked_add(usize::try_from(name_off).ok()?)?)?;
        Some(printed_name(&name).map_or(name, Arc::from))
    }

    fn string(&self, at: usize) -> Option<Arc<str>> {
        let bytes = self.bytes().get(at..)?;
        let end = bytes.iter().position(|b| *b == 0)?;
        Some(Arc::from(String::from_utf8_lossy(&bytes[..end]).as_ref()))
    }

    /// File and line at `pc` (runtime/symtab.go, funcline1: the file number is the CU's,
    /// cutab maps it to an offset in filetab).
    fn position(&self, func: &Func, pc: u64) -> (Option<Arc<str>>, Option<u32>) {
        let line = self.pcvalue(func.pcln, func.entry, pc).and_then(|l| u32::try_from(l).ok());
        let file = self.pcvalue(func.pcfile, func.entry, pc).and_then(|fileno| self.file(func, fileno));
        (file, line)
    }

    /// A file by its number in the function's compilation unit.
    fn file(&self, func: &Func, fileno: i64) -> Option<Arc<str>> {
        let index = func.cu_offset.checked_add(u32::try_from(fileno).ok()?)?;
        let offset = u32_at(self.bytes(), self.cutab.checked_add(4 * usize::try_from(index).ok()?)?)?;
        if offset == u32::MAX {
            return None;
        }
        self.string(self.filetab.checked_add(usize::try_from(offset).ok()?)?)
    }

    fn pcdata_table(&self, func: &Func, index: usize) -> Option<u32> {
        if index >= usize::try_from(func.npcdata).ok()? {
            return None;
        }
        u32_at(self.bytes(), func.at + func.header + 4 * index).filter(|off| *off != 0)
    }

    /// Index of the innermost inlined call at `pc`, none outside inlined code.
    fn inline_index(&self, func: &Func, pc: u64) -> Option<u32> {
        let table = self.pcdata_table(func, PCDATA_INL_TREE_INDEX)?;
        u32::try_from(self.pcvalue(table, func.entry, pc)?).ok()
    }

    /// An inline tree entry.
    fn inlined_call(&self, func: &Func, index: u32) -> Option<InlinedCall> {
        if usize::try_from(func.nfuncdata).ok()? <= FUNCDATA_INL_TREE {
            return None;
        }
        let npcdata = usize::try_from(func.npcdata).ok()?;
        let funcdata = func.at + func.header + 4 * npcdata + 4 * FUNCDATA_INL_TREE;
        let offset = u32_at(self.bytes(), funcdata).filter(|o| *o != u32::MAX)?;
        let tree = self.gofunc?.checked_add(u64::from(offset))?;
        let (size, name_at, parent_at) = match self.layout {
            GoLayout::Go118 => (20, 12, 16),
            GoLayout::Go120 => (16, 4, 8),
        };
        let entry = self.at_svma(tree.checked_add(u64::from(index) * size)?, size as usize)?;
        let i32_at = |at: usize| u32_at(entry, at).map(|v| v as i32);
        let (parent, file, line) = match self.layout {
            // parent i16 at 0 (negative: the function itself), file at 4, line at 8.
            GoLayout::Go118 => {
                let parent = i16::from_le_bytes(entry.get(0..2)?.try_into().ok()?);
                (Some(parent).filter(|p| *p >= 0), i64::from(i32_at(4)?), i64::from(i32_at(8)?))
            }
            GoLayout::Go120 => (None, 0, 0),
        };
        Some(InlinedCall {
            name_off: u32_at(entry, name_at)?,
            parent_pc: i32_at(parent_at)?,
            parent,
            file,
            line,
        })
    }

    /// The value of the pc-value table at `off` for `target` (runtime/symtab.go, pcvalue and
    /// step): from value -1 at the entry, pairs of (zig-zag value delta, pc delta in quanta),
    /// each value holding up to its pc; a zero value delta after the first pair ends it.
    fn pcvalue(&self, off: u32, entry: u64, target: u64) -> Option<i64> {
        if off == 0 {
            return None;
        }
        let bytes = self.bytes().get(self.pctab.checked_add(usize::try_from(off).ok()?)?..)?;
        let (mut at, mut pc, mut value) = (0usize, entry, -1i64);
        let mut first = true;
        loop {
            let (delta, n) = uvarint(bytes.get(at..)?)?;
            if delta == 0 && !first {
                return None;
            }
            first = false;
            at += n;
            let delta = i64::from((delta >> 1) as u32 as i32) ^ -i64::from((delta & 1) as u32 as i32);
            value = value.checked_add(delta)?;
            let (pc_delta, n) = uvarint(bytes.get(at..)?)?;
            at += n;
            pc = pc.checked_add(pc_delta.checked_mul(self.quantum)?)?;
            if target < pc {
                return Some(value);
            }
        }
    }
}

/// An entry of a function's inline tree (runtime/symtab.go, `inlinedCall`).
struct InlinedCall {
    name_off: u32,
    parent_pc: i32,
    /// 1.18, 1.19: the caller's entry, none when the caller is the function itself (then
    /// `file` and `line` still are the call site's).
    parent: Option<i16>,
    file: i64,
    line: i64,
}

/// What a lookup needs of one `_func` (runtime/runtime2.go).
struct Func {
    /// Its offset in the section.
    at: usize,
    entry: u64,
    name_off: u32,
    pcfile: u32,
    pcln: u32,
    npcdata: u32,
    cu_offset: u32,
    nfuncdata: u32,
    /// Bytes before the pcdata offsets (40 or 44).
    header: usize,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// A little-endian base-128 varint (at most 32 bits in these tables); (value, bytes read).
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(5) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) mod tests {
    use std::{
        fs::File,
        path::{Path, PathBuf},
        process::Command,
    };

    use object::{ObjectSymbol as _, SymbolKind};

    use super::*;
    use crate::resolve::{
        modules::{elf::LoadedModule, files::ModuleFile, maps::FileKey},
        symbolize::Symbolizer,
    };

    /// Every Go toolchain `cargo xtask setup --tests` installs: Debian's golang-go on PATH (1.19)
    /// and the roots' (tests/shared/go_toolchains.rs), each `go` once.
    pub(crate) fn installed_go_toolchains() -> Vec<PathBuf> {
        let roots = crate::go_toolchains::root_go_toolchains().into_iter().map(|(_, go)| go);
        std::iter::once(PathBuf::from("go")).chain(roots).collect()
    }

    /// In CI, every toolchain of `installed_go_toolchains` must run; elsewhere one that does not
    /// is skipped, said on stderr.
    pub(crate) fn go_runs(go: &Path) -> bool {
        let runs = Command::new(go).arg("version").output().is_ok_and(|out| out.status.success());
        if !runs {
            assert!(std::env::var_os("CI").is_none(), "{go:?} runs in CI (cargo xtask setup --tests)");
            eprintln!("skipped: {go:?} does not run");
        }
        runs
    }

    /// tests/workloads/goleak built by `go`, with its symbols and DWARF and without (`-s -w`, as
    /// Go programs ship).
    fn build(go: &Path, dir: &Path, name: &str, flags: &[&str]) -> LoadedModule {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/goleak/main.go");
        let out = dir.join(name);
        let status = Command::new(go)
            .arg("build")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(&source)
            .env("GO111MODULE", "off")
            // This toolchain, never one it would download.
            .env("GOTOOLCHAIN", "local")
            // Pure Go: cgo's generated Go files carry //line directives whose DWARF call lines
            // are wrong (net.addrinfoErrno.Error calls C.GoString on cgo_unix.go:35, DWARF says
            // 38), which would make DWARF no reference for them.
            .env("CGO_ENABLED", "0")
            .status()
            .expect("go runs (cargo xtask setup --tests installs it)");
        assert!(status.success(), "{go:?} built goleak");
        let file = Arc::new(ModuleFile::new(
            FileKey { dev: 0, inode: 0 },
            Arc::from(name),
            File::open(out).unwrap(),
        ));
        LoadedModule::load(file).unwrap()
    }

    /// The stripped binary's table names every function of the unstripped one's symbol table
    /// at its address, and gives the same files, lines and inlined functions as the unstripped
    /// binary's DWARF (read by blazesym: another writer of the same facts, the compiler's DWARF
    /// generator, and another reader), for every Go release installed: both layouts of the
    /// table (1.18-1.19, 1.20+) read from binaries their own Go wrote.
    #[test]
    fn a_stripped_go_binary_is_named_as_its_symbols_and_dwarf_say() {
        let toolchains = installed_go_toolchains();
        if std::env::var_os("CI").is_some() {
            assert_eq!(toolchains.len(), 5, "cargo xtask setup --tests installs five Go releases");
        }
        for go in toolchains.iter().filter(|go| go_runs(go)) {
            named_as_symbols_and_dwarf_say(go);
        }
    }

    fn named_as_symbols_and_dwarf_say(go: &Path) {
        eprintln!("{go:?}");
        let dir = tempfile::tempdir().unwrap();
        let full = build(go, dir.path(), "goleak", &[]);
        let stripped = build(go, dir.path(), "goleak.stripped", &["-ldflags=-s -w"]);
        let table = stripped.go.as_ref().expect("a Go binary has a .gopclntab");
        let go_version = Command::new(go).arg("version").output().unwrap().stdout;
        let go_version = String::from_utf8_lossy(&go_version);
        let expected = if go_version.contains("go1.18") || go_version.contains("go1.19") {
            GoLayout::Go118
        } else {
            GoLayout::Go120
        };
        assert_eq!(table.layout(), expected, "{go_version}");

        let data = std::fs::read(full.file.reopen_path()).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        // The module data found in the stripped binary gives the `gofunc` the symbol table of a
        // binary built without DWARF only (`-w`) says: the stripped one's layout (since Go 1.26,
        // the data after the text lies 32 bytes further with DWARF than without).
        let symbols_only = build(go, dir.path(), "goleak.symbols", &["-ldflags=-w"]);
        let symbols_only = std::fs::read(symbols_only.file.reopen_path()).unwrap();
        let symbols_only = object::File::parse(&*symbols_only).unwrap();
        let gofunc =
            symbols_only.symbols().find(|s| matches!(s.name(), Ok("go.func.*" | "go:func.*"))).unwrap();
        assert_eq!(table.gofunc, Some(gofunc.address()), "{go_version}");

        let functions: Vec<(String, u64, u64)> = elf
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
            // Go 1.24's linker brackets the FIPS 140 module's code with two 1-byte symbols of
            // its own, functions of no table (cmd/link/internal/ld/fips140.go).
            .filter(|s| !matches!(s.name(), Ok("go:textfipsstart" | "go:textfipsend")))
            .map(|s| (s.name().unwrap().to_string(), s.address(), s.size()))
            .collect();
        assert!(functions.len() > 1000, "{}", functions.len());
        let mut symbolizer = Symbolizer::new();
        let (mut compared, mut inlined, mut go_functions) = (0, 0, 0);
        let mut pcs = Vec::new();
        for (name, address, size) in &functions {
            // C objects (.c files) are not Go code: not in the table. Go's are .go and .s files.
            // The build is pure Go (no cgo), but some functions have no file in DWARF: the
            // compiler's wrappers of Go 1.24 and later (`internal/abi.(*Kind).String`, a
            // pointer method calling the value method). Those are Go code, compared with the
            // symbol table and `go tool addr2line` below.
            let dwarf = symbolizer.module_symbols(&full, *address);
            let file = dwarf.last().and_then(|s| s.file.clone()).unwrap_or_else(|| Arc::from(""));
            if !file.is_empty() && ![".go", ".s", "<autogenerated>"].iter().any(|e| file.ends_with(e)) {
                assert!(table.symbols(*address).is_empty(), "{name} ({file}) is not Go");
                continue;
            }
            go_functions += 1;
            let at_entry = table.symbols(*address);
            // The linker names assembly functions' ELF symbols with their ABI (`.abi0`); the
            // table names them as Go's tracebacks do.
            // Names are printed as Go prints them (`printed_name`, checked against Go's own
            // expectations above); the symbol table's are whole.
            let name = name.strip_suffix(".abi0").unwrap_or(name);
            // Function-local types are numbered with a middle dot in the table (`dialResult·1`)
            // and a dot in ELF symbols and DWARF.
            let ours = at_entry.last().map(|s| s.name.replace('·', "."));
            assert_eq!(ours, Some(printed(name)), "at {address:#x}");
            assert_eq!(at_entry.last().unwrap().offset, Some(0));
            // Every 16th byte of the function: the inlined functions against DWARF, the
            // innermost file and line against Go's own reader below.
            for pc in (*address..address + size).step_by(16) {
                let ours = table.symbols(pc);
                assert!(!ours.is_empty(), "{pc:#x} in {name}");
                pcs.push((pc, ours[0].file.clone(), ours[0].line, ours.last().unwrap().name.clone()));
                let dwarf = symbolizer.module_symbols(&full, pc);
                // The compiler's wrappers (`<autogenerated>`, e.g. a pointer method calling the
                // value method) have DWARF inlining entries for some inlined calls and not for
                // others: DWARF is no reference there.
                if dwarf.is_empty() || ours.last().and_then(|s| s.file.as_deref()) == Some("<autogenerated>")
                {
                    continue;
                }
                let ours: Vec<_> = ours.iter().map(|s| s.name.replace('·', ".")).collect();
                let theirs: Vec<_> = dwarf.iter().map(|s| printed(&s.name)).collect();
                assert_eq!(ours, theirs, "at {pc:#x} in {name}");
                compared += 1;
                inlined += usize::from(dwarf.len() > 1);
            }
        }
        // `go tool addr2line` (debug/gosym, Go's own reader of the same table) on the unstripped
        // binary: the function and the innermost file:line of each address.
        let mut addr2line = Command::new(go)
            .args(["tool", "addr2line"])
            .arg(dir.path().join("goleak"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let input: String = pcs.iter().map(|(pc, ..)| format!("{pc:#x}\n")).collect();
        let mut stdin = addr2line.stdin.take().unwrap();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, input.as_bytes()));
        let output = addr2line.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        let output = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 2 * pcs.len());
        for ((pc, file, line, function), answer) in pcs.iter().zip(lines.chunks(2)) {
            let position = format!("{}:{}", file.as_deref().unwrap_or("?"), line.unwrap_or(0));
            // debug/gosym gives the table's names as they are: whole in 1.24 and later.
            assert_eq!(
                (&**function, position.as_str()),
                (printed(answer[0]).as_str(), answer[1]),
                "at {pc:#x}"
            );
        }
        assert!(go_functions > 1000, "{go_functions} Go functions");
        assert!(compared > 10_000 && inlined > 500, "{compared} addresses, {inlined} in inlined code");
        // Outside the text: nothing.
        assert!(table.symbols(0x10).is_empty());
        assert!(table.symbols(u64::MAX).is_empty());
    }

    /// A name of the symbol table, DWARF or `go tool addr2line` (whole) as Go prints it.
    fn printed(name: &str) -> String {
        printed_name(name).unwrap_or_else(|| name.to_string())
    }

    /// Go's own expectations (runtime/traceback_test.go of 1.27, `TestTracebackGeneric`), and
    /// names of the tables read here.
    #[test]
    fn names_are_printed_as_go_prints_them() {
        let cases = [
            (
                "main.testTracebackGenericTyp[go.shape.int].G[go.shape.int]",
                "main.testTracebackGenericTyp[...].G[...]",
            ),
            ("main.(*T[go.shape.int]).M", "main.(*T[...]).M"),
            ("main.F[go.shape.int].func1", "main.F[...].func1"),
            ("type:.eq.[7]internal/cpu.option", "type:.eq.[...]internal/cpu.option"),
            ("main.F[[2]int]", "main.F[...]"),
            ("main.T[[2]int].G[map[string]int]", "main.T[...].G[...]"),
            // Three groups (a range-over-func body inlined from generic functions): Go prints
            // the first two with what lies between them, and what follows the last.
            (
                "slices.Sorted[go.shape.string].Collect[go.shape.string].AppendSeq[go.shape.[]string]-range1",
                "slices.Sorted[...].Collect[...]-range1",
            ),
        ];
        for (whole, printed) in cases {
            assert_eq!(printed_name(whole).as_deref(), Some(printed), "{whole}");
        }
        for unchanged in ["main.main", "a]b[c", "a[b]]c[d]", "a[b[c]"] {
            assert_eq!(printed_name(unchanged), None, "{unchanged}");
        }
    }

    #[test]
    fn pc_value_tables_and_varints() {
        assert_eq!(uvarint(&[0x05]), Some((5, 1)));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80, 0x80, 0x80, 0x80, 0x80]), None, "longer than 32 bits");
        assert_eq!(uvarint(&[0x80]), None, "cut");
    }
}
