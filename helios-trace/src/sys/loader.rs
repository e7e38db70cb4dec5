//! Load the embedded kernel programs, configure them (load-time globals, the syscall spec
//! array, the target filter), attach them to their tracepoints, and hand out the maps.
use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{BtfTracePoint, RawTracePoint, TracePoint, UProbe},
};
use helios_trace_common::{
    ChainKey, ChainRules, FirstFrameHint, FrameRule, FrameRuleKey, GoOffsets, KernelOffsets, PythonOffsets,
    SETTINGS_GLOBAL, Settings, counter, filter_match, first_frame_hint_slot, learned_chains, map_name, spec,
    stack_mode,
};
use log::{debug, info, warn};
use rustix::fs::{Mode, OFlags};

use super::{
    btf, checks,
    uprobes::{self, UprobeMaker},
};
use crate::{
    model::counts::{BTF_TWIN_SUFFIX, KernelCounts, ProgramRuns},
    sys::{ring::Notices, syscalls::SyscallTable},
};

/// The kernel programs, built by build.rs for the bpf target.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/helios-trace"));

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// The raw syscall tracepoints (include/trace/events/syscalls.h; tracefs lists them as
/// `raw_syscalls/sys_enter` and `sys_exit`): every descriptor syscall is seen at `sys_exit`;
/// the floor uses both. The kernel defines them together.
const SYSCALL_HOOKS: [&str; 2] = ["sys_enter", "sys_exit"];

/// Set to `tracepoints`, `raw`, `raw-exit` or `btf`, the loader attaches the floor instead of the
/// tracer: empty programs of each attach kind (helios-trace-ebpf/src/floor.rs), which
/// `cargo xtask bench`'s "floor" section measures. Nothing is traced then.
const FLOOR_ENV: &str = "HELIOS_TRACE_FLOOR";

/// Set to `raw`, the descriptor syscall programs are attached as raw tracepoints even where
/// the kernel has BTF, as they are where it has none (`attach_syscall_hook`): how the kernel
/// tests check that way on a kernel with BTF.
const SYSCALL_HOOKS_ENV: &str = "HELIOS_TRACE_SYSCALL_HOOKS";

#[derive(Clone, Debug)]
pub(crate) struct TraceConfig {
    /// Only these processes (and children they fork later) and the processes in or below
    /// these cgroups (v2 ids); both empty: every process.
    pub(crate) targets: Vec<u32>,
    pub(crate) target_cgroups: Vec<u64>,
    /// `--comm` names (`helios_trace_common::comm_key`) and `--uid` ids.
    pub(crate) target_comms: Vec<[u8; 16]>,
    pub(crate) target_uids: Vec<u32>,
    /// How to capture user stacks: `helios_trace_common::stack_mode`.
    pub(crate) user_stack_mode: u32,
    /// Bytes of user stack per call in `stack_mode::DWARF`.
    pub(crate) stack_window: u32,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub(crate) ring_buffer_bytes: u32,
    /// Wake the reader once this many bytes are waiting (`Settings::wakeup_bytes`).
    pub(crate) wakeup_bytes: u64,
    /// `stack_mode::DWARF`: `helios_trace_common::learned_chains`.
    pub(crate) learned_chains: u32,
}

impl TraceConfig {
    /// The kernel programs' load-time settings for this configuration.
    fn settings(
        &self,
        (tracer_tgid, uprobe_maker_tgid): (u32, u32),
        exit_group_dead_offset: u32,
        kernel: KernelOffsets,
    ) -> Settings {
        Settings {
            tracer_tgid,
            uprobe_maker_tgid,
            filter_targets: u32::from(self.filtering_targets()),
            filter_cgroups: u32::from(!self.target_cgroups.is_empty()),
            filter_matches: if self.target_comms.is_empty() { 0 } else { filter_match::COMMS }
                | if self.target_uids.is_empty() { 0 } else { filter_match::UIDS },
            user_stack_mode: self.user_stack_mode,
            stack_window: self.stack_window,
            reserved: 0,
            exit_group_dead_offset,
            wakeup_bytes: self.wakeup_bytes,
            learned_chains: self.learned_chains,
            kernel,
        }
    }

    /// Whether the kernel keeps calls and matches them with their closes (`PAIRS`,
    /// helios-trace-ebpf/src/pairs.rs): calls whose chains it walks, unless each is sent
    /// with its window to be compared (shadow).
    pub(crate) fn keeps_pairs(&self) -> bool {
        self.user_stack_mode == stack_mode::DWARF && self.learned_chains == learned_chains::ON
    }

    /// Whether only some processes are traced (the settings' `filter_targets`).
    fn filtering_targets(&self) -> bool {
        !self.targets.is_empty()
            || !self.target_cgroups.is_empty()
            || !self.target_comms.is_empty()
            || !self.target_uids.is_empty()
    }

