//! From leaked descriptors to the OOM (issue 10): the kernel memory leaked sockets hold, and the
//! projected time until a leaking process hits its descriptor limit, checked against what the
//! kernel itself reports (ss, via sock_diag) and against when EMFILE really happens.
use std::{
    collections::HashMap,
    process::Command,
    time::{Duration, Instant},
};

use crate::support::*;

/// skmem of every TCP socket by inode, from `ss -tmeHn` (iproute2: a sock_diag client that is
/// not ours): r + w + f + o, the same sum helios-trace reports.
fn ss_socket_memory() -> HashMap<u64, u64> {
    let out = Command::new("ss").args(["-tmeHn"]).output().expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // A socket's skmem is on a continuation line: join them.
    let mut sockets: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace) {
            if let Some(last) = sockets.last_mut() {
                last.push_str(line);
            }
        } else {
            sockets.push(line.to_string());
        }
    }
    let field = |skmem: &str, key: &str| -> u64 {
        skmem
            .split(',')
            .find_map(|f| f.strip_prefix(key).filter(|v| v.chars().all(|c| c.is_ascii_digit())))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    sockets
        .iter()
        .filter_map(|s| {
            let inode = s.split_whitespace().find_map(|f| f.strip_prefix("ino:"))?.parse().ok()?;
            let skmem = s.split("skmem:(").nth(1)?.split(')').next()?;
            Some((inode, field(skmem, "r") + field(skmem, "w") + field(skmem, "f") + field(skmem, "o")))
        })
        .collect()
}

fn inode(pid: u32, fd: i64) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    let link = link.to_string_lossy();
    link.trim_start_matches("socket:[").trim_end_matches(']').parse().unwrap()
}

/// The site of `fd` in the report's fd listing, and that site's entry.
fn site_of(report: &serde_json::Value, pid: u32, fd: i64) -> &serde_json::Value {
    let p = process(report, pid).unwrap();
    let label = p["fds"].as_array().unwrap().iter().find(|e| e["fd"] == fd).unwrap()["site"].clone();
    p["sites"].as_array().unwrap().iter().find(|s| s["site"] == label && s["kind"] == "socket").unwrap()
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn leaked_sockets_carry_the_memory_the_kernel_reports() {
    if !require_bpf() {
        return;
    }
    let mut w = Workload::spawn();
    let pid = w.pid;
    let mut tracer = Tracer::start(&["--pid", &pid.to_string(), "--reconcile-interval", "0"]);
    let mut accepted = w.run("unread 4 100000");
    let report = tracer.snapshot();
    let truth = ss_socket_memory();
    let expected: u64 = accepted.iter().map(|fd| truth[&inode(pid, *fd)]).sum();
    let site = site_of(&report, pid, accepted[0]);
    assert_eq!(site["open"], 4, "the accept site holds the 4 sockets: {site:#}");
    let ours = site["socket_memory_bytes"].as_u64().expect("a socket site reports its memory");
    assert!(expected >= 4 * 100_000, "the kernel holds the unread data: {expected}");
    assert!(
        ours.abs_diff(expected) * 10 <= expected,
        "helios-trace {ours} vs kernel {expected}: not within 10%"
    );
    let process_memory = process(&report, pid).unwrap()["resources"]["socket_memory_bytes"].as_u64().unwrap();
    assert!(process_memory >= ours);

    // More leaked sockets with unread data: the figure grows with them.
    accepted.extend(w.run("unread 4 100000"));
    let report = tracer.snapshot();
    let truth = ss_socket_memory();
    let expected: u64 = accepted.iter().map(|fd| truth[&inode(pid, *fd)]).sum();
    let site = site_of(&report, pid, accepted[0]);
    assert_eq!(site["open"], 8);
    let grown = site["socket_memory_bytes"].as_u64().unwrap();
    assert!(grown.abs_diff(expected) * 10 <= expected, "helios-trace {grown} vs kernel {expected}");
    assert!(grown > ours * 3 / 2, "{ours} -> {grown}");
    drop(tracer);
    w.exit();
}

fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn the_projected_time_to_emfile_is_within_20_percent() {
    if !require_bpf() {
        return;
    }
    let mut w = Workload::spawn();
    let pid = w.pid;
    let mut tracer = Tracer::start(&["--pid", &pid.to_string(), "--reconcile-interval", "0"]);
    // 10 descriptors a second, never closed, against a limit of 200: EMFILE in about 19 s.
    w.run("leak-to-limit 10 200");
    std::thread::sleep(Duration::from_secs(8));
    let asked_ns = boot_ns();
    let report = tracer.snapshot();
    let resources = &process(&report, pid).unwrap()["resources"];
    assert_eq!(resources["fd_limit"], 200, "{resources:#}");
    let projected = resources["fd_exhaustion_seconds"].as_f64().unwrap_or_else(|| panic!("{resources:#}"));
    let summary = resources["summary"].as_str().unwrap();
    assert!(summary.contains("the fd limit of 200 is reached in"), "{summary}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let emfile_ns = loop {
        let at = w.run("emfile-at")[0] as u64;
        if at != 0 {
            break at;
        }
        assert!(Instant::now() < deadline, "the workload never hit EMFILE");
        std::thread::sleep(Duration::from_millis(100));
    };
    let actual = (emfile_ns - asked_ns) as f64 / 1e9;
    assert!(
        (projected - actual).abs() <= 0.2 * actual,
        "projected EMFILE in {projected:.1} s, it came in {actual:.1} s"
    );
    drop(tracer);
    w.exit();
}
