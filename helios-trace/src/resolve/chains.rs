//! Learned call chains (`--learned-chains`, ARCHITECTURE.md "Learned chains"): once a stack
//! window has been unwound here, the kernel is taught, for each frame's address in that
//! process image, the rule that steps from it to its caller; at the next call through the same
//! frames it walks the chain itself (helios-trace-ebpf/src/stacks.rs `learned_chain`) and
//! sends the addresses instead of several KiB of stack for us to unwind.
//!
//! **Exact by replay.** A rule is learned only where it is the very rule framehop (which
//! unwinds the windows, resolve/unwind.rs) takes for that address: the module's CFI row,
//! translated as framehop translates it into one of its cacheable rules (framehop 0.16,
//! `x86_64/dwarf.rs` `translate_into_unwind_rule`; anything it would evaluate as a DWARF
//! expression or could not translate is not learned). And it must redo, on the window it was
//! learned from, the very step framehop made there ([`step`], the kernel's walk in plain
//! Rust). Since framehop's step from a frame depends only on the frame's address (its rule)
//! and registers, a chain the kernel walks from the same registers with these rules, reading
//! the same words (the kernel reads only inside the window the record would have carried), is
//! the chain framehop would unwind from that window. `--learned-chains shadow` checks it on
//! every call the kernel walks (the report's `events.chains_mismatched`).
//!
//! Rules are per process image (tgid and exec time, as the kernel keys `FRAME_RULES`): a code
//! address means something else after an exec, and in another process.
//! x86_64 only: elsewhere every call sends its window.
use std::cell::Cell;

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection as _, X86_64,
};
use helios_trace_common::{FrameRule, frame_rule};

use crate::resolve::modules::elf::UnwindSections;

/// The registers a step reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameRegs {
    pub(crate) pc: u64,
    pub(crate) sp: u64,
    pub(crate) bp: u64,
}

/// What a rule makes of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The caller's frame.
    Caller(FrameRegs),
    /// The outermost frame: the chain ends (framehop's `Ok(None)`).
    End,
    /// A read failed or framehop would have stopped with an error: the kernel sends the
    /// window instead.
    Refused,
}

/// One step of the kernel's walk (helios-trace-ebpf/src/stacks.rs `frame`; keep the two in
/// step), which is framehop's `UnwindRuleX86_64::exec` for the rules learned here.
/// `read` reads 8 bytes of the thread's stack, None outside the window.
pub(crate) fn step(rule: FrameRule, at: FrameRegs, read: &dyn Fn(u64) -> Option<u64>) -> Step {
    if rule.flags & frame_rule::END != 0 {
        return Step::End;
    }
    let from_bp = rule.flags & frame_rule::CFA_FROM_BP != 0;
    let base = if from_bp { at.bp } else { at.sp };
    if from_bp && at.bp == 0 {
        return Step::End;
    }
    let cfa = base.wrapping_add(rule.cfa_offset as i64 as u64);
    if from_bp && cfa <= at.sp {
        return Step::Refused;
    }
    let mut bp = at.bp;
    if rule.flags & frame_rule::BP_SAVED != 0 {
        let Some(saved) = read(base.wrapping_add(rule.bp_offset as i64 as u64)) else { return Step::Refused };
        bp = saved;
    }
    let Some(return_address) = read(cfa.wrapping_sub(8)) else { return Step::Refused };
    if return_address == 0 {
        return Step::End;
    }
    if cfa == at.sp && return_address == at.pc {
        return Step::Refused;
    }
    Step::Caller(FrameRegs { pc: return_address, sp: cfa, bp })
}

