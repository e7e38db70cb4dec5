//! Addresses to names with blazesym: function names (demangled), inlined functions, and file
//! and line from DWARF where the module carries it (or a debug link points to it); nothing
//! where the module is stripped, and the caller then names the frame by module and offset.
use std::sync::Arc;

use blazesym::symbolize::{
    CodeInfo, Input, Sym, Symbolized,
    evict::{Elf as EvictElf, Evict},
    source::{Elf, Source},
};

use crate::resolve::modules::elf::LoadedModule;

/// One function an address lies in. An address inside inlined code lies in several: the
/// inlined ones (innermost first, `inlined`), then the function the code was inlined into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Symbol {
    pub(crate) name: Arc<str>,
    pub(crate) file: Option<Arc<str>>,
    pub(crate) line: Option<u32>,
    /// Offset of the address from the function's start; none for an inlined function, which
    /// has no start of its own.
    pub(crate) offset: Option<u64>,
    pub(crate) inlined: bool,
    /// Named from a Go binary's own table (resolve/modules/gopclntab.rs): the frame is Go code.
    pub(crate) go: bool,
}

/// blazesym's symbolizer keeps `Rc`s and `RefCell`s inside, so it is not `Send`. They are all
/// private to it: nothing it returns outlives a call here (results are copied into owned
/// values first), and callers need `&mut`, so moving the whole symbolizer to another thread,
/// which is all `Send` allows, cannot leave an `Rc` or a borrow shared between threads. The
/// engine (and so the exporter's task) owns one and may be moved by the async runtime.
struct Blaze(blazesym::symbolize::Symbolizer);

// SAFETY: see the type's comment: every Rc/RefCell in the symbolizer is reachable only
// through it, and it is only ever used through &mut from one thread at a time.
unsafe impl Send for Blaze {}

pub(crate) struct Symbolizer {
    blaze: Blaze,
}

impl Symbolizer {
    pub(crate) fn new() -> Symbolizer {
        Symbolizer { blaze: Blaze(blazesym::symbolize::Symbolizer::new()) }
    }

    /// The functions at `svma` (an address as the module's file states it), innermost first;
    /// empty when the module has no symbol there (stripped).
    pub(crate) fn module_symbols(&mut self, module: &LoadedModule, svma: u64) -> Vec<Symbol> {
        let mut elf = Elf::new(module.file.reopen_path());
        match self.blaze.0.symbolize_single(&Source::Elf(elf.clone()), Input::VirtOffset(svma)) {
            Ok(Symbolized::Sym(sym)) => symbols(&sym),
            Ok(_) => Vec::new(),
            Err(err) => {
                // blazesym looks for a debug-link file by the path the handle's link names:
                // for a module of a container that is the path inside the container, which on
                // the host may name another file (the host's own libc.so.6 and its debug
                // file), whose checksum then fails the whole lookup. The module's own symbol
                // tables (.symtab, .dynsym) still name the function: look there.
                log::debug!("{}: {err:#}; using its own symbol tables", module.file.path);
                elf.debug_syms = false;
                match self.blaze.0.symbolize_single(&Source::Elf(elf), Input::VirtOffset(svma)) {
                    Ok(Symbolized::Sym(sym)) => symbols(&sym),
                    _ => Vec::new(),
                }
            }
        }
    }

    /// Drop what blazesym parsed of a module the cache let go.
    pub(crate) fn forget(&mut self, module: &LoadedModule) {
        let _ = self.blaze.0.evict(&Evict::Elf(EvictElf::new(module.file.reopen_path())));
    }
}

