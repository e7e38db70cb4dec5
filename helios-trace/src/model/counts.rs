//! What the pipeline counted of the records it read (ARCHITECTURE.md, "Contracts: Report":
//! `events`): received, lost in the kernel, undecodable, and what stacks could not give.
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct EventCounts {
    /// Records read from the ring buffer, each for a call (a record of the pairs the kernel
    /// matched alone, `chain_flags::PAIRS_ONLY`, stands for none: its calls are in
    /// `calls_paired`).
    pub(crate) received: u64,
    /// Records the kernel could not reserve (ring buffer full), whose enter was lost, or that a
    /// kernel program failed to make.
    pub(crate) lost: u64,
    /// Records that were short or unknown.
    pub(crate) undecodable: u64,
    /// Stacks that could not be captured (`--stacks fp`: the stack map's bucket taken by another
    /// stack, the map full, or the stack unreadable).
    pub(crate) stack_errors: u64,
    /// `--stacks dwarf`: stacks deeper than `--stack-window`, whose outer frames are missing.
    pub(crate) stacks_truncated: u64,
    /// `--stacks dwarf`: stacks the kernel walked with rules learned here instead of sending
    /// the stack window (`--learned-chains`).
    pub(crate) chains_learned: u64,
    /// Of the chains the kernel walked (`chains_learned`, or with `--learned-chains shadow`
    /// `chains_checked`), those whose rules past the first frame it all found in one taught
    /// chain instead of one lookup per frame (chains of 2 to 32 frames).
    pub(crate) chains_cached: u64,
    /// `--learned-chains shadow`: windows unwound here whose chain the kernel had also
    /// walked, and those where the two differ (never, unless the rules are wrong).
    pub(crate) chains_checked: u64,
    pub(crate) chains_mismatched: u64,
    /// Distinct user stacks that could not be named: the process was gone before its maps
    /// were read (an exec followed by a quick exit); their frames are bare addresses.
    pub(crate) stacks_unresolved: u64,
    /// New call sites not remembered because `--max-stacks` were: their descriptors are
    /// under the site `site-limit`.
    pub(crate) sites_dropped: u64,
    /// Descriptors a running CPython opened before the kernel walked its Python frames (found
    /// at the baseline, or late after its exec): their sites have native frames only.
    pub(crate) python_frames_missed: u64,
    /// Close records that came after the table had seen their number released (another
    /// thread given it again, a dup2 onto it, /proc without it): they closed the descriptor
    /// kept for them, not the new one (model/fdtable.rs, `Closing`).
    pub(crate) closes_late: u64,
    /// Descriptors held for a close record that did not come (a record lost, a close the
    /// syscalls do not show) within 30 s or before their process exited: counted closed as
    /// lost (close reason `reconcile`, or `exit`).
    pub(crate) closes_taken_for_lost: u64,
    /// Calls whose descriptors the kernel matched with their closes, so that neither call's
    /// record was sent (helios-trace-ebpf/src/pairs.rs): handled as those records would have
    /// been (in `events_by_type`, the sites' counts), not in `received`: every call is in
    /// `received`, `lost` or, with its close, here.
    pub(crate) calls_paired: u64,
    /// Receiving calls (recvmsg, recvmmsg) on a socket that can pass descriptors (AF_UNIX, or
    /// one whose family is not known) that may have received more descriptors than the kernel
    /// listed: more than 16 in the call, a recvmmsg of more than 8 messages (whether the rest
    /// passed any or not), more control messages than the 40 steps of its walk take, a
    /// message header it could not read (helios-trace-ebpf/src/syscalls.rs,
    /// `received_nothing`). Those it listed are in the table; the rest are found by the
    /// reconciliation of the process this asks for, at a once-a-second tick paced to 5% of a
    /// CPU (observe/session.rs, `reconcile_cut_short`), under `unknown-origin` and counted in
    /// `reconcile_corrections.added`; with reconciliation off, not at all.
    pub(crate) receives_cut_short: u64,
    /// The kernel programs' counters shown as they are, after the pipeline's own (in the
    /// report's `events` beside them).
    #[serde(flatten)]
    pub(crate) kernel: KernelCounts,
}

