//! CPython's perf trampolines (`python -X perf`, 3.12+; Python/perf_trampoline.c): before a
//! code object first runs, the interpreter copies a template (Python/asm_trampoline.S, from
//! `_Py_trampoline_func_start` to `_Py_trampoline_func_end`) into memory of its own, names the
//! copy in its perf map (`py::QUALNAME:FILE`, resolve/perfmap.rs), and from then on enters the
//! evaluator for that code through it. A copy has no CFI, and the template of 3.12 and 3.13
//! keeps no frame pointer, so neither framehop's rules nor its frame-pointer fallback get past
//! one: a stack ended at the first Python function the interpreter entered from C.
//!
//! The template is one call between a prologue and an epilogue, so a copy's frame at its return
//! address is fully known from the template's bytes, which the interpreter's own file holds:
//! either of the two templates CPython has shipped is recognised, anything else is not used
//! (its frames unwind as before).
use object::{Object as _, ObjectSymbol as _};

const START: &str = "_Py_trampoline_func_start";
const END: &str = "_Py_trampoline_func_end";

/// `endbr64`, which a CET build puts first (`__CET__`).
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
/// 3.12, 3.13: `sub $8,%rsp; call *%rcx; add $8,%rsp; ret`.
const PADDED: [u8; 11] = [0x48, 0x83, 0xec, 0x08, 0xff, 0xd1, 0x48, 0x83, 0xc4, 0x08, 0xc3];
/// 3.14: `push %rbp; mov %rsp,%rbp; call *%rcx; pop %rbp; ret`.
const FRAMED: [u8; 8] = [0x55, 0x48, 0x89, 0xe5, 0xff, 0xd1, 0x5d, 0xc3];
/// Where the call's return address is in each, after the prologue and the 2-byte call.
const PADDED_RETURN: u64 = 6;
const FRAMED_RETURN: u64 = 6;

/// The template of one interpreter build (x86_64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PerfTrampoline {
    /// Offset in a copy of the return address of its call into the evaluator.
    pub(crate) return_offset: u64,
    /// The prologue pushed the caller's frame pointer (3.14) rather than only keeping the
    /// stack aligned (3.12, 3.13).
    saves_bp: bool,
    /// Bytes in a copy (CPython's perf map gives each copy's line this size).
    pub(crate) size: u64,
}

impl PerfTrampoline {
    /// The template a parsed ELF file (an interpreter executable or libpython) exports, from its
    /// dynamic symbols (every CPython exports its C API: the executable with
    /// `-Xlinker -export-dynamic`); `bytes` is the file, `segments` its PT_LOAD segments (file
    /// offset, SVMA, file size).
    pub(crate) fn find(elf: &object::File<'_>, bytes: &[u8], segments: &[(u64, u64, u64)]) -> Option<Self> {
        let (mut start, mut end) = (None, None);
        for symbol in elf.dynamic_symbols() {
            match symbol.name() {
                Ok(START) if symbol.is_definition() => start = Some(symbol.address()),
                Ok(END) if symbol.is_definition() => end = Some(symbol.address()),
                _ => {}
            }
        }
        let (start, end) = (start?, end?);
        let (offset, svma, size) =
            *segments.iter().find(|(_, svma, size)| (*svma..svma + size).contains(&start))?;
        let from = usize::try_from(offset + (start - svma)).ok()?;
        let len = usize::try_from(end.checked_sub(start)?).ok()?.min(32);
        // The template must lie in the segment's bytes of the file.
        if start + len as u64 > svma + size {
            return None;
        }
        Self::of_template(bytes.get(from..from + len)?)
    }

    /// The template's layout, if it is one CPython shipped (x86_64 only: elsewhere none).
    fn of_template(template: &[u8]) -> Option<Self> {
        if !cfg!(target_arch = "x86_64") {
            return None;
        }
        let (skip, code) = match template.strip_prefix(&ENDBR64) {
            Some(rest) => (ENDBR64.len() as u64, rest),
            None => (0, template),
        };
        let size = template.len() as u64;
        if code == PADDED {
            Some(PerfTrampoline { return_offset: skip + PADDED_RETURN, saves_bp: false, size })
        } else if code == FRAMED {
            Some(PerfTrampoline { return_offset: skip + FRAMED_RETURN, saves_bp: true, size })
        } else {
            None
        }
    }

    /// The caller's frame of a copy's frame at its return address, whose stack pointer is
    /// `sp` and frame pointer `bp`: (return address, stack pointer, frame pointer), reading the
    /// stack with `read`. In both templates the prologue took one word below the return address
    /// (padding, or the caller's frame pointer), which the call left at `sp`.
    pub(crate) fn caller(
        &self,
        sp: u64,
        bp: u64,
        read: &mut dyn FnMut(u64) -> Option<u64>,
    ) -> Option<(u64, u64, u64)> {
        let return_address = read(sp.checked_add(8)?)?;
        let bp = if self.saves_bp { read(sp)? } else { bp };
        Some((return_address, sp + 16, bp))
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) mod tests {
    use super::*;

    /// 3.12's template.
    pub(crate) fn padded() -> Option<PerfTrampoline> {
        PerfTrampoline::of_template(&PADDED)
    }

    #[test]
    fn the_templates_cpython_shipped_are_known_and_nothing_else() {
        let padded = PerfTrampoline::of_template(&PADDED).unwrap();
        assert_eq!(padded, PerfTrampoline { return_offset: 6, saves_bp: false, size: 11 });
        let cet: Vec<u8> = ENDBR64.iter().chain(&FRAMED).copied().collect();
        assert_eq!(
            PerfTrampoline::of_template(&cet),
            Some(PerfTrampoline { return_offset: 10, saves_bp: true, size: 12 })
        );
        let cet_padded: Vec<u8> = ENDBR64.iter().chain(&PADDED).copied().collect();
        assert_eq!(PerfTrampoline::of_template(&cet_padded).unwrap().return_offset, 10);
        // Another prologue (a frame of 16 bytes), or the template cut short: not used.
        let mut other = PADDED;
        other[3] = 0x10;
        assert_eq!(PerfTrampoline::of_template(&other), None);
        assert_eq!(PerfTrampoline::of_template(&PADDED[..10]), None);
        assert_eq!(PerfTrampoline::of_template(&[]), None);
    }

    #[test]
    fn a_copy_s_caller_is_two_words_up() {
        // The stack at a copy's return address: the word the prologue took, then the return
        // address into the interpreter.
        let stack = [(0x7000u64, 0x7100u64), (0x7008, 0x5555_0000_1234)];
        let mut read = |address: u64| stack.iter().find(|(at, _)| *at == address).map(|(_, v)| *v);
        let padded = PerfTrampoline { return_offset: 6, saves_bp: false, size: 11 };
        assert_eq!(padded.caller(0x7000, 0x42, &mut read), Some((0x5555_0000_1234, 0x7010, 0x42)));
        let framed = PerfTrampoline { return_offset: 6, saves_bp: true, size: 8 };
        assert_eq!(framed.caller(0x7000, 0x42, &mut read), Some((0x5555_0000_1234, 0x7010, 0x7100)));
        assert_eq!(padded.caller(0x8000, 0x42, &mut read), None, "outside the window");
    }
}