/// The rule framehop takes for the CFI row of a frame, where it is one of the rules [`step`]
/// replays; None where framehop would evaluate the row's expressions instead (or not use the
/// row at all). Mirrors framehop 0.16's `translate_into_unwind_rule` case by case, down to its
/// rounding of offsets to 8 bytes.
pub(crate) fn rule_of_row(
    cfa: &CfaRule<usize>,
    bp: Option<&RegisterRule<usize>>,
    ra: Option<&RegisterRule<usize>>,
) -> Option<FrameRule> {
    match ra {
        None | Some(RegisterRule::Undefined) => {
            return Some(FrameRule { flags: frame_rule::END, ..FrameRule::default() });
        }
        Some(RegisterRule::Offset(-8)) => {}
        Some(_) => return None,
    }
    // Where the caller's frame pointer was saved, relative to the CFA; None: not saved.
    let saved_bp = match bp {
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => None,
        Some(RegisterRule::Offset(offset)) => Some(*offset),
        Some(_) => return None,
    };
    let CfaRule::RegisterAndOffset { register, offset } = cfa else { return None };
    match *register {
        X86_64::RSP => {
            let sp_offset_by_8 = u16::try_from(offset / 8).ok()?;
            let mut rule = FrameRule { cfa_offset: i32::from(sp_offset_by_8) * 8, ..FrameRule::default() };
            if let Some(bp_from_cfa) = saved_bp {
                let by_8 = i16::try_from((offset + bp_from_cfa) / 8).ok()?;
                rule.flags |= frame_rule::BP_SAVED;
                rule.bp_offset = i32::from(by_8) * 8;
            }
            Some(rule)
        }
        // framehop's UseFramePointer: (sp, bp) = (bp + 16, *bp).
        X86_64::RBP if *offset == 16 && saved_bp == Some(-16) => Some(FrameRule {
            flags: frame_rule::CFA_FROM_BP | frame_rule::BP_SAVED,
            cfa_offset: 16,
            bp_offset: 0,
            reserved: 0,
        }),
        _ => None,
    }
}

/// The rule of the code at `svma` (the module's own address; `first`: the innermost frame,
/// looked up at the instruction pointer, else at a return address, looked up a byte before)
/// from the module's `.eh_frame`, found through `.eh_frame_hdr`'s table as framehop finds it.
/// None without both sections, without an FDE there, or for a rule [`rule_of_row`] refuses.
pub(crate) fn cfi_rule(sections: &UnwindSections, svma: u64, first: bool) -> Option<FrameRule> {
    let (eh_frame, hdr) = (sections.eh_frame.as_ref()?, sections.eh_frame_hdr.as_ref()?);
    let mut bases =
        BaseAddresses::default().set_eh_frame(eh_frame.svma.start).set_eh_frame_hdr(hdr.svma.start);
    if let Some(text) = &sections.text {
        bases = bases.set_text(text.start);
    }
    if let Some(got) = &sections.got {
        bases = bases.set_got(got.start);
    }
    let frame = EhFrame::new(&eh_frame.bytes[..], LittleEndian);
    let parsed = EhFrameHdr::new(&hdr.bytes[..], LittleEndian).parse(&bases, 8).ok()?;
    let lookup = if first { svma } else { svma.checked_sub(1)? };
    let mut context = UnwindContext::new();
    let row = parsed
        .table()?
        .unwind_info_for_address(&frame, &bases, &mut context, lookup, EhFrame::cie_from_offset)
        .ok()?;
    rule_of_row(row.cfa(), row.register(X86_64::RBP).as_ref(), row.register(X86_64::RA).as_ref())
}

/// A chain's rules, learned (`learn`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Learned {
    /// The rule of each frame, innermost first.
    pub(crate) rules: Vec<FrameRule>,
    /// How many bytes from the first frame's stack pointer up the walk reads: to the end of
    /// the highest word any step read (`FirstFrameHint::stack_bytes`, which the kernel's walk copies at
    /// once: helios-trace-ebpf/src/stacks.rs, `copy_ahead`).
    pub(crate) stack_bytes: u64,
}