/// The kernel programs' counters (`helios_trace_common::counter`) the report shows as they
/// are; the others userspace reads are summed into `EventCounts::lost` and `stack_errors`
/// (`sys/loader.rs`, `KernelCounters`, which says which it does not read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct KernelCounts {
    /// Times a record's submit woke the reader because the ring held `wakeup_bytes`: an
    /// interrupt on the traced call's CPU. The reader's paced looks keep it near 0 under a
    /// steady load (sys/ring.rs, `next_look`). An exec's record always wakes it, by design
    /// (helios-trace-ebpf/src/process.rs), and is not counted.
    pub(crate) wakeups_forced: u64,
    /// Python stacks whose thread state the kernel took from what it remembered of the calling
    /// thread, checked to be still that thread's and in its interpreter's list, instead of
    /// searching the list from its head (helios-trace-ebpf/src/python.rs, `remembered_thread`).
    pub(crate) python_threads_remembered: u64,
    /// Python stacks (CPython 3.11, 3.12) whose running `_PyCFrame` the kernel took from its
    /// copy of the C stack for the learned walk, instead of a read of its own
    /// (helios-trace-ebpf/src/python.rs, `walk_python`).
    pub(crate) python_cframes_from_copy: u64,
    /// Of `python_threads_remembered`, those (3.11, 3.12) whose running `_PyCFrame` lay on the
    /// calling thread's own stack, which only its eval loop puts there: no read of the
    /// interpreter's list (helios-trace-ebpf/src/python.rs, `remembered_thread`).
    pub(crate) python_threads_on_stack: u64,
    /// Learned walks whose copy of the stack went as far as the chains through their first
    /// frame read, in one read when the copy started, before the Python walk and the first
    /// step (helios-trace-ebpf/src/stacks.rs, `start_from_hint`); a call whose record could
    /// not be reserved counted too.
    pub(crate) stacks_copied_ahead: u64,
    /// Copies ahead that failed, a page in them not present (each a fault): the walk copied by
    /// the page instead. A main thread's stack is copied no further than the page of its `argc`,
    /// short of the gap above it no process touches (0 in the kernel tests that count it).
    pub(crate) stack_copies_ahead_failed: u64,
    /// Learned walks that took their first frame's rule from its hint, confirmed by the chain
    /// taught through the caller it found, with no lookup of the rule
    /// (helios-trace-ebpf/src/stacks.rs, `confirmed_chain`).
    pub(crate) first_rules_from_hints: u64,
    /// Opens whose path (memfds whose name) the kernel could not read at their exit (its memory
    /// unmapped by then, for one): the descriptor is counted as any other, and named from /proc
    /// at the report.
    pub(crate) paths_unreadable: u64,
    /// Records sent after two tries to send first what a slot of their process kept failed,
    /// each time because another program changed the slot between the read and the take: the
    /// kept calls may come after the record (helios-trace-ebpf/src/pairs.rs, `send_slot`).
    /// Counted once for each such slot (a process has four).
    pub(crate) pairs_out_of_order: u64,
}

/// What one kernel program has cost so far, as the kernel counts it while its BPF statistics
/// are on (`kernel.bpf_stats_enabled`; struct bpf_prog_info's run_cnt and run_time_ns).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProgramRuns {
    pub(crate) program: String,
    pub(crate) runs: u64,
    pub(crate) run_ns: u64,
}

/// The suffix of a program's BTF tracepoint twin (helios-trace-ebpf/src/syscalls.rs), which
/// does the same job as the program it is named after.
pub(crate) const BTF_TWIN_SUFFIX: &str = "_btf";

impl ProgramRuns {
    /// One entry per program, by name, sorted: a BTF twin counted under the name of the
    /// program whose job it does, so that the `program` label says which job, whichever way
    /// this kernel attached it (both are loaded when the twin's attach failed and the raw one
    /// took over: their counts are added).
    pub(crate) fn by_program(loaded: impl IntoIterator<Item = ProgramRuns>) -> Vec<ProgramRuns> {
        let mut merged = std::collections::BTreeMap::<String, ProgramRuns>::new();
        for mut runs in loaded {
            if let Some(job) = runs.program.strip_suffix(BTF_TWIN_SUFFIX) {
                runs.program = job.to_string();
            }
            let entry = merged
                .entry(runs.program.clone())
                .or_insert_with(|| ProgramRuns { program: runs.program.clone(), ..ProgramRuns::default() });
            entry.runs = entry.runs.saturating_add(runs.runs);
            entry.run_ns = entry.run_ns.saturating_add(runs.run_ns);
        }
        merged.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(program: &str, runs: u64, run_ns: u64) -> ProgramRuns {
        ProgramRuns { program: program.to_string(), runs, run_ns }
    }

    /// The kernel's counters stand in the report's `events` beside the pipeline's, last, as
    /// they did when each was a field of its own (ARCHITECTURE.md, "Contracts: Report").
    #[test]
    fn the_kernels_counters_are_keys_of_events_itself() {
        let kernel = KernelCounts {
            wakeups_forced: 1,
            python_threads_remembered: 2,
            python_cframes_from_copy: 3,
            python_threads_on_stack: 4,
            stacks_copied_ahead: 5,
            stack_copies_ahead_failed: 6,
            first_rules_from_hints: 7,
            paths_unreadable: 8,
            pairs_out_of_order: 10,
        };
        let text =
            serde_json::to_string(&EventCounts { received: 9, kernel, ..EventCounts::default() }).unwrap();
        // Keys in the order written (serde_json's `Value` would sort them).
        let at = |key: &str| text.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("{key} in {text}"));
        let order = [
            "received",
            "closes_taken_for_lost",
            "calls_paired",
            "receives_cut_short",
            "wakeups_forced",
            "python_threads_remembered",
            "python_cframes_from_copy",
            "python_threads_on_stack",
            "stacks_copied_ahead",
            "stack_copies_ahead_failed",
            "first_rules_from_hints",
            "paths_unreadable",
            "pairs_out_of_order",
        ]
        .map(at);
        assert!(order.is_sorted(), "{text}");
        assert!(text.ends_with("\"pairs_out_of_order\":10}"), "{text}");
        assert!(!text.contains("kernel"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (json["received"].as_u64(), json["python_cframes_from_copy"].as_u64()),
            (Some(9), Some(3))
        );
    }

    #[test]
    fn a_btf_twin_is_counted_under_the_program_whose_job_it_does() {
        let loaded = [
            runs("process_exit", 3, 30),
            runs("fd_syscall_exit_btf", 10, 1000),
            // A twin whose attach failed, and the raw program that took over.
            runs("fd_syscall_exit", 2, 20),
        ];
        assert_eq!(
            ProgramRuns::by_program(loaded),
            [runs("fd_syscall_exit", 12, 1020), runs("process_exit", 3, 30)]
        );
    }
}
