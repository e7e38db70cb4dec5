//! Kernel tests of call stacks: a workload with a known chain (tests/workloads/stackwork.c,
//! main -> loop -> handler -> leak_fn -> glibc's open) built -O2 -fomit-frame-pointer -g,
//! traced with the default `--stacks dwarf`; the report must name the chain, the file and the
//! line, for stripped, short-lived and deleted binaries too, and count one site across
//! processes.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::support::*;
use serde_json::Value;

pub fn stackwork_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| compile_c("stackwork.c", "stackwork", &["-O2", "-fomit-frame-pointer", "-g", "-Wall"]))
}

/// A copy of `binary` without any symbols or debug information.
fn stripped_copy(binary: &Path, name: &str) -> PathBuf {
    let out = binary.with_file_name(name);
    let status =
        Command::new("strip").arg("-s").arg("-o").arg(&out).arg(binary).status().expect("strip runs");
    assert!(status.success());
    out
}

/// The line of stackwork.c that carries `marker`: not hard-coded, so editing the workload
/// cannot silently break the test.
fn source_line(marker: &str) -> u64 {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/stackwork.c"))
            .unwrap();
    source.lines().position(|l| l.contains(marker)).unwrap_or_else(|| panic!("no {marker} in stackwork.c"))
        as u64
        + 1
}

/// The sites a process opened under tracing (not before-trace), of files.
fn traced_sites(report: &Value, pid: u32) -> Vec<Value> {
    let process = process(report, pid).unwrap_or_else(|| panic!("pid {pid} not in the report: {report:#}"));
    process["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["site"] != "before-trace" && s["kind"] == "file")
        .cloned()
        .collect()
}

/// The native, not-inlined frames of a site that lie in `module`.
fn frames_in<'a>(site: &'a Value, module: &Path) -> Vec<&'a Value> {
    site["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["language"] == "native" && f["inlined"] == false && f["module"] == module.to_str().unwrap()
        })
        .collect()
}