/// blazesym lists inlined functions outermost first, each with the location inside it
/// (symbolize/mod.rs, `Sym::inlined`; dwarf/resolver.rs moves each call site up one level),
/// and the symbol's own `code_info` is the location in the outermost function.
fn symbols(sym: &Sym<'_>) -> Vec<Symbol> {
    let location = |info: Option<&CodeInfo<'_>>| {
        let file = info.map(|i| Arc::from(i.to_path().to_string_lossy().as_ref()));
        (file, info.and_then(|i| i.line))
    };
    let mut out: Vec<Symbol> = sym
        .inlined
        .iter()
        .rev()
        .map(|inlined| {
            let (file, line) = location(inlined.code_info.as_ref());
            Symbol {
                name: Arc::from(inlined.name.as_ref()),
                file,
                line,
                offset: None,
                inlined: true,
                go: false,
            }
        })
        .collect();
    let (file, line) = location(sym.code_info.as_deref());
    out.push(Symbol {
        name: Arc::from(sym.name.as_ref()),
        file,
        line,
        offset: Some(sym.offset as u64),
        inlined: false,
        go: false,
    });
    out
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::{
        model::event::StackSample,
        resolve::{
            modules::{
                elf::LoadedModule,
                files::{ModuleFile, ProcessModule},
            },
            unwind::{UnwindCache, tests::*},
        },
    };

    /// The line of `sample.c` that carries `marker`.
    fn line_of(marker: &str) -> u32 {
        let source = std::fs::read_to_string(data("sample.c")).unwrap();
        source.lines().position(|l| l.contains(marker)).unwrap() as u32 + 1
    }

    fn unwound_symbols(binary: &str) -> (Vec<Vec<Symbol>>, Vec<u64>) {
        let captured = captured(binary);
        let image = image(&captured, binary);
        let sample = StackSample::new(&captured.regs, &captured.stack, 0);
        let unwound = unwinder(&image).unwind(&sample, &mut UnwindCache::new(), false, &mut |_| None);
        let module: &ProcessModule = &image.modules[0];
        let loaded = LoadedModule::load(module.file.clone()).unwrap();
        let bias = loaded.bias(module.text).unwrap();
        let mut symbolizer = Symbolizer::new();
        let mut symbols = Vec::new();
        let mut svmas = Vec::new();
        for address in unwound.addresses.iter().take(4) {
            // Each address is just after an instruction (the syscall, then the calls): look up
            // the instruction itself.
            let lookup = address - 1;
            svmas.push(lookup - bias);
            symbols.push(symbolizer.module_symbols(&loaded, lookup - bias));
        }
        (symbols, svmas)
    }

    #[test]
    fn names_the_chain_with_file_and_line() {
        let (symbols, _) = unwound_symbols("sample");
        let names: Vec<&str> = symbols.iter().map(|s| &*s.last().unwrap().name).collect();
        assert_eq!(names, ["leak_fn", "handler", "loop", "main"]);
        // The syscall instruction is raw_openat's inline assembly, inlined into leak_fn:
        // innermost first, raw_openat (no offset of its own) then leak_fn at the line that
        // calls it.
        let at_syscall = &symbols[0];
        let names: Vec<(&str, bool)> = at_syscall.iter().map(|s| (&*s.name, s.inlined)).collect();
        assert_eq!(names, [("raw_openat", true), ("leak_fn", false)]);
        assert_eq!(at_syscall[0].offset, None);
        let asm_line = line_of("__asm__ volatile(\"syscall\"");
        assert!((asm_line..asm_line + 4).contains(&at_syscall[0].line.unwrap()), "{at_syscall:?}");
        let leak_fn = &at_syscall[1];
        assert!(leak_fn.file.as_deref().unwrap().ends_with("tests/data/unwind/sample.c"));
        assert_eq!(leak_fn.line, Some(line_of("LEAK_OPEN")));
        assert!(leak_fn.offset.is_some_and(|o| o > 0));
        // handler's frame is the call of leak_fn.
        assert_eq!(symbols[1].last().unwrap().line, Some(line_of("int fd = leak_fn(path);")));
    }

    #[test]
    fn a_stripped_module_has_no_symbols_and_no_crash() {
        let (stripped, stripped_svmas) = unwound_symbols("sample.stripped");
        let (_, svmas) = unwound_symbols("sample");
        assert!(stripped.iter().all(Vec::is_empty), "{stripped:?}");
        assert_eq!(stripped_svmas, svmas, "the same code unwinds the same way without symbols");
    }

    #[test]
    fn forgetting_a_module_and_symbolizing_it_again() {
        let file = Arc::new(ModuleFile::new(
            crate::resolve::modules::maps::FileKey { dev: 0, inode: 0 },
            Arc::from("sample"),
            std::fs::File::open(data("sample")).unwrap(),
        ));
        let loaded = LoadedModule::load(file).unwrap();
        let (_, svmas) = unwound_symbols("sample");
        let mut symbolizer = Symbolizer::new();
        let before = symbolizer.module_symbols(&loaded, svmas[1]);
        symbolizer.forget(&loaded);
        assert_eq!(symbolizer.module_symbols(&loaded, svmas[1]), before);
        assert!(symbolizer.module_symbols(&loaded, 0x10).is_empty(), "no function at the ELF header");
    }
}
