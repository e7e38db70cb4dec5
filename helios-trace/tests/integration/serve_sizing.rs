//! Kernel test of `serve`'s sizing: in a memory cgroup limited to 512 MiB (the DaemonSet's
//! limit) and with no caps given, a workload holding a million and a half descriptors makes the
//! descriptor cap bite, counted, while the tracer stays below the limit: no OOM kill.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

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

/// bench/fdhold.c, holding `count` dup'd eventfds once told to (it raises its soft descriptor
/// limit to the hard one, which `count` must fit under).
fn holder(count: usize) -> Child {
    let fdhold = compile_c("../../../bench/fdhold.c", "fdhold", &["-O2", "-Wall"]);
    Command::new(fdhold)
        .args([count.to_string(), "600000".to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("fdhold runs")
}

/// The hard RLIMIT_NOFILE our children inherit (raising it needs CAP_SYS_RESOURCE).
fn hard_nofile() -> usize {
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
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
    let mut children: Vec<Child> = (0..holders).map(|_| holder(per_holder)).collect();
    let cgroup = MemoryCgroup::new(LIMIT);
    // serve from its exec on in the cgroup; caps not given: sized to the limit.
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#])
        .arg(&cgroup.dir)
        .arg(helios_trace_bin());
    let mut args = vec!["--reconcile-interval".to_string(), "5s".to_string()];
    for child in &children {
        args.extend(["--pid".to_string(), child.id().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let serve = Serve::start_with(command, &args);
    for child in &mut children {
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let mut held = 0;
    for child in &mut children {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        // "held N" once every dup is made.
        held +=
            line.trim().strip_prefix("held ").unwrap_or_else(|| panic!("{line:?}")).parse::<usize>().unwrap();
    }
    assert!(held >= 1_500_000, "held {held}");
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
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(serve.stop().success(), "serve ran to the end");
    assert_eq!(cgroup.oom_kills(), 0);
}
