//! DWARF unwinding of captured user stacks (`--stacks dwarf`) with framehop: the kernel
//! program copied the user registers and a window of the stack at the syscall
//! (helios_trace_common::UserStack); the modules' `.eh_frame` CFI (or `.debug_frame`) says
//! where each frame keeps its return address, so the chain is recovered without frame
//! pointers, which glibc's wrappers and `-O2` code do not keep.
use std::{ops::Range, sync::Arc};

use framehop::{
    CacheNative, Error as FramehopError, ExplicitModuleSectionInfo, FrameAddress, MayAllocateDuringUnwind,
    Module, Unwinder as _, UnwinderNative,
};

use crate::{
    model::event::StackSample,
    resolve::chains::FrameRegs,
    resolve::modules::{
        elf::{LoadedModule, SectionBytes},
        files::ProcessModule,
        trampoline::PerfTrampoline,
    },
};

/// Frames beyond this many are not followed (recursion, or a corrupt stack).
pub(crate) const MAX_FRAMES: usize = 128;

#[cfg(target_arch = "x86_64")]
mod arch {
    use crate::{model::event::StartRegs, resolve::chains::FrameRegs};
    use framehop::x86_64::UnwindRegsX86_64;

    pub(crate) fn unwind_regs(r: &StartRegs) -> UnwindRegsX86_64 {
        UnwindRegsX86_64::new(r.pc, r.sp, r.fp)
    }

    pub(crate) fn frame_regs(pc: u64, regs: &UnwindRegsX86_64) -> FrameRegs {
        FrameRegs { pc, sp: regs.sp(), bp: regs.bp() }
    }

    pub(crate) type Regs = UnwindRegsX86_64;

    pub(crate) fn sp_bp(regs: &UnwindRegsX86_64) -> (u64, u64) {
        (regs.sp(), regs.bp())
    }

    pub(crate) fn set_caller(regs: &mut UnwindRegsX86_64, ip: u64, sp: u64, bp: u64) {
        regs.set_ip(ip);
        regs.set_sp(sp);
        regs.set_bp(bp);
    }
}

#[cfg(target_arch = "aarch64")]
mod arch {
    use crate::{model::event::StartRegs, resolve::chains::FrameRegs};
    use framehop::aarch64::UnwindRegsAarch64;

    pub(crate) fn unwind_regs(r: &StartRegs) -> UnwindRegsAarch64 {
        UnwindRegsAarch64::new(r.lr, r.sp, r.fp)
    }

    /// Rules are learned for x86_64 only (resolve/chains.rs).
    pub(crate) fn frame_regs(pc: u64, regs: &UnwindRegsAarch64) -> FrameRegs {
        FrameRegs { pc, sp: regs.sp(), bp: regs.fp() }
    }

    pub(crate) type Regs = UnwindRegsAarch64;

    /// CPython's perf trampolines are known on x86_64 only (resolve/modules/trampoline.rs).
    pub(crate) fn sp_bp(regs: &UnwindRegsAarch64) -> (u64, u64) {
        (regs.sp(), regs.fp())
    }

    /// framehop reads the link register of the innermost frame only.
    pub(crate) fn set_caller(regs: &mut UnwindRegsAarch64, _ip: u64, sp: u64, fp: u64) {
        regs.set_sp(sp);
        regs.set_fp(fp);
    }
}

/// A recovered call chain: the instruction pointer, then return addresses, innermost first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Unwound {
    pub(crate) addresses: Vec<u64>,
    /// The chain goes on past the copied window (`--stack-window` too small for this stack).
    pub(crate) truncated: bool,
    /// The registers at each frame, when asked for.
    pub(crate) frames: Vec<FrameRegs>,
    /// The chain ended at its outermost frame (not at an error or the window's end).
    pub(crate) ended: bool,
}

/// framehop's rule cache, shared by every process (its keys carry a module generation).
pub(crate) type UnwindCache = CacheNative<MayAllocateDuringUnwind>;

/// The unwinder of one process image: its modules at their addresses.
#[derive(Clone, Default)]
pub(crate) struct ProcessUnwinder {
    unwinder: UnwinderNative<SectionBytes, MayAllocateDuringUnwind>,
    /// What was handed to framehop, in its order (sorted by start as `add_module` inserts):
    /// learning a rule (resolve/chains.rs) must find a frame's module as framehop finds it.
    modules: Vec<UnwindModule>,
    /// CPython's perf trampoline, when a module is an interpreter with one (`-X perf`):
    /// its copies are unwound by the template's layout (resolve/modules/trampoline.rs).
    python_trampoline: Option<PerfTrampoline>,
}