    /// The maps this configuration never uses, made one entry long (none is not allowed): the
    /// kernel allocates the others' room when they are made, used or not, and charges it to
    /// the tracer's memory cgroup (a DaemonSet's limit). Measured on this kernel
    /// (/proc/PID/fdinfo `memlock`; BENCHMARKS.md, "Kernel memory"): the stack-trace map 16.3
    /// MiB, used by `--stacks fp` only; the target map 5.0 MiB, written for `--pid`, `--comm`
    /// and `--uid` only (with `--cgroup` alone it is looked in, always empty: a process is traced
    /// by its cgroup, helios-trace-ebpf/src/filter.rs); the rules' buckets 4.0 MiB, used by
    /// learned chains only, as the taught chains' are; the Python threads remembered 1.25 MiB,
    /// used by the Python walk, which needs user stacks; the calls kept (`PAIRS`) 0.98 MiB.
    fn unused_maps(&self) -> Vec<&'static str> {
        let mut unused = Vec::new();
        if self.user_stack_mode != stack_mode::FP {
            unused.push(map_name::STACKS);
        }
        if self.user_stack_mode == stack_mode::NONE {
            unused.push(map_name::PYTHON_THREADS);
        }
        if self.targets.is_empty() && self.target_comms.is_empty() && self.target_uids.is_empty() {
            unused.push(map_name::TARGETS);
        }
        if self.user_stack_mode != stack_mode::DWARF || self.learned_chains == learned_chains::OFF {
            unused.extend([map_name::FRAME_RULES, map_name::CHAIN_RULES, map_name::FIRST_FRAME_HINTS]);
        }
        if !self.keeps_pairs() {
            unused.push(map_name::PAIRS);
        }
        unused
    }
}

/// Loaded and attached programs; dropping it detaches everything.
pub(crate) struct Tracer {
    /// Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    stacks: StackTraceMap<MapData>,
    /// CPython processes whose frames the kernel walks (resolve/python); shared with the
    /// exec lane (observe/exec_lane.rs).
    python: PythonMap,
    /// Go processes whose goroutines' creators the kernel reads (resolve/goroutines.rs).
    go: BpfHashMap<MapData, u32, GoOffsets>,
    /// Unwind rules learned from stack windows (resolve/chains.rs), until the engine takes them.
    rules: Option<LearnedRules>,
    /// Each process's last exec time, as the kernel keeps it (process.rs).
    exec_times: BpfHashMap<MapData, u32, u64>,
    counters: PerCpuArray<MapData, u64>,
    /// "category/name" of every tracepoint attached.
    attached: Vec<String>,
    /// Until the exec lane takes them.
    notices: Option<RingBuf<MapData>>,
    /// Whether the libuv uprobes loaded (helios-trace-ebpf/src/libuv.rs): not with `--stacks
    /// none`, nor on a kernel without uprobes, nor without a maker.
    libuv: bool,
    /// Who makes the uprobes (sys/uprobes.rs). Kept while the tracer lives, used or not: the
    /// programs skip its pid, which must not go to another process.
    uprobe_maker: Option<UprobeMaker>,
    /// The uprobes made: they go with the tracer, as its links do.
    uprobes: Vec<OwnedFd>,
}

/// The kernel's `PYTHON_PROCS` map, shared by the reader and the exec lane's thread.
#[derive(Clone)]
pub(crate) struct PythonMap(Arc<Mutex<BpfHashMap<MapData, u32, PythonOffsets>>>);

impl PythonMap {
    /// Walk the Python frames of `tgid` at its descriptor calls (None: stop). Updating an open
    /// map needs no privilege, so this works after privileges were dropped.
    pub(crate) fn set(&self, tgid: u32, offsets: Option<PythonOffsets>) -> Result<()> {
        let mut map = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match offsets {
            Some(offsets) => map.insert(tgid, offsets, 0).context("cannot fill the Python map")?,
            // Absent already is fine: the process was never a recognised CPython.
            None => {
                let _ = map.remove(&tgid);
            }
        }
        Ok(())
    }
}

/// The kernel's `FRAME_RULES` map, the unwind rules of learned chains (resolve/chains.rs), its
/// `CHAIN_RULES`, the chains taught whole with their rules, and its `FIRST_FRAME_HINTS`, each
/// first frame's rule and how far the chains through it read the stack. Like `PythonMap::set`,
/// teaching needs no privilege.
pub(crate) struct LearnedRules {
    rules: BpfHashMap<MapData, FrameRuleKey, FrameRule>,
    chains: BpfHashMap<MapData, ChainKey, ChainRules>,
    hints: Array<MapData, FirstFrameHint>,
}

impl LearnedRules {
    /// Teach the kernel a rule (Some) or take it back (None).
    pub(crate) fn set(&mut self, key: FrameRuleKey, rule: Option<FrameRule>) -> Result<()> {
        put(&mut self.rules, &key, rule.as_ref()).context("cannot fill the frame-rule map")
    }

