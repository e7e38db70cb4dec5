//! Kernel tests of `serve`'s sizing: in a memory cgroup limited to 512 MiB (the DaemonSet's
//! limit) and with no caps given, a workload holding a million and a half descriptors makes the
//! descriptor cap bite, counted, while the tracer stays below the limit: no OOM kill. And the
//! kernel's maps, charged to the same cgroup, take room only for what the configuration uses.
use std::{fs, path::PathBuf, process::Command, time::Duration};

use crate::support::*;

const LIMIT: u64 = 512 << 20;

/// A memory cgroup of our own with a limit, in the hierarchy that controls our memory (v1's
/// memory controller on a hybrid host, else v2); removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
    v1: bool,
}

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let v1 =
            own.lines().any(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == "memory")));
        let name = format!("helios-trace-sizing-{}", std::process::id());
        let dir = if v1 {
            PathBuf::from("/sys/fs/cgroup/memory").join(name)
        } else {
            let root = if PathBuf::from("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
                PathBuf::from("/sys/fs/cgroup/unified")
            } else {
                PathBuf::from("/sys/fs/cgroup")
            };
            root.join(name)
        };
        fs::create_dir_all(&dir).unwrap();
        let file = if v1 { "memory.limit_in_bytes" } else { "memory.max" };
        fs::write(dir.join(file), limit.to_string()).unwrap();
        MemoryCgroup { dir, v1 }
    }

    /// OOM kills in the cgroup so far (v1 memory.oom_control, v2 memory.events).
    fn oom_kills(&self) -> u64 {
        let file = if self.v1 { "memory.oom_control" } else { "memory.events" };
        let text = fs::read_to_string(self.dir.join(file)).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .map(|n| n.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no oom_kill in {file}: {text}"))
    }

    /// The most the cgroup ever used (v1 max_usage_in_bytes, v2 memory.peak).
    fn peak(&self) -> u64 {
        let file = if self.v1 { "memory.max_usage_in_bytes" } else { "memory.peak" };
        fs::read_to_string(self.dir.join(file)).unwrap().trim().parse().unwrap()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn under_a_512m_limit_the_caps_bite_before_the_oom_killer_does() {
    if !require_bpf() {
        return;
    }
    // Spread over as many processes as the descriptor limit asks (the bench does the same).
    let per_holder = hard_nofile() - 100;
    let holders = 1_500_000usize.div_ceil(per_holder);
    let _many = holding_many_descriptors();
    let mut children: Vec<Holder> = (0..holders).map(|_| Holder::spawn(per_holder)).collect();
    let cgroup = MemoryCgroup::new(LIMIT);
    // serve from its exec on in the cgroup; caps not given: sized to the limit.
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#])
        .arg(&cgroup.dir)
        .arg(helios_trace_bin());
    let mut args = vec!["--reconcile-interval".to_string(), "5s".to_string()];
    for child in &children {
        args.extend(["--pid".to_string(), child.pid().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let serve = Serve::start_with(command, &args);
    // One holder at a time, as the memory bench goes: what is measured is the caps, not a
    // burst. Dozens of processes first seen at once, each then duplicating at full speed before
    // its chain is learned, overflow the ring (counted as lost: BENCHMARKS.md, "Throughput:
    // what limits it").
    for child in &mut children {
        child.hold();
    }
    let held = holders * per_holder;
    // The cap serve derives for 512 MiB with the default 16 MiB ring buffer and twice as much
    // held by the reader (README, "Sizing"; model/sizing.rs): reached, and what is beyond counted.
    const CAP: f64 = 1_132_461.0;
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let (tracked, dropped) = loop {
        let metrics = serve.metrics();
        let tracked = exposition_series(&metrics, "helios_trace_tracked_fds").get("").copied().unwrap_or(0.0);
        let dropped = exposition_series(&metrics, "helios_trace_dropped_total");
        let dropped_fds = dropped.get(r#"{what="fds"}"#).copied().unwrap_or(0.0);
        if tracked == CAP && dropped_fds > 0.0 {
            break (tracked, dropped_fds);
        }
        last = format!(
            "tracked {tracked}, dropped {dropped:?}, lost {:?}",
            exposition_series(&metrics, "helios_trace_events_lost_total")
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the descriptor cap {CAP} was not reached in 90 s: {last}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = last;
    assert_eq!(cgroup.oom_kills(), 0);
    // The cgroup's peak counts page cache too (v1), which the kernel reclaims at the limit
    // rather than kill: what must stay below the limit is the tracer's own anonymous memory.
    let peak = cgroup.peak();
    let status = fs::read_to_string(format!("/proc/{}/status", serve.pid())).unwrap();
    let anon_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no RssAnon in {status}"));
    assert!(anon_kib << 10 < LIMIT / 4 * 3, "the tracer holds {} MiB of anonymous memory", anon_kib >> 10);
    eprintln!(
        "held {held}: tracked {tracked}, dropped {dropped}; the tracer's RssAnon {} MiB, the cgroup's peak {} MiB of {} MiB",
        anon_kib >> 10,
        peak >> 20,
        LIMIT >> 20
    );
    drop(children);
    assert!(serve.stop().success(), "serve ran to the end");
    assert_eq!(cgroup.oom_kills(), 0);
}

/// Each eBPF map `pid` holds, from /proc/PID/fdinfo (kernel/bpf/syscall.c,
/// bpf_map_show_fdinfo): (map_type, max_entries, memlock bytes).
fn maps_of(pid: u32) -> Vec<(u32, u32, u64)> {
    let mut maps = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(info) = fs::read_to_string(entry.unwrap().path()) else { continue };
        let field = |name: &str| {
            info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(kind), Some(entries), Some(memlock)) =
            (field("map_type:"), field("max_entries:"), field("memlock:"))
        {
            maps.push((kind as u32, entries as u32, memlock));
        }
    }
    maps
}

/// include/uapi/linux/bpf.h, enum bpf_map_type.
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_STACK_TRACE: u32 = 7;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;
const TARGET_ENTRIES: u32 = helios_trace_common::TARGET_ENTRIES;

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn the_kernel_maps_take_room_only_for_what_the_configuration_uses() {
    if !require_bpf() {
        return;
    }
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    // The DaemonSet's configuration: every process, dwarf stacks learned into chains. No
    // stack-trace map (`--stacks fp`'s) and no target map (`--pid` and the other filters').
    let serve = Serve::start(&[]);
    let maps = maps_of(serve.pid());
    assert!(maps.len() >= 20, "{maps:?}");
    let stack_trace: Vec<_> = maps.iter().filter(|m| m.0 == BPF_MAP_TYPE_STACK_TRACE).collect();
    assert_eq!(stack_trace.iter().map(|m| m.1).collect::<Vec<_>>(), [1], "{maps:?}");
    let besides_rings: u64 = maps.iter().filter(|m| m.0 != BPF_MAP_TYPE_RINGBUF).map(|m| m.2).sum();
    // Measured 11.0 MiB on a 2-CPU machine (BENCHMARKS.md, "Kernel memory"), 32.3 MiB before;
    // 14.0 MiB before the slots of the calls kept in the kernel (`PAIRS`, 1,024 of 992 bytes,
    // 0.97 MiB) were added: 14.9 (BENCHMARKS.md, "Opens matched with their closes in the
    // kernel"), 8 KiB more with their keys (1,000 bytes a slot); the per-CPU maps add about
    // 50 KiB a CPU.
    let bound = (15 << 20) + 64 * 1024 * std::thread::available_parallelism().unwrap().get() as u64;
    assert!(besides_rings < bound, "the maps take {:.1} MiB besides the rings: {maps:?}", mib(besides_rings));
    eprintln!("serve's maps: {:.1} MiB besides the rings", mib(besides_rings));
    let of_target_size = |maps: &[(u32, u32, u64)]| {
        maps.iter().filter(|m| m.0 == BPF_MAP_TYPE_HASH && m.1 == TARGET_ENTRIES).count()
    };
    let default_of_target_size = of_target_size(&maps);
    assert!(serve.stop().success());

    // `--stacks fp --pid`: the stack-trace map and the target map at their size; no rules.
    let serve = Serve::start(&["--stacks", "fp", "--pid", &std::process::id().to_string()]);
    let maps = maps_of(serve.pid());
    let sizes = |kind: u32| {
        let mut sizes: Vec<u32> = maps.iter().filter(|m| m.0 == kind).map(|m| m.1).collect();
        sizes.sort_unstable();
        sizes
    };
    assert_eq!(sizes(BPF_MAP_TYPE_STACK_TRACE), [helios_trace_common::STACK_ENTRIES], "{maps:?}");
    // The target map at its size: one more hash map of that size than serve's defaults had
    // (another map may have as many entries).
    assert_eq!(of_target_size(&maps), default_of_target_size + 1, "{maps:?}");
    assert!(!sizes(BPF_MAP_TYPE_HASH).contains(&helios_trace_common::FRAME_RULE_ENTRIES), "{maps:?}");
    assert!(serve.stop().success());
}