/// The copy of CPython's perf trampoline that holds a code address, as its perf-map line says
/// (`py::`): its start and size; None for any other address.
pub(crate) type TrampolineStarts<'a> = dyn FnMut(u64) -> Option<(u64, u64)> + 'a;

/// A module as framehop has it: where it is mapped, its bias, and its unwind sections.
#[derive(Clone)]
pub(crate) struct UnwindModule {
    range: Range<u64>,
    pub(crate) bias: u64,
    pub(crate) loaded: Arc<LoadedModule>,
}

impl ProcessUnwinder {
    /// Place `loaded`'s unwind information where the process maps it; false when the file
    /// does not map there as its program headers say (then frames in it unwind by frame
    /// pointer, framehop's fallback).
    pub(crate) fn add(&mut self, module: &ProcessModule, loaded: &Arc<LoadedModule>) -> bool {
        let Some(bias) = loaded.bias(module.text) else { return false };
        let sections = &loaded.unwind;
        let info = ExplicitModuleSectionInfo {
            // ELF states addresses absolutely (base 0).
            base_svma: 0,
            text_svma: sections.text.clone(),
            // Only mach-O needs the code bytes (prologue analysis); ELF CFI covers every instruction.
            text: None,
            stubs_svma: None,
            stub_helper_svma: None,
            got_svma: sections.got.clone(),
            unwind_info: None,
            eh_frame_svma: sections.eh_frame.as_ref().map(|s| s.svma.clone()),
            eh_frame: sections.eh_frame.as_ref().map(|s| s.bytes.clone()),
            eh_frame_hdr_svma: sections.eh_frame_hdr.as_ref().map(|s| s.svma.clone()),
            eh_frame_hdr: sections.eh_frame_hdr.as_ref().map(|s| s.bytes.clone()),
            debug_frame: sections.debug_frame.as_ref().map(|s| s.bytes.clone()),
            text_segment_svma: None,
            text_segment: None,
        };
        let range: Range<u64> = module.range.clone();
        let at = match self.modules.binary_search_by_key(&range.start, |m| m.range.start) {
            Ok(i) | Err(i) => i,
        };
        self.modules.insert(at, UnwindModule { range: range.clone(), bias, loaded: loaded.clone() });
        self.python_trampoline = self.python_trampoline.or(loaded.python_trampoline);
        self.unwinder.add_module(Module::new(module.file.path.to_string(), range, bias, info));
        true
    }

    /// The module framehop unwinds `lookup` (an instruction pointer, or a return address
    /// minus one) with, found as framehop 0.16's `find_module_for_address` finds it.
    pub(crate) fn module_for(&self, lookup: u64) -> Option<&UnwindModule> {
        let module = match self.modules.binary_search_by_key(&lookup, |m| m.range.start) {
            Ok(i) => &self.modules[i],
            Err(0) => return None,
            Err(i) => Some(&self.modules[i - 1]).filter(|m| lookup < m.range.end)?,
        };
        u32::try_from(lookup.checked_sub(module.bias)?).ok()?;
        Some(module)
    }

    /// Unwind `sample` frame by frame, as framehop's `UnwindIterator` does, keeping the
    /// registers at each frame (what resolve/chains.rs learns rules from).
    /// `keep_frames`: fill `Unwound::frames`. `trampolines`: asked of return addresses in no
    /// module, in a process whose interpreter has a perf trampoline.
    pub(crate) fn unwind(
        &self,
        sample: &StackSample<'_>,
        cache: &mut UnwindCache,
        keep_frames: bool,
        trampolines: &mut TrampolineStarts<'_>,
    ) -> Unwound {
        let mut read_stack = |address| sample.read(address);
        let mut regs = arch::unwind_regs(&sample.regs);
        let mut address = FrameAddress::from_instruction_pointer(sample.pc());
        let mut unwound = Unwound::default();
        loop {
            unwound.addresses.push(address.address());
            if keep_frames {
                unwound.frames.push(arch::frame_regs(address.address(), &regs));
            }
            if unwound.addresses.len() == MAX_FRAMES {
                break;
            }
            if let Some(caller) = self.trampoline_caller(address, &regs, trampolines, &mut read_stack) {
                match caller {
                    Some((return_address, sp, bp)) => {
                        arch::set_caller(&mut regs, return_address, sp, bp);
                        match FrameAddress::from_return_address(return_address) {
                            Some(next) => address = next,
                            None => break,
                        }
                    }
                    None => {
                        unwound.truncated = sample.beyond_window(arch::sp_bp(&regs).0 + 8);
                        break;
                    }
                }
                continue;
            }
            match self.unwinder.unwind_frame(address, &mut regs, cache, &mut read_stack) {
                Ok(Some(return_address)) => match FrameAddress::from_return_address(return_address) {
                    Some(next) => address = next,
                    // framehop's iterator calls a null return address an error.
                    None => break,
                },
                Ok(None) => {
                    unwound.ended = true;
                    break;
                }
                Err(FramehopError::CouldNotReadStack(at)) => {
                    unwound.truncated = sample.beyond_window(at);
                    break;
                }
                // The chain ran into something framehop cannot follow; what came before stands.
                Err(_) => break,
            }
        }
        unwound
    }