    /// Teach the kernel a chain with its rules (Some) or take it back (None).
    pub(crate) fn set_chain(&mut self, key: ChainKey, chain: Option<&ChainRules>) -> Result<()> {
        put(&mut self.chains, &key, chain).context("cannot fill the chain map")
    }

    /// Give the kernel a first frame's hint, in its slot (`first_frame_hint_slot`), in place of
    /// whatever the slot held.
    pub(crate) fn set_hint(&mut self, hint: FirstFrameHint) -> Result<()> {
        let slot = first_frame_hint_slot(&hint.first);
        self.hints.set(slot, hint, 0).context("cannot fill the first-frame hint map")
    }
}

/// Insert `key` with `value`, or remove it (None: absent already is fine, its insert having
/// failed, the map being full).
fn put<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    key: &K,
    value: Option<&V>,
) -> Result<(), aya::maps::MapError> {
    match value {
        Some(value) => map.insert(key, value, 0),
        None => {
            let _ = map.remove(key);
            Ok(())
        }
    }
}

/// Sums of the kernel programs' per-CPU counters that userspace reads. Not read: the retired
/// ones (`counter::IN_FLIGHT_FULL`, `USER_STACK_UNREADABLE`: no program counts them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelCounters {
    pub(crate) ringbuf_full: u64,
    pub(crate) stack_collisions: u64,
    pub(crate) stack_errors: u64,
    /// Program runs whose `try_*` body failed (a tracepoint field or helper read failed): the
    /// record they were making never went out.
    pub(crate) program_errors: u64,
    /// Those the report shows as they are.
    pub(crate) shown: KernelCounts,
}

impl KernelCounters {
    /// Records that never reached userspace.
    pub(crate) fn lost(&self) -> u64 {
        self.ringbuf_full + self.program_errors
    }
}