/// The rules that make the kernel walk an unwound chain as framehop unwound it: for each of
/// `frames` (the registers framehop had at each, innermost first; the chain ended there,
/// framehop's `Ok(None)`), the rule `rule_of(index, pc)` gives, checked by replaying it on the
/// window (`read`). None when a frame has no rule or its rule does not redo framehop's step:
/// then the kernel would miss on that chain anyway, and keeps sending its window.
pub(crate) fn learn(
    frames: &[FrameRegs],
    rule_of: &mut dyn FnMut(usize, u64) -> Option<FrameRule>,
    read: &dyn Fn(u64) -> Option<u64>,
) -> Option<Learned> {
    let first_sp = frames.first()?.sp;
    // The kernel's walk reads the same words (the same steps): their end is how far it copies.
    let end = Cell::new(first_sp);
    let read_and_note = |address: u64| {
        let word = read(address)?;
        end.set(end.get().max(address.saturating_add(8)));
        Some(word)
    };
    let mut rules = Vec::with_capacity(frames.len());
    for (index, frame) in frames.iter().enumerate() {
        let rule = rule_of(index, frame.pc)?;
        let expected = match frames.get(index + 1) {
            Some(caller) => Step::Caller(*caller),
            None => Step::End,
        };
        if step(rule, *frame, &read_and_note) != expected {
            return None;
        }
        rules.push(rule);
    }
    Some(Learned { rules, stack_bytes: end.get().saturating_sub(first_sp) })
}