    /// The caller of a frame at a return address in a copy of CPython's perf trampoline, as
    /// `Some(caller)` (`Some(None)`: its words lie past the window); None when `address` is
    /// not one (a module's code, other JIT code, or not the copy's one return address).
    fn trampoline_caller(
        &self,
        address: FrameAddress,
        regs: &arch::Regs,
        trampolines: &mut TrampolineStarts<'_>,
        read_stack: &mut dyn FnMut(u64) -> Result<u64, ()>,
    ) -> Option<Option<(u64, u64, u64)>> {
        let trampoline = self.python_trampoline?;
        let FrameAddress::ReturnAddress(return_address) = address else { return None };
        let return_address = return_address.get();
        let lookup = return_address - 1;
        if self.module_for(lookup).is_some() {
            return None;
        }
        // The line must be a whole copy (CPython names each with the template's size) and the
        // address its call's return: anything else is unwound as before.
        let (start, size) = trampolines(lookup)?;
        if size != trampoline.size || return_address.checked_sub(start) != Some(trampoline.return_offset) {
            return None;
        }
        let (sp, bp) = arch::sp_bp(regs);
        Some(trampoline.caller(sp, bp, &mut |at| read_stack(at).ok()))
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) mod tests {
    //! On a real sample: tests/data/unwind holds registers and stack bytes of `sample` (built
    //! -O2 -fomit-frame-pointer -g) captured at its openat syscall, and the binary itself.
    //! tests/data/unwind/generate.sh regenerates all of it.
    use std::{fs::File, path::PathBuf, sync::Arc};

    use helios_trace_common::{USER_REGS_WORDS, regs_x86_64, user_stack_flags};

    use super::*;
    use crate::resolve::modules::{
        files::{ModuleFile, ProcessImage},
        maps::ProcessMaps,
    };

    pub(crate) fn data(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/unwind").join(name)
    }

    /// The captured sample: registers, stack bytes, and the maps with the binary's path
    /// rewritten to `binary` in tests/data.
    pub(crate) struct Captured {
        pub(crate) regs: [u64; USER_REGS_WORDS],
        pub(crate) stack: Vec<u8>,
        pub(crate) maps: ProcessMaps,
    }

    pub(crate) fn captured(binary: &str) -> Captured {
        let regs_text = std::fs::read_to_string(data("regs.txt")).unwrap();
        let mut regs = [0u64; USER_REGS_WORDS];
        for line in regs_text.lines() {
            let (name, value) = line.split_once(' ').unwrap();
            let value = u64::from_str_radix(value.trim().trim_start_matches("0x"), 16).unwrap();
            let index = match name {
                "rip" => regs_x86_64::IP,
                "rsp" => regs_x86_64::SP,
                "rbp" => regs_x86_64::BP,
                other => panic!("unexpected register {other}"),
            };
            regs[index] = value;
        }
        // The generator wrote the binary's path as @SAMPLE@.
        let maps_text = std::fs::read_to_string(data("maps.txt")).unwrap();
        let maps_text = maps_text.replace("@SAMPLE@", &data(binary).to_string_lossy());
        Captured {
            regs,
            stack: std::fs::read(data("stack.bin")).unwrap(),
            maps: ProcessMaps::parse(&maps_text),
        }
    }

    /// The image of the captured process with only the sample binary open (the libraries of
    /// the capturing machine are not part of the test data).
    pub(crate) fn image(captured: &Captured, binary: &str) -> ProcessImage {
        let mappings = captured.maps.mappings();
        let text = mappings.iter().find(|m| m.path.ends_with(binary) && m.executable).unwrap();
        let ours = || mappings.iter().filter(|m| m.key == text.key);
        let range = ours().map(|m| m.start).min().unwrap()..ours().map(|m| m.end).max().unwrap();
        let file = Arc::new(ModuleFile::new(text.key, text.path.clone(), File::open(data(binary)).unwrap()));
        let module = ProcessModule { file, range, text: (text.start, text.file_offset) };
        ProcessImage { maps: captured.maps.clone(), modules: vec![module] }
    }

    pub(crate) fn unwinder(image: &ProcessImage) -> ProcessUnwinder {
        let mut unwinder = ProcessUnwinder::default();
        for module in &image.modules {
            let loaded = Arc::new(LoadedModule::load(module.file.clone()).unwrap());
            assert!(unwinder.add(module, &loaded));
        }
        unwinder
    }

    /// JIT code calls a copy of CPython's perf trampoline (3.12's, which keeps no frame
    /// pointer), which calls more JIT code: the copy is stepped over by its layout, not by the
    /// frame pointer it does not keep.
    #[test]
    fn a_cpython_perf_trampoline_is_unwound_by_its_layout() {
        const COPY: u64 = 0xa000_0000;
        let (inner, outer) = (0x9000_0000u64, 0xb000_0000u64);
        let mut regs = [0u64; USER_REGS_WORDS];
        (regs[regs_x86_64::IP], regs[regs_x86_64::SP], regs[regs_x86_64::BP]) = (inner, 0x7000, 0x7000);
        // The innermost frame keeps a frame pointer (the caller's 0x7020) and returns into
        // the copy; the copy's padding word; its return address; then the frame at 0x7020
        // ends the chain.
        let words = [0x7020, COPY + 6, 0xdead, outer, 0, 0];
        let stack: Vec<u8> = words.iter().flat_map(|w: &u64| w.to_le_bytes()).collect();
        let sample = StackSample::new(&regs, &stack, user_stack_flags::SHORT);
        let mut unwinder = ProcessUnwinder::default();
        let starts = |address: u64| (COPY..COPY + 11).contains(&address).then_some((COPY, 11));
        let without = unwinder.unwind(&sample, &mut UnwindCache::new(), false, &mut |a| starts(a));
        assert_eq!(without.addresses, [inner, COPY + 6], "no template known: the frame pointer");
        unwinder.python_trampoline = crate::resolve::modules::trampoline::tests::padded();
        let with = unwinder.unwind(&sample, &mut UnwindCache::new(), false, &mut |a| starts(a));
        assert_eq!(with.addresses, [inner, COPY + 6, outer]);
        // Only the copy's return address is stepped over so: elsewhere in it, as before.
        let elsewhere = |address: u64| (COPY + 1..COPY + 11).contains(&address).then_some((COPY + 1, 10));
        let other = unwinder.unwind(&sample, &mut UnwindCache::new(), false, &mut |a| elsewhere(a));
        assert_eq!(other.addresses, [inner, COPY + 6]);
        // Nor a line of another size (not a copy of this template).
        let larger = |address: u64| (COPY..COPY + 16).contains(&address).then_some((COPY, 16));
        let other = unwinder.unwind(&sample, &mut UnwindCache::new(), false, &mut |a| larger(a));
        assert_eq!(other.addresses, [inner, COPY + 6]);
    }

    #[test]
    fn recovers_the_chain_without_frame_pointers() {
        let captured = captured("sample");
        let image = image(&captured, "sample");
        let sample = StackSample::new(&captured.regs, &captured.stack, 0);
        let unwound = unwinder(&image).unwind(&sample, &mut UnwindCache::new(), false, &mut |_| None);
        // leak_fn (the syscall), handler, loop, main: all in the sample binary; past main
        // the chain enters libc, which the test data does not carry.
        assert!(unwound.addresses.len() >= 4, "{unwound:x?}");
        assert_eq!(unwound.addresses[0], sample.pc());
        for address in &unwound.addresses[..4] {
            assert!(
                image.module_of(*address).is_some(),
                "{address:#x} is in the sample binary: {unwound:x?}"
            );
        }
        assert!(!unwound.truncated);
    }

    #[test]
    fn a_short_window_is_reported_truncated() {
        let captured = captured("sample");
        let image = image(&captured, "sample");
        let unwinder = unwinder(&image);
        let full = unwinder.unwind(
            &StackSample::new(&captured.regs, &captured.stack, 0),
            &mut UnwindCache::new(),
            false,
            &mut |_| None,
        );
        let cut = StackSample::new(&captured.regs, &captured.stack[..16], 0);
        let unwound = unwinder.unwind(&cut, &mut UnwindCache::new(), false, &mut |_| None);
        assert!(unwound.truncated, "{unwound:x?}");
        assert!(unwound.addresses.len() < full.addresses.len());
        assert_eq!(unwound.addresses, full.addresses[..unwound.addresses.len()]);
        // The same cut with the stack's top reached (SHORT) is the stack's end, not a cut.
        let ended = StackSample { flags: user_stack_flags::SHORT, ..cut };
        assert!(!unwinder.unwind(&ended, &mut UnwindCache::new(), false, &mut |_| None).truncated);
    }
}