impl Tracer {
    /// Load, configure and attach. Returns the tracer and the ring buffer to read.
    pub(crate) fn start(config: &TraceConfig) -> Result<(Tracer, MapData)> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this binary carries no eBPF programs (built with AYA_BUILD_SKIP=1 or without the ebpf feature); rebuild it with neither"
            );
        }
        checks::check_kernel(&checks::running_kernel_release())?;
        checks::check_bpf_capabilities(checks::own_capabilities())?;
        raise_memlock_limit();
        let tracefs = ensure_tracefs()?;
        for name in SYSCALL_HOOKS {
            if !checks::tracepoint_exists(&tracefs, "raw_syscalls", name) {
                bail!(
                    "this kernel has no raw_syscalls/{name} tracepoint (needs CONFIG_FTRACE_SYSCALLS): cannot trace descriptors"
                );
            }
        }
        let exit_format =
            fs::read_to_string(tracefs.join("events/sched/sched_process_exit/format")).unwrap_or_default();
        let group_dead_offset = checks::tracepoint_field_offset(&exit_format, "group_dead").unwrap_or(0);
        if group_dead_offset == 0 {
            warn!(
                "sched_process_exit has no group_dead field (Linux < 6.14): a leader's exit stands for its group's"
            );
        }

        let kernel = btf::running_kernel_offsets();
        if !kernel.complete() {
            debug!(
                "not all of task_struct.mm, .start_time, .self_exec_id and mm_struct.mm_lock_seq.sequence in {}: a stack's mapping is looked up at every call",
                btf::VMLINUX_BTF
            );
        }
        if !kernel.fd_slots() {
            debug!(
                "not all of task_struct.files, files_struct.fdt and fdtable.fd in {}: a close's number is not read again, and what an open by path opened is guessed from its path and flags",
                btf::VMLINUX_BTF
            );
        } else if !kernel.file_modes() {
            debug!(
                "no file.f_inode or inode.i_mode in {}: what an open by path opened is guessed from its path and flags",
                btf::VMLINUX_BTF
            );
        }
        if kernel.task_mm == 0 || kernel.mm_start_stack == 0 {
            debug!(
                "no task_struct.mm or mm_struct.start_stack in {}: a learned walk copies the stack by the page",
                btf::VMLINUX_BTF
            );
        }
        // Before the programs load, so that they never trace it.
        let wants_uprobes =
            std::env::var_os(FLOOR_ENV).is_none() && config.user_stack_mode != stack_mode::NONE;
        let maker = match wants_uprobes.then(UprobeMaker::spawn) {
            Some(Ok(maker)) => Some(maker),
            Some(Err(err)) => {
                warn!(
                    "cannot start the uprobe maker ({err}): Node.js connections are told by the stack that made their socket"
                );
                None
            }
            None => None,
        };
        let maker_tgid = maker.as_ref().map_or(0, UprobeMaker::pid);
        let settings = config.settings((std::process::id(), maker_tgid), group_dead_offset, kernel);
        // `override_global` is aya 0.14's name of `set_global`.
        let mut loader = EbpfLoader::new();
        loader
            .override_global(SETTINGS_GLOBAL, &settings, true)
            .map_max_entries(map_name::EVENTS, config.ring_buffer_bytes);
        for map in config.unused_maps() {
            loader.map_max_entries(map, 1);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).context("cannot load the eBPF programs")?;

        fill_targets(&mut ebpf, map_name::TARGETS, &config.targets, "the target map")?;
        fill_targets(
            &mut ebpf,
            map_name::TARGET_CGROUPS,
            &config.target_cgroups,
            "the cgroup map (at most 64 --cgroup)",
        )?;
        fill_targets(
            &mut ebpf,
            map_name::TARGET_COMMS,
            &config.target_comms,
            "the name map (at most 64 --comm)",
        )?;
        fill_targets(
            &mut ebpf,
            map_name::TARGET_UIDS,
            &config.target_uids,
            "the uid map (at most 64 --uid)",
        )?;

        let table = SyscallTable::native();
        let mut attached = Vec::new();
        let stacks = config.user_stack_mode != stack_mode::NONE;
        // Which calls the program acts on, by native number: the table's, and close.
        let mut specs: Vec<(u32, &str, u32)> = table
            .specs()
            .map(|(nr, call, call_spec)| {
                (nr, call.name(), if stacks { call_spec } else { call_spec & !spec::STACK })
            })
            .collect();
        specs.push((libc::SYS_close as u32, "close", spec::CLOSE));

        if let Ok(floor) = std::env::var(FLOOR_ENV) {
            attach_floor(&mut ebpf, &tracefs, &floor, &table, &mut attached)?;
        } else {
            // One raw tracepoint for every call, at its exit (ARCHITECTURE.md, Kernel side):
            // one program to attach and detach instead of one per call and direction, and
            // nothing run at any syscall's enter; as a BTF tracepoint where the kernel has BTF.
            let hooks = match std::env::var(SYSCALL_HOOKS_ENV) {
                Ok(hooks) => hooks,
                Err(std::env::VarError::NotPresent) => String::new(),
                Err(err) => bail!("{SYSCALL_HOOKS_ENV}: {err}"),
            };
            let btf = match hooks.as_str() {
                // The twins' loads are x86_64's `pt_regs` (syscalls.rs, `reg`).
                "" if cfg!(target_arch = "x86_64") => Btf::from_sys_fs()
                    .inspect_err(|err| {
                        debug!("the kernel's BTF ({err}): descriptor syscalls seen through raw tracepoints")
                    })
                    .ok(),
                "" | "raw" => None,
                other => bail!("{SYSCALL_HOOKS_ENV}={other}: expected raw"),
            };
            attached.push(attach_syscall_hook(&mut ebpf, "fd_syscall_exit", "sys_exit", btf.as_ref())?);
        }
        let lifecycle = if std::env::var_os(FLOOR_ENV).is_some() { &[][..] } else { &LIFECYCLE[..] };
        for &(program, category, name) in lifecycle {
            if !checks::tracepoint_exists(&tracefs, category, name) {
                warn!(
                    "tracepoint {category}/{name} is missing on this kernel: process lifecycle is followed by reconciliation only"
                );
                continue;
            }
            load_program(&mut ebpf, program)?;
            attach(&mut ebpf, program, category, name, &mut attached)?;
        }

        // Attached per file later, as files with libuv are found (`attach_libuv`).
        let libuv = maker.is_some()
            && match load_libuv_probes(&mut ebpf) {
                Ok(()) => true,
                Err(err) => {
                    warn!("{err:#}: Node.js connections are told by the stack that made their socket");
                    false
                }
            };

        // Only now that every program is attached do the programs start acting on a syscall:
        // the spec array is what turns them on.
        let mut spec_array: Array<_, u32> = Array::try_from(map_mut(&mut ebpf, map_name::SYSCALL_SPECS)?)?;
        for (nr, name, call_spec) in specs {
            spec_array.set(nr, call_spec, 0).with_context(|| format!("cannot configure {name}"))?;
        }

        // Read through its own mappings (sys/ring_pages.rs), not aya's `RingBuf`.
        let Map::RingBuf(events) = take_map(&mut ebpf, map_name::EVENTS)? else {
            bail!("the eBPF object's {} map is not a ring buffer", map_name::EVENTS);
        };
        let stacks = StackTraceMap::try_from(take_map(&mut ebpf, map_name::STACKS)?)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, map_name::COUNTERS)?)?;
        let python = PythonMap(Arc::new(Mutex::new(BpfHashMap::try_from(take_map(
            &mut ebpf,
            map_name::PYTHON_PROCS,
        )?)?)));
        let go = BpfHashMap::try_from(take_map(&mut ebpf, map_name::GO_PROCS)?)?;
        let rules = BpfHashMap::try_from(take_map(&mut ebpf, map_name::FRAME_RULES)?)?;
        let chains = BpfHashMap::try_from(take_map(&mut ebpf, map_name::CHAIN_RULES)?)?;
        let hints = Array::try_from(take_map(&mut ebpf, map_name::FIRST_FRAME_HINTS)?)?;
        let exec_times = BpfHashMap::try_from(take_map(&mut ebpf, map_name::EXEC_TIMES)?)?;
        let notices = RingBuf::try_from(take_map(&mut ebpf, map_name::EXEC_NOTICES)?)?;
        Ok((
            Tracer {
                ebpf,
                stacks,
                python,
                go,
                rules: Some(LearnedRules { rules, chains, hints }),
                exec_times,
                counters,
                attached,
                notices: Some(notices),
                libuv,
                uprobe_maker: maker,
                uprobes: Vec::new(),
            },
            events,
        ))
    }

    /// "category/name" of every tracepoint attached.
    pub(crate) fn attached(&self) -> &[String] {
        &self.attached
    }

    /// The addresses of a captured stack, innermost first.
    pub(crate) fn read_stack(&self, stack_id: u32) -> Option<Vec<u64>> {
        let trace = self.stacks.get(&stack_id, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).filter(|ip| *ip != 0).collect())
    }

    /// Walk the Python frames of `tgid` at its descriptor calls (None: stop). Updating an
    /// open map needs no privilege, so this works after privileges were dropped.
    pub(crate) fn set_python(&mut self, tgid: u32, offsets: Option<PythonOffsets>) -> Result<()> {
        self.python.set(tgid, offsets)
    }

    /// Read the creators of `tgid`'s goroutines at its descriptor calls (None: stop). Like
    /// `set_python`, this needs no privilege.
    pub(crate) fn set_go(&mut self, tgid: u32, offsets: Option<GoOffsets>) -> Result<()> {
        match offsets {
            Some(offsets) => self.go.insert(tgid, offsets, 0).context("cannot fill the Go map")?,
            // Absent already is fine: the kernel drops an entry at the process's exec and exit.
            None => {
                let _ = self.go.remove(&tgid);
            }
        }
        Ok(())
    }

    /// Attach the libuv uprobes to the file `path` opens (for every process that maps it now
    /// or later), at the file offsets of its entry points (`uv_tcp_init` and `uv_tcp_init_ex`,
    /// `uv_tcp_connect`: resolve/modules/libuv.rs); false when they are not loaded (`--stacks
    /// none`, a kernel without uprobes). The uprobes are made by the uprobe maker
    /// (sys/uprobes.rs), which keeps the capability for them (CAP_SYS_ADMIN since Linux 6.16,
    /// CAP_PERFMON before) once the tracer has dropped it: so files found at any time are
    /// attached, a pod's own node started since included. Without that capability this fails
    /// with EACCES.
    pub(crate) fn attach_libuv(&mut self, path: &Path, init: &[u64], connect: u64) -> Result<bool> {
        let Some(maker) = self.uprobe_maker.as_ref().filter(|_| self.libuv) else { return Ok(false) };
        // The file as the tracer has it (`path` is its own link to a pod's file, say).
        let file = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .with_context(|| format!("cannot open {}", path.display()))?;
        let probes: [(&str, &[u64], bool); 3] = [
            // The return probe first: a connect seen entered is then always seen returned.
            ("libuv_tcp_connected", &[connect], true),
            ("libuv_tcp_connect", &[connect], false),
            ("libuv_tcp_init", init, false),
        ];
        for (name, offsets, retprobe) in probes {
            let program = self
                .ebpf
                .program(name)
                .with_context(|| format!("program {name} is missing from the eBPF object"))?
                .fd()?;
            for &offset in offsets {
                let event = maker.make(file.as_fd(), offset, retprobe).with_context(|| {
                    format!("cannot make a uprobe for {name} on {} at {offset:#x}", path.display())
                })?;
                uprobes::attach_program(event.as_fd(), program.as_fd())
                    .with_context(|| format!("cannot attach {name} to {} at {offset:#x}", path.display()))?;
                self.uprobes.push(event);
            }
        }
        Ok(true)
    }

    /// The uprobe maker's pid, if there is one: a process of ours, never traced.
    pub(crate) fn uprobe_maker_pid(&self) -> Option<u32> {
        self.uprobe_maker.as_ref().map(UprobeMaker::pid)
    }

    /// When `tgid` last exec'd as the kernel keeps it (0: not since tracing began).
    pub(crate) fn exec_time(&self, tgid: u32) -> u64 {
        self.exec_times.get(&tgid, 0).unwrap_or(0)
    }

    /// The kernel's unwind rules, for the engine to teach (once).
    pub(crate) fn take_learned_rules(&mut self) -> Option<LearnedRules> {
        self.rules.take()
    }

    /// The Python map, for a thread of our own (the exec lane).
    pub(crate) fn python_map(&self) -> PythonMap {
        self.python.clone()
    }

    /// The exec notices, once (for the exec lane).
    pub(crate) fn take_exec_notices(&mut self) -> Option<Notices> {
        self.notices.take().map(Notices::new)
    }

    /// Runs and run time of each of our programs, as the kernel counts them while its BPF
    /// statistics are on (zero otherwise); a program whose info cannot be read is left out.
    pub(crate) fn program_runs(&self) -> Vec<ProgramRuns> {
        ProgramRuns::by_program(self.ebpf.programs().filter_map(|(name, program)| {
            let info = program.info().ok()?;
            Some(ProgramRuns {
                program: name.to_string(),
                runs: info.run_count(),
                run_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            })
        }))
    }

    pub(crate) fn counters(&self) -> KernelCounters {
        let sum = |index: u32| -> u64 {
            self.counters.get(&index, 0).map(|values| values.iter().sum()).unwrap_or(0)
        };
        KernelCounters {
            ringbuf_full: sum(counter::RINGBUF_FULL),
            stack_collisions: sum(counter::STACK_COLLISION),
            stack_errors: sum(counter::STACK_ERROR),
            program_errors: sum(counter::PROGRAM_ERROR),
            shown: KernelCounts {
                wakeups_forced: sum(counter::WAKEUP_FORCED),
                python_threads_remembered: sum(counter::PYTHON_THREAD_REMEMBERED),
                python_cframes_from_copy: sum(counter::PYTHON_CFRAME_FROM_COPY),
                python_threads_on_stack: sum(counter::PYTHON_THREAD_ON_STACK),
                stacks_copied_ahead: sum(counter::STACKS_COPIED_AHEAD),
                stack_copies_ahead_failed: sum(counter::STACK_COPIES_AHEAD_FAILED),
                first_rules_from_hints: sum(counter::FIRST_RULE_FROM_HINT),
                paths_unreadable: sum(counter::PATH_UNREADABLE),
                pairs_out_of_order: sum(counter::PAIRS_OUT_OF_ORDER),
            },
        }
    }
}