fn symbols(frames: &[&Value]) -> Vec<String> {
    frames.iter().map(|f| f["symbol"].as_str().unwrap_or("?").to_string()).collect()
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn the_chain_file_and_line_without_frame_pointers() {
    if !require_bpf() {
        return;
    }
    let bin = stackwork_bin();
    let mut first = Workload::spawn_program(bin);
    let mut second = Workload::spawn_program(bin);
    let (a, b) = (first.pid.to_string(), second.pid.to_string());
    let tracer = Tracer::start(&["--pid", &a, "--pid", &b, "--reconcile-interval", "0"]);
    assert_eq!(first.run("leak 3 /etc/hostname").len(), 3);
    assert_eq!(second.run("leak 2 /etc/hostname").len(), 2);
    let report = tracer.stop();

    let sites = traced_sites(&report, first.pid);
    assert_eq!(sites.len(), 1, "{sites:#?}");
    let site = &sites[0];
    assert_eq!((site["open"].as_u64(), site["opened"].as_u64()), (Some(3), Some(3)));
    // Innermost first: glibc's wrapper, then our four functions in order, then the C runtime's
    // start.
    let frames = site["frames"].as_array().unwrap();
    assert!(frames.iter().all(|f| f["language"] == "native"), "{frames:#?}");
    let ours = frames_in(site, bin);
    let names = symbols(&ours);
    assert!(names.len() >= 4, "{frames:#?}");
    assert_eq!(names[..4], ["leak_fn", "handler", "loop", "main"], "{frames:#?}");
    let wrapper = &frames[0];
    assert!(
        wrapper["module"].as_str().unwrap().contains("libc.so"),
        "the syscall was made by glibc's wrapper: {wrapper}"
    );
    // The file and line of the opening call, and of each call up the chain.
    let leak_fn = ours[0];
    assert!(leak_fn["file"].as_str().unwrap().ends_with("tests/workloads/stackwork.c"), "{leak_fn}");
    let lines: Vec<Option<u64>> = ours[..4].iter().map(|f| f["line"].as_u64()).collect();
    let expected = ["LEAK_OPEN", "CALL_LEAK", "CALL_HANDLER", "CALL_LOOP"].map(|m| Some(source_line(m)));
    assert_eq!(lines, expected, "{frames:#?}");
    assert_eq!(site["frame"], format!("leak_fn (stackwork.c:{})", source_line("LEAK_OPEN")));

    // Two processes of one binary leaking at one place: one site, counted in each.
    let other = traced_sites(&report, second.pid);
    assert_eq!(other.len(), 1);
    assert_eq!(other[0]["site"], site["site"], "same code, same site, whatever the addresses");
    assert_ne!(other[0]["frames"][1]["address"], Value::Null);
    let opened: u64 = [site, &other[0]].iter().map(|s| s["opened"].as_u64().unwrap()).sum();
    assert_eq!(opened, 5);
    assert_eq!(report["events"]["stacks_truncated"], 0);
    assert_eq!(report["events"]["stack_errors"], 0);
    first.exit();
    second.exit();
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn stripped_binaries_get_module_and_offset_frames() {
    if !require_bpf() {
        return;
    }
    let bin = stackwork_bin();
    let stripped = stripped_copy(bin, "stackwork.stripped");
    let mut full = Workload::spawn_program(bin);
    let mut bare = Workload::spawn_program(&stripped);
    let (a, b) = (full.pid.to_string(), bare.pid.to_string());
    let tracer = Tracer::start(&["--pid", &a, "--pid", &b, "--reconcile-interval", "0"]);
    // Two call sites of leak_fn in handler: two sites each.
    for work in [&mut full, &mut bare] {
        work.run("leak 2 /etc/hostname");
        work.run("leakone /etc/hostname");
    }
    let report = tracer.stop();

    let (full_sites, bare_sites) = (traced_sites(&report, full.pid), traced_sites(&report, bare.pid));
    assert_eq!(full_sites.len(), 2, "{full_sites:#?}");
    assert_eq!(bare_sites.len(), full_sites.len(), "as many sites without symbols: {bare_sites:#?}");
    for site in &bare_sites {
        let ours = frames_in(site, &stripped);
        assert!(ours.len() >= 4, "the chain is unwound all the same (.eh_frame survives strip): {site:#}");
        for frame in &ours {
            assert_eq!(frame["symbol"], Value::Null, "{frame}");
            assert_eq!(frame["file"], Value::Null, "{frame}");
            assert!(frame["offset"].as_str().unwrap().starts_with("0x"), "module + offset: {frame}");
        }
        let label = site["frame"].as_str().unwrap();
        assert!(label.starts_with("stackwork.stripped+0x"), "{label}");
        // The file offsets are those of the same code in the unstripped binary.
        let offsets: Vec<&Value> = ours.iter().map(|f| &f["offset"]).collect();
        assert!(
            full_sites
                .iter()
                .any(|s| frames_in(s, bin).iter().map(|f| &f["offset"]).eq(offsets.iter().copied())),
            "{offsets:?}"
        );
    }
    assert_eq!(report["events"]["stack_errors"], 0);
    full.exit();
    bare.exit();
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_process_that_exited_still_resolves() {
    if !require_bpf() {
        return;
    }
    // The binary runs from a file deleted after it started (a deploy replaced it): its
    // modules are reached through /proc/PID/map_files, not by path.
    let dir = tempfile::tempdir().unwrap();
    let doomed = dir.path().join("stackwork-v1");
    std::fs::copy(stackwork_bin(), &doomed).unwrap();
    let mut parent = Workload::spawn_program(&doomed);
    std::fs::remove_file(&doomed).unwrap();
    let pid = parent.pid.to_string();
    let mut tracer = Tracer::start(&["--pid", &pid, "--reconcile-interval", "0"]);
    // A child leaks through the chain, hands the descriptor to a grandchild and exits at once:
    // its record is read after it is gone, with the maps inherited at fork.
    let grandchild = parent.run("forkleak /etc/hostname")[0] as u32;
    let _reap = KillOnDrop(grandchild);
    let report = tracer.snapshot();

    let sites = traced_sites(&report, grandchild);
    assert_eq!(sites.len(), 1, "the grandchild holds the descriptor its parent opened: {report:#}");
    let site = &sites[0];
    assert_eq!(site["open"], 1);
    let fds = process(&report, grandchild).unwrap()["fds"].as_array().unwrap();
    assert!(fds.iter().any(|f| f["site"] == site["site"] && f["inherited"] == true));
    let ours = frames_in(site, &doomed);
    assert_eq!(symbols(&ours)[..4], ["leak_fn", "handler", "loop", "main"], "{site:#}");
    assert_eq!(ours[0]["line"].as_u64(), Some(source_line("LEAK_OPEN")), "{site:#}");
    assert_eq!(ours[1]["line"].as_u64(), Some(source_line("CALL_FORKLEAK")), "{site:#}");
    tracer.stop();
    parent.exit();
}

/// Kills a process the test did not spawn itself (a workload's grandchild) when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        signal(self.0, libc::SIGKILL);
    }
}

fn mapwork_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| compile_c("mapwork.c", "mapwork", &["-O2", "-fomit-frame-pointer", "-g", "-Wall"]))
}

/// The kernel keeps the stack mapping it found last per CPU and takes it again while the mm's
/// mapping sequence is unchanged (helios-trace-ebpf's stacks.rs, `stack_mapping_end`). A
/// mapping replaced by a larger one at the same address must be found again: mapwork opens a
/// file on a 16 KiB stack mapping of its own, replaces it by 20 KiB at the same address, and opens
/// another with the call's stack pointer below the old end and its callers' return addresses
/// above it, on the same CPU. Taken as ending where it did, the second chain would be cut after
/// the opening frame; found again, it runs up to the entry of the stack.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_stack_mapping_that_changed_is_found_again() {
    if !require_bpf() {
        return;
    }
    let bin = mapwork_bin();
    let mut workload = Workload::spawn_program(bin);
    let pid = workload.pid.to_string();
    let tracer = Tracer::start(&["--pid", &pid, "--reconcile-interval", "0"]);
    assert_eq!(workload.run("remap /etc/hostname /etc/passwd").len(), 2);
    let report = tracer.stop();

    let sites = traced_sites(&report, workload.pid);
    let names: Vec<Vec<String>> = sites.iter().map(|s| symbols(&frames_in(s, bin))).collect();
    assert_eq!(sites.len(), 2, "{names:?}");
    let on = |entry: &str| {
        names
            .iter()
            .find(|n| n.contains(&entry.to_string()))
            .unwrap_or_else(|| panic!("no site with {entry}: {names:?}: {report:#}"))
            .clone()
    };
    assert_eq!(on("first_entry"), ["open_here", "first_entry"]);
    assert_eq!(on("remapped_entry"), ["open_here", "straddle", "remapped_entry"]);
    // (glibc's __start_context, above each entry, ends a chain as a cut one: not counted here.)
    assert_eq!(report["events"]["stack_errors"], 0, "{}", report["events"]);
    workload.exit();
}