/// The kernel's walk over a window, with rules by (innermost?, address): the chain, or None
/// where the kernel would send the window (a frame without a rule, a refused step, deeper than
/// `max_frames`). What the kernel does, for tests.
#[cfg(test)]
pub(crate) fn walk(
    start: FrameRegs,
    rules: &dyn Fn(bool, u64) -> Option<FrameRule>,
    read: &dyn Fn(u64) -> Option<u64>,
    max_frames: usize,
) -> Option<Vec<u64>> {
    let mut chain = Vec::new();
    let mut at = start;
    while chain.len() < max_frames {
        chain.push(at.pc);
        match step(rules(chain.len() == 1, at.pc)?, at, read) {
            Step::Caller(caller) => at = caller,
            Step::End => return Some(chain),
            Step::Refused => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp_rule(cfa_offset: i32) -> FrameRule {
        FrameRule { cfa_offset, ..FrameRule::default() }
    }

    /// A stack of words at 0x1000.. as the window.
    fn window(words: &[u64]) -> impl Fn(u64) -> Option<u64> + '_ {
        move |at: u64| {
            let index = at.checked_sub(0x1000)?;
            if index % 8 != 0 {
                return None;
            }
            words.get((index / 8) as usize).copied()
        }
    }

    #[test]
    fn rows_translate_as_framehop_translates_them() {
        let sp = |offset| CfaRule::RegisterAndOffset { register: X86_64::RSP, offset };
        let ra = RegisterRule::Offset(-8);
        // CFA = rsp + 8: just the return address.
        assert_eq!(rule_of_row(&sp(8), None, Some(&ra)), Some(sp_rule(8)));
        // An undefined return address ends the chain (_start, clone3).
        assert_eq!(rule_of_row(&sp(8), None, Some(&RegisterRule::Undefined)).unwrap().flags, frame_rule::END);
        // rbp saved at CFA-16 with CFA = rsp+32: bp is read at sp + 16.
        let saved = RegisterRule::Offset(-16);
        let rule = rule_of_row(&sp(32), Some(&saved), Some(&ra)).unwrap();
        assert_eq!((rule.flags, rule.cfa_offset, rule.bp_offset), (frame_rule::BP_SAVED, 32, 16));
        // The frame-pointer rule, and only its usual form.
        let bp = |offset| CfaRule::RegisterAndOffset { register: X86_64::RBP, offset };
        let rule = rule_of_row(&bp(16), Some(&saved), Some(&ra)).unwrap();
        assert_eq!(rule.flags, frame_rule::CFA_FROM_BP | frame_rule::BP_SAVED);
        assert_eq!(rule_of_row(&bp(32), Some(&saved), Some(&ra)), None);
        // What framehop evaluates as DWARF is not learned.
        assert_eq!(rule_of_row(&sp(8), None, Some(&RegisterRule::Offset(-16))), None);
        assert_eq!(
            rule_of_row(
                &CfaRule::Expression(gimli::UnwindExpression { offset: 0, length: 0 }),
                None,
                Some(&ra)
            ),
            None
        );
        assert_eq!(rule_of_row(&sp(-8), None, Some(&ra)), None);
        // framehop rounds an offset to 8 bytes; so does the rule.
        assert_eq!(rule_of_row(&sp(20), None, Some(&ra)), Some(sp_rule(16)));
    }

    #[test]
    fn steps_follow_the_rules_and_refuse_what_framehop_refuses() {
        // sp 0x1000: [0x1000] junk, [0x1008] saved bp 0x1040, [0x1010] return address 0x5000.
        let stack = [7, 0x1040, 0x5000, 0, 0];
        let read = window(&stack);
        let at = FrameRegs { pc: 0x4000, sp: 0x1000, bp: 0x99 };
        let rule = FrameRule { flags: frame_rule::BP_SAVED, cfa_offset: 24, bp_offset: 8, reserved: 0 };
        assert_eq!(step(rule, at, &read), Step::Caller(FrameRegs { pc: 0x5000, sp: 0x1018, bp: 0x1040 }));
        // Without a saved bp, bp is kept.
        assert_eq!(
            step(sp_rule(24), at, &read),
            Step::Caller(FrameRegs { pc: 0x5000, sp: 0x1018, bp: 0x99 })
        );
        // A return address of 0 ends the chain; a read outside the window refuses.
        assert_eq!(step(sp_rule(32), at, &read), Step::End);
        assert_eq!(step(sp_rule(64), at, &read), Step::Refused);
        // The frame-pointer rule: bp 0 ends; a CFA not above sp refuses.
        let fp = FrameRule {
            flags: frame_rule::CFA_FROM_BP | frame_rule::BP_SAVED,
            cfa_offset: 16,
            ..FrameRule::default()
        };
        assert_eq!(step(fp, FrameRegs { bp: 0, ..at }, &read), Step::End);
        assert_eq!(step(fp, FrameRegs { bp: 0xff0, ..at }, &read), Step::Refused);
        assert_eq!(
            step(fp, FrameRegs { bp: 0x1008, ..at }, &read),
            Step::Caller(FrameRegs { pc: 0x5000, sp: 0x1018, bp: 0x1040 })
        );
    }

    /// On a real binary's CFI (tests/data/unwind: `sample`, -O2 -fomit-frame-pointer, captured
    /// at its openat): the rule learned for each frame redoes the step framehop made there.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn rules_from_a_real_binarys_cfi_redo_framehops_steps() {
        use crate::{
            model::event::StackSample,
            resolve::{
                modules::elf::LoadedModule,
                unwind::{
                    UnwindCache,
                    tests::{captured, image, unwinder},
                },
            },
        };
        let captured = captured("sample");
        let image = image(&captured, "sample");
        let sample = StackSample::new(&captured.regs, &captured.stack, 0);
        let unwound = unwinder(&image).unwind(&sample, &mut UnwindCache::new(), true, &mut |_| None);
        assert_eq!(unwound.frames.len(), unwound.addresses.len());
        let read = |address: u64| sample.read(address).ok();
        let module = &image.modules[0];
        let loaded = LoadedModule::load(module.file.clone()).unwrap();
        let bias = loaded.bias(module.text).unwrap();
        let mut stepped = 0;
        for (index, pair) in unwound.frames.windows(2).enumerate() {
            // The frames in the sample binary: leak_fn, handler, loop, main (whose caller is in
            // libc, which the test data does not carry).
            let lookup = if index == 0 { pair[0].pc } else { pair[0].pc - 1 };
            if image.module_of(lookup).is_none() {
                break;
            }
            let rule = cfi_rule(&loaded.unwind, pair[0].pc - bias, index == 0).expect("plain CFI");
            assert_eq!(step(rule, pair[0], &read), Step::Caller(pair[1]), "frame {index}: {rule:?}");
            stepped += 1;
        }
        assert_eq!(stepped, 4, "{unwound:x?}");
    }

    #[test]
    fn a_chain_is_learned_only_when_every_rule_redoes_its_step() {
        // main's frame at sp 0x1000 returns to 0x5000 at [0x1008]; that one ends the chain.
        let stack = [0, 0x5000, 0];
        let read = window(&stack);
        let frames =
            [FrameRegs { pc: 0x4000, sp: 0x1000, bp: 0 }, FrameRegs { pc: 0x5000, sp: 0x1010, bp: 0 }];
        let end = FrameRule { flags: frame_rule::END, ..FrameRule::default() };
        let mut good = |index: usize, _pc: u64| Some(if index == 0 { sp_rule(16) } else { end });
        let learned = Learned { rules: vec![sp_rule(16), end], stack_bytes: 16 };
        assert_eq!(learn(&frames, &mut good, &read), Some(learned));
        // A rule that lands elsewhere than framehop did is not taught.
        let mut wrong = |index: usize, _pc: u64| Some(if index == 0 { sp_rule(8) } else { end });
        assert_eq!(learn(&frames, &mut wrong, &read), None);
        // Nor a chain with a frame without a rule.
        let mut gap = |index: usize, _pc: u64| (index == 0).then(|| sp_rule(16));
        assert_eq!(learn(&frames, &mut gap, &read), None);
        // The walk with the learned rules is the chain; an unknown frame makes it miss.
        let rules = |first: bool, pc: u64| match (first, pc) {
            (true, 0x4000) => Some(sp_rule(16)),
            (false, 0x5000) => Some(end),
            _ => None,
        };
        assert_eq!(walk(frames[0], &rules, &read, 64), Some(vec![0x4000, 0x5000]));
        assert_eq!(walk(FrameRegs { pc: 0x4001, ..frames[0] }, &rules, &read, 64), None);
        assert_eq!(walk(frames[0], &rules, &read, 1), None, "deeper than the kernel walks");
    }

    /// The bytes a chain's walk reads from its first stack pointer: to the end of the highest
    /// word any step read, a saved frame pointer's included, not to the last frame's CFA.
    #[test]
    fn a_learned_chain_says_how_much_of_the_stack_its_walk_reads() {
        // sp 0x1000: the leaf returns to 0x5000 at [0x1008] (CFA 0x1010); its caller saved bp
        // 0x1050 at [0x1040] and returns to 0x6000 at [0x1048] (CFA 0x1050, from bp 0x1040);
        // the outermost frame ends the chain by its rule, reading nothing.
        let mut stack = [0; 12];
        (stack[1], stack[8], stack[9]) = (0x5000, 0x1050, 0x6000);
        let read = window(&stack);
        let frames = [
            FrameRegs { pc: 0x4000, sp: 0x1000, bp: 0x1040 },
            FrameRegs { pc: 0x5000, sp: 0x1010, bp: 0x1040 },
            FrameRegs { pc: 0x6000, sp: 0x1050, bp: 0x1050 },
        ];
        let fp = FrameRule {
            flags: frame_rule::CFA_FROM_BP | frame_rule::BP_SAVED,
            cfa_offset: 16,
            ..FrameRule::default()
        };
        let end = FrameRule { flags: frame_rule::END, ..FrameRule::default() };
        let rules = [sp_rule(16), fp, end];
        let mut rule_of = |index: usize, _pc: u64| Some(rules[index]);
        let learned = learn(&frames, &mut rule_of, &read).expect("every rule redoes its step");
        assert_eq!(learned.rules, rules);
        assert_eq!(learned.stack_bytes, 0x50, "to the end of the word at 0x1048");
        // A chain of one frame that ends by its rule reads nothing.
        let mut ends = |_: usize, _pc: u64| Some(end);
        assert_eq!(learn(&frames[2..], &mut ends, &read).map(|l| l.stack_bytes), Some(0));
    }
}