/// The process lifecycle's programs and their tracepoints.
const LIFECYCLE: [(&str, &str, &str); 3] = [
    ("task_newtask", "task", "task_newtask"),
    ("process_exec", "sched", "sched_process_exec"),
    ("process_exit", "sched", "sched_process_exit"),
];

/// The floor (`FLOOR_ENV`): `tracepoints` puts the empty tracepoint program on every
/// `syscalls/sys_enter_X` and `sys_exit_X` of the table and on `sys_enter_close` (the attach
/// set of the per-syscall design); `raw` the empty raw pair (a spec lookup each); `raw-exit`
/// the raw exit with the tracepoint on `sys_enter_close`; `btf` the raw enter with the exit as a
/// BTF tracepoint (`tp_btf`), which loads orig_ax where the raw one calls a helper for it;
/// `btf-exit` that exit alone, the syscall hook the real programs attach (closes are seen at
/// exit: nothing at `sys_enter`).
fn attach_floor(
    ebpf: &mut Ebpf,
    tracefs: &Path,
    floor: &str,
    table: &SyscallTable,
    attached: &mut Vec<String>,
) -> Result<()> {
    let (per_call, raw_enter, raw_exit, btf_exit, close_tp) = match floor {
        "tracepoints" => (true, false, false, false, true),
        "raw" => (false, true, true, false, false),
        "raw-exit" => (false, false, true, false, true),
        "btf" => (false, true, false, true, false),
        "btf-exit" => (false, false, false, true, false),
        other => bail!("{FLOOR_ENV}={other}: expected tracepoints, raw, raw-exit, btf or btf-exit"),
    };
    if per_call || close_tp {
        load_program(ebpf, "floor_tracepoint")?;
    }
    if per_call {
        for (_, call, _) in table.specs() {
            for direction in ["enter", "exit"] {
                let name = format!("sys_{direction}_{}", call.name());
                if checks::tracepoint_exists(tracefs, "syscalls", &name) {
                    attach(ebpf, "floor_tracepoint", "syscalls", &name, attached)?;
                }
            }
        }
    }
    if close_tp {
        attach(ebpf, "floor_tracepoint", "syscalls", "sys_enter_close", attached)?;
    }
    for (program, hook, wanted) in
        [("floor_raw_enter", "sys_enter", raw_enter), ("floor_raw_exit", "sys_exit", raw_exit)]
    {
        if wanted {
            attached.push(attach_raw(ebpf, program, hook)?);
        }
    }
    if btf_exit {
        let btf = Btf::from_sys_fs().context("the kernel's BTF")?;
        attached.push(attach_btf(ebpf, "floor_btf_exit", "sys_exit", &btf)?);
    }
    Ok(())
}

/// Attach `program` to the raw tracepoint `hook` (`sys_enter` or `sys_exit`): as its BTF
/// tracepoint twin (`PROGRAM_btf`, helios-trace-ebpf/src/syscalls.rs) given the kernel's BTF,
/// which reads the saved registers with loads instead of helper calls; else, or when the
/// kernel rejects that one, as the raw tracepoint program. Returns what it attached.
fn attach_syscall_hook(ebpf: &mut Ebpf, program: &str, hook: &str, btf: Option<&Btf>) -> Result<String> {
    if let Some(btf) = btf {
        let twin = format!("{program}{BTF_TWIN_SUFFIX}");
        match attach_btf(ebpf, &twin, hook, btf) {
            Ok(attached) => return Ok(attached),
            Err(err) => {
                // One line (the verifier's log, which may be long, only with RUST_LOG=debug).
                warn!(
                    "{err}: {program} attached as a raw tracepoint instead (a helper call per register read)"
                );
                debug!("{err:#}");
            }
        }
    }
    attach_raw(ebpf, program, hook)
}

/// Load `program` and attach it to the raw tracepoint `hook`; returns what it attached.
fn attach_raw(ebpf: &mut Ebpf, program: &str, hook: &str) -> Result<String> {
    let raw: &mut RawTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} is missing from the eBPF object"))?
        .try_into()?;
    raw.load().with_context(|| format!("the kernel rejected program {program}"))?;
    raw.attach(hook).with_context(|| format!("cannot attach {program} to raw tracepoint {hook}"))?;
    Ok(format!("raw_syscalls/{hook}"))
}

/// Load `program` against the kernel's BTF and attach it as the BTF tracepoint `hook`; returns
/// what it attached.
fn attach_btf(ebpf: &mut Ebpf, program: &str, hook: &str, btf: &Btf) -> Result<String> {
    let typed: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} is missing from the eBPF object"))?
        .try_into()?;
    typed.load(hook, btf).with_context(|| format!("the kernel rejected program {program}"))?;
    if let Err(err) = typed.attach() {
        // Not left loaded beside what is attached instead.
        let _ = typed.unload();
        return Err(err).with_context(|| format!("cannot attach {program} to tp_btf/{hook}"));
    }
    Ok(format!("tp_btf/{hook}"))
}

/// Put each of `keys` in the target hash map `name` (key -> 1), if there are any.
fn fill_targets<K: aya::Pod>(ebpf: &mut Ebpf, name: &str, keys: &[K], what: &str) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut map: BpfHashMap<_, K, u32> = BpfHashMap::try_from(map_mut(ebpf, name)?)?;
    for key in keys {
        map.insert(key, 1, 0).with_context(|| format!("cannot fill {what}"))?;
    }
    Ok(())
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name).with_context(|| format!("the eBPF object has no {name} map"))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name).with_context(|| format!("the eBPF object has no {name} map"))
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} is missing from the eBPF object"))?
        .try_into()?;
    program.load().with_context(|| format!("the kernel rejected program {name}"))
}

fn attach(
    ebpf: &mut Ebpf,
    program: &str,
    category: &str,
    name: &str,
    attached: &mut Vec<String>,
) -> Result<()> {
    let tracepoint: &mut TracePoint = ebpf.program_mut(program).expect("loaded above").try_into()?;
    tracepoint
        .attach(category, name)
        .with_context(|| format!("cannot attach {program} to {category}/{name}"))?;
    attached.push(format!("{category}/{name}"));
    Ok(())
}

/// Load the libuv uprobes (helios-trace-ebpf/src/libuv.rs), to be attached per file.
fn load_libuv_probes(ebpf: &mut Ebpf) -> Result<()> {
    for program in ["libuv_tcp_init", "libuv_tcp_connect", "libuv_tcp_connected"] {
        let probe: &mut UProbe = ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} is missing from the eBPF object"))?
            .try_into()?;
        probe.load().with_context(|| format!("the kernel rejected program {program}"))?;
    }
    Ok(())
}

/// BPF memory is charged to the memory cgroup since Linux 5.11; older kernels count it
/// against RLIMIT_MEMLOCK. Raising the limit needs CAP_SYS_RESOURCE, which containers often
/// lack: warn and go on, loading fails later with a clear error if it really mattered.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "cannot raise RLIMIT_MEMLOCK ({}); fine on Linux >= 5.11, where BPF memory is charged to the cgroup",
            io::Error::last_os_error()
        );
    }
}

/// Where tracefs is, mounting it at /sys/kernel/tracing when nothing is mounted (fresh
/// machines and many containers have it unmounted). aya looks in the same two places.
fn ensure_tracefs() -> Result<PathBuf> {
    for candidate in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(candidate).join("events").is_dir() {
            return Ok(PathBuf::from(candidate));
        }
    }
    // Mounted, but not ours to read: tracefs's root is mode 0700 (fs/tracefs/inode.c mounts it
    // so unless told otherwise), and only root's CAP_DAC_READ_SEARCH (or DAC_OVERRIDE) passes.
    for candidate in [TRACEFS, DEBUGFS_TRACING] {
        if checks::is_tracefs(Path::new(candidate)) {
            let caps = checks::own_capabilities();
            checks::check_tracefs_access(caps, candidate)?;
            bail!("tracefs at {candidate} cannot be read (its events directory is missing or unreadable)");
        }
    }
    let target = CString::new(TRACEFS).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed ({err}); mount it with: mount -t tracefs tracefs {TRACEFS}"
        );
    }
    info!("mounted tracefs at {TRACEFS}");
    Ok(PathBuf::from(TRACEFS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TraceConfig {
        TraceConfig {
            targets: Vec::new(),
            target_cgroups: Vec::new(),
            target_comms: Vec::new(),
            target_uids: Vec::new(),
            user_stack_mode: stack_mode::DWARF,
            stack_window: 4096,
            ring_buffer_bytes: 1 << 24,
            wakeup_bytes: 65536,
            learned_chains: learned_chains::ON,
        }
    }

    #[test]
    fn settings_carry_the_configuration() {
        let kernel = KernelOffsets {
            task_mm: 8,
            task_start_time: 24,
            task_self_exec_id: 32,
            mm_lock_seq: 248,
            ..KernelOffsets::NONE
        };
        let settings = config().settings((42, 43), 24, kernel);
        assert_eq!(
            settings,
            Settings {
                tracer_tgid: 42,
                filter_targets: 0,
                filter_cgroups: 0,
                user_stack_mode: stack_mode::DWARF,
                stack_window: 4096,
                reserved: 0,
                exit_group_dead_offset: 24,
                filter_matches: 0,
                wakeup_bytes: 65536,
                learned_chains: learned_chains::ON,
                uprobe_maker_tgid: 43,
                kernel,
            }
        );
    }

    #[test]
    fn the_maps_a_configuration_never_uses_are_one_entry_long() {
        // The DaemonSet's defaults: every process, dwarf stacks, learned chains.
        assert_eq!(config().unused_maps(), [map_name::STACKS, map_name::TARGETS]);
        let fp = TraceConfig { user_stack_mode: stack_mode::FP, targets: vec![7], ..config() };
        assert_eq!(
            fp.unused_maps(),
            [map_name::FRAME_RULES, map_name::CHAIN_RULES, map_name::FIRST_FRAME_HINTS, map_name::PAIRS]
        );
        let none = TraceConfig { user_stack_mode: stack_mode::NONE, target_uids: vec![0], ..config() };
        assert_eq!(
            none.unused_maps(),
            [
                map_name::STACKS,
                map_name::PYTHON_THREADS,
                map_name::FRAME_RULES,
                map_name::CHAIN_RULES,
                map_name::FIRST_FRAME_HINTS,
                map_name::PAIRS
            ]
        );
        let off = TraceConfig { learned_chains: learned_chains::OFF, target_cgroups: vec![9], ..config() };
        assert_eq!(
            off.unused_maps(),
            [
                map_name::STACKS,
                map_name::TARGETS,
                map_name::FRAME_RULES,
                map_name::CHAIN_RULES,
                map_name::FIRST_FRAME_HINTS,
                map_name::PAIRS
            ]
        );
        // With every chain sent with its window (shadow), no call is kept.
        let shadow = TraceConfig { learned_chains: learned_chains::SHADOW, ..config() };
        assert_eq!(shadow.unused_maps(), [map_name::STACKS, map_name::TARGETS, map_name::PAIRS]);
    }

    #[test]
    fn any_target_list_turns_the_filter_on_and_each_its_own() {
        let on = |s: Settings| (s.filter_targets, s.filter_cgroups, s.filter_matches);
        assert_eq!(
            on(TraceConfig { targets: vec![7], ..config() }.settings((1, 0), 0, KernelOffsets::NONE)),
            (1, 0, 0)
        );
        assert_eq!(
            on(TraceConfig { target_cgroups: vec![9], ..config() }.settings((1, 0), 0, KernelOffsets::NONE)),
            (1, 1, 0)
        );
        let comms = TraceConfig { target_comms: vec![[b'x'; 16]], ..config() }.settings(
            (1, 0),
            0,
            KernelOffsets::NONE,
        );
        assert_eq!(on(comms), (1, 0, filter_match::COMMS));
        let both = TraceConfig { target_comms: vec![[b'x'; 16]], target_uids: vec![0], ..config() }.settings(
            (1, 0),
            0,
            KernelOffsets::NONE,
        );
        assert_eq!(on(both), (1, 0, filter_match::COMMS | filter_match::UIDS));
        assert_eq!(on(config().settings((1, 0), 0, KernelOffsets::NONE)), (0, 0, 0));
    }
}
