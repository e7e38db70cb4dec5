//! Holds under load and churn (issue 9): an open/close flood from several processes and
//! thousands of short-lived processes. The tracer stays responsive, counts every record it
//! could not take, heals its tables within a reconcile interval, and gives its memory back.
use std::time::{Duration, Instant};

use crate::support::*;

/// The tracer's own (anonymous) memory: heap and stacks, not the ring buffer's shared
/// mapping, whose pages stay resident once the kernel has written them.
fn anon_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/PID/status")
}

/// Anonymous memory by mapping (`/proc/PID/smaps`): start address and name, to kB. A memory
/// assertion that fails says where the memory grew.
fn anon_by_mapping(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by_mapping = std::collections::BTreeMap::new();
    let mut mapping = String::new();
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Anonymous:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if kb > 0 {
                by_mapping.insert(mapping.clone(), kb);
            }
        } else if line.split_whitespace().next().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
            let mut fields = line.split_whitespace();
            let range = fields.next().unwrap_or_default();
            let start = range.split('-').next().unwrap_or_default();
            mapping = format!("{start} {}", fields.nth(4).unwrap_or("[anon]"));
        }
    }
    by_mapping
}

/// The mappings whose anonymous memory grew from `before` to `after`, largest growth first.
fn grown_mappings(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> String {
    let mut grown: Vec<(i64, &String)> = after
        .iter()
        .map(|(mapping, kb)| (*kb as i64 - before.get(mapping).copied().unwrap_or(0) as i64, mapping))
        .filter(|(growth, _)| *growth > 0)
        .collect();
    grown.sort_by(|a, b| b.cmp(a));
    grown.iter().take(12).map(|(growth, mapping)| format!("+{growth} kB {mapping}\n")).collect()
}

/// Let the tracer settle (first samples, first reconciliation), then read its memory.
fn settled_memory(tracer: &mut Tracer) -> u64 {
    tracer.snapshot();
    std::thread::sleep(Duration::from_secs(3));
    tracer.snapshot();
    anon_rss_kb(tracer.pid())
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_flood_is_survived_counted_and_healed() {
    if !require_bpf() {
        return;
    }
    let mut floods = [Workload::spawn(), Workload::spawn()];
    let pids: Vec<String> = floods.iter().map(|w| w.pid.to_string()).collect();
    let mut tracer = Tracer::start(&["--pid", &pids[0], "--pid", &pids[1], "--reconcile-interval", "2s"]);
    // A first, short churn: what the flood's stacks need (their modules parsed, their symbols
    // read) is cached for good, bounded; the flood itself must not add to it.
    for w in &mut floods {
        w.run("churn-bg 0 0 0");
        std::thread::sleep(Duration::from_millis(200));
        w.run("churn-stop");
    }
    let before = settled_memory(&mut tracer);
    let mappings_before = anon_by_mapping(tracer.pid());
    // A call's record received or lost, or the call matched in the kernel with its pair's
    // (helios-trace-ebpf/src/pairs.rs: `calls_paired` counts the opens, each with its close).
    let counted = |report: &serde_json::Value| {
        let events = &report["events"];
        events["received"].as_u64().unwrap()
            + events["lost"].as_u64().unwrap()
            + 2 * events["calls_paired"].as_u64().unwrap()
    };
    let counted_before = counted(&tracer.snapshot());
    for w in &mut floods {
        // As fast as the machine goes: open + close in a tight loop.
        w.run("churn-bg 0 0 0");
    }
    let flood_end = Instant::now() + Duration::from_secs(20);
    let mut slowest = Duration::ZERO;
    while Instant::now() < flood_end {
        std::thread::sleep(Duration::from_secs(2));
        let asked = Instant::now();
        tracer.snapshot();
        slowest = slowest.max(asked.elapsed());
    }
    assert!(slowest < Duration::from_secs(5), "a report took {slowest:?} during the flood");
    let opens: u64 = floods.iter_mut().map(|w| w.run("churn-stop")[0] as u64).sum();
    // Within a few reconcile intervals the tables are exact again (the records the ring could
    // not take were counted lost; reconciliation is what heals them here).
    let truths: Vec<_> = floods.iter().map(|w| proc_fds(w.pid)).collect();
    let report = wait_for("the tables healed", Duration::from_secs(20), || {
        let report = tracer.snapshot();
        floods
            .iter()
            .zip(&truths)
            .all(|(w, truth)| reported_fds_healed(&report, w.pid) == *truth)
            .then_some(report)
    });
    // Every open and every close of the flood is a record, received or counted lost, or one of
    // a pair the kernel matched (`received` does not count a record of pairs alone, which
    // stands for no call of its own).
    let records = counted(&report) - counted_before;
    let lost = report["events"]["lost"].as_u64().unwrap();
    let paired = report["events"]["calls_paired"].as_u64().unwrap();
    eprintln!(
        "flood: {opens} open+close pairs in 20 s; {records} records received or lost or calls paired \
         ({lost} lost in all, {paired} pairs matched in the kernel)"
    );
    assert!(opens > 1_000_000, "not a flood: {opens} open+close pairs in 20 s");
    assert!(records >= 2 * opens, "{records} < 2 x {opens}: records vanished");
    assert!(records <= 2 * opens + 20_000, "{records} records for {opens} pairs");
    let after = anon_rss_kb(tracer.pid());
    let grown = grown_mappings(&mappings_before, &anon_by_mapping(tracer.pid()));
    eprintln!("tracer memory (RssAnon): {before} kB before, {after} kB after the flood; grown:\n{grown}");
    assert!(after * 10 <= before * 11 + 1024, "memory did not come back: {before} kB -> {after} kB");
    drop(tracer);
    for w in floods {
        w.exit();
    }
}

/// Reconciliation reads /proc while the process opens and closes: a descriptor that changed
/// while it was being read must be left alone, never "corrected". A churn the ring keeps up
/// with (nothing lost) and a reconcile every 100 ms: not one correction in the whole run, and
/// the table, the site's opens and /proc agree exactly at the end. (Without the skip of
/// descriptors touched meanwhile, engine.rs `finish_reconcile`, this run makes several.)
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn reconciling_during_a_churn_corrects_nothing() {
    if !require_bpf() {
        return;
    }
    let mut w = Workload::spawn();
    // Frame-pointer stacks and a large ring: small records and seconds of them held, so nothing
    // is lost even when the machine is busy and the reader late (this test is about
    // reconciliation, not stacks).
    let pid = w.pid.to_string();
    let args =
        ["--pid", &pid, "--reconcile-interval", "100ms", "--stacks", "fp", "--ring-buffer-size", "128M"];
    let mut tracer = Tracer::start(&args);
    // Up to 200,000 opens a second in bursts, 50 kept and one more kept every 100 ms: the table moves
    // all the time under every reconcile, and /proc often catches a descriptor of the churn
    // open that is closed before the reconcile ends.
    w.run("churn-bg 200000 100 50");
    let end = Instant::now() + Duration::from_secs(8);
    while Instant::now() < end {
        let report = tracer.snapshot();
        assert_eq!(report["events"]["lost"], 0, "the churn is meant to fit the ring");
        assert_eq!(report["reconcile_corrections"], serde_json::json!({"added": 0, "removed": 0}));
        std::thread::sleep(Duration::from_millis(500));
    }
    let opens = w.run("churn-stop")[0] as u64;
    let truth = proc_fds(w.pid);
    let report = wait_for("every record of the churn", Duration::from_secs(20), || {
        let report = tracer.snapshot();
        (reported_fds(&report, w.pid) == truth).then_some(report)
    });
    let opened: u64 = process(&report, w.pid).unwrap()["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "file" && s["site"] != "before-trace")
        .map(|s| s["opened"].as_u64().unwrap())
        .sum();
    assert_eq!(opened, opens, "every open of the churn, once");
    assert!(opens > 50_000, "a churn of {opens} opens");
    let report = tracer.stop();
    assert_eq!(report["events"]["lost"], 0);
    assert_eq!(report["reconcile_corrections"], serde_json::json!({"added": 0, "removed": 0}));
    w.exit();
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn ten_thousand_short_lived_processes_leave_nothing_behind() {
    if !require_bpf() {
        return;
    }
    let mut w = Workload::spawn();
    let mut tracer = Tracer::start(&["--pid", &w.pid.to_string(), "--reconcile-interval", "0"]);
    // A few first: the stacks' modules and symbols are cached (bounded) before measuring.
    assert_eq!(w.run("spawn-churn 20")[0], 0);
    let before = settled_memory(&mut tracer);
    // Twice 10,000: the first fills what is kept by design, bounded (the frames of up to 1,024
    // sites of processes gone before their maps could be read: the exec'd children here);
    // the second must then add nothing.
    let mut after = Vec::new();
    for round in 1..=2 {
        assert_eq!(w.run("spawn-churn 10000")[0], 0, "every child ran");
        let report = tracer.snapshot();
        let pids: Vec<u64> =
            report["processes"].as_array().unwrap().iter().map(|p| p["pid"].as_u64().unwrap()).collect();
        assert_eq!(pids, vec![w.pid as u64], "round {round}: no entry survives its process");
        // Each child: a task, an open, an exit (and an exec for one in ten).
        let received = report["events"]["received"].as_u64().unwrap();
        assert!(received >= round * 30_000, "{received} records for {round} x 10,000 processes");
        assert_eq!(reported_fds(&report, w.pid), proc_fds(w.pid));
        after.push(settled_memory(&mut tracer));
    }
    eprintln!("tracer memory (RssAnon): {before} kB before, {after:?} kB after each 10,000 processes");
    assert!(after[0] <= before + 4096, "more than the bounded caches: {before} kB -> {} kB", after[0]);
    assert!(after[1] * 10 <= after[0] * 11, "memory grew with processes: {after:?} kB");
    drop(tracer);
    w.exit();
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn the_exporter_answers_scrapes_through_a_flood_and_heals() {
    if !require_bpf() {
        return;
    }
    let mut floods = [Workload::spawn(), Workload::spawn()];
    let pids: Vec<String> = floods.iter().map(|w| w.pid.to_string()).collect();
    let serve = Serve::start(&["--pid", &pids[0], "--pid", &pids[1], "--reconcile-interval", "2s"]);
    let sum = |text: &str, name: &str, labels: &[&str]| -> f64 {
        let series = exposition_series(text, name);
        labels.iter().map(|l| series.get(*l).copied().unwrap_or(0.0)).sum()
    };
    for w in &mut floods {
        w.run("churn-bg 0 0 0");
        std::thread::sleep(Duration::from_millis(200));
        w.run("churn-stop");
    }
    std::thread::sleep(Duration::from_secs(3));
    serve.metrics();
    let before = anon_rss_kb(serve.pid());
    let mappings_before = anon_by_mapping(serve.pid());
    let counted_in = |text: &str| {
        sum(text, "helios_trace_events_total", &[r#"{event="open"}"#, r#"{event="close"}"#])
            + sum(text, "helios_trace_events_lost_total", &[""])
    };
    let start = counted_in(&serve.metrics());
    for w in &mut floods {
        w.run("churn-bg 0 0 0");
    }
    let flood_end = Instant::now() + Duration::from_secs(15);
    let mut slowest = Duration::ZERO;
    while Instant::now() < flood_end {
        std::thread::sleep(Duration::from_secs(1));
        // The engine's thread (the runtime's block_on: its tid is the pid) stopped for a while,
        // as on a node whose CPUs are busy: meanwhile the emptier fills its hold, and the engine
        // then handles a whole ring and hold in one drain. The transitions kept for the exporter
        // until the drain's end reached 157,000 then (observe/session.rs, `drain_then`), and
        // twice in CI, with the suite's other tests running, memory stayed 7 and 8 MB up.
        // (Resumed before the scrape: stopped anywhere, the thread may hold a lock the server's
        // threads then wait for, which a busy CPU only delays; a scrape once waited 10 s so.)
        let stopped = StoppedThread::stop(serve.pid());
        std::thread::sleep(Duration::from_millis(300));
        drop(stopped);
        let asked = Instant::now();
        assert_eq!(serve.get("/healthz"), (200, "ok\n".to_string()), "healthy during the flood");
        serve.metrics();
        slowest = slowest.max(asked.elapsed());
    }
    assert!(slowest < Duration::from_secs(2), "a scrape took {slowest:?} during the flood");
    let opens: u64 = floods.iter_mut().map(|w| w.run("churn-stop")[0] as u64).sum();
    // Every open and close of the flood was received or counted lost; then the tables heal.
    let truth: f64 = floods.iter().map(|w| proc_fds(w.pid).len() as f64).sum();
    assert!(opens > 1_000_000, "not a flood: {opens} open+close pairs in 15 s");
    // A snapshot is published once a second, while the ring may still hold the flood's tail
    // (the open+close pairs leave the tables as they were): wait for every record.
    let text = wait_for("every record counted and the tables healed", Duration::from_secs(30), || {
        let text = serve.metrics();
        let healed = sum(&text, "helios_trace_tracked_fds", &[""]) == truth;
        (healed && counted_in(&text) - start >= 2.0 * opens as f64).then_some(text)
    });
    let counted = counted_in(&text) - start;
    eprintln!("serve flood: {opens} open+close pairs in 15 s; {counted} records received or lost");
    assert!(counted <= 2.0 * opens as f64 + 20_000.0, "{counted} records for {opens} pairs");
    std::thread::sleep(Duration::from_secs(3));
    serve.metrics();
    let after = anon_rss_kb(serve.pid());
    let grown = grown_mappings(&mappings_before, &anon_by_mapping(serve.pid()));
    eprintln!("exporter memory (RssAnon): {before} kB before, {after} kB after the flood; grown:\n{grown}");
    assert!(after * 10 <= before * 11 + 1024, "memory did not come back: {before} kB -> {after} kB");
    for w in floods {
        w.exit();
    }
    assert!(serve.stop().success());
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn hostile_names_are_escaped_and_cut_in_text_json_and_metrics() {
    if !require_bpf() {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let scratch = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workloads/hostile_names.py");
    let mut hostile = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(scratch.path())
        .arg("arg\nPID 1 forged")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = hostile.id().to_string();
    let mut said = BufReader::new(hostile.stdout.take().unwrap());
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let json = Tracer::start(&["--pid", &pid]);
    // Each session is attached before the workload opens anything.
    let (text, text_stderr) = spawn_attached(
        Command::new(helios_trace_bin())
            .args(["--pid", &pid, "--format", "text", "--list-fds", "--duration", "4s"])
            .stdout(Stdio::piped()),
    );
    let serve = Serve::start(&["--pid", &pid]);
    let mut tell = hostile.stdin.take().unwrap();
    writeln!(tell).unwrap();
    line.clear();
    said.read_line(&mut line).unwrap();
    assert!(line.starts_with("opened "), "{line}");

    let forged = |out: &str| out.lines().any(|l| l.trim_start().starts_with("PID 1 forged"));
    // What the tool wrote, not a re-serialization (serde would escape a raw newline again).
    let rendered = json.stop_text();
    assert!(!forged(&rendered), "a name forged a line of the JSON report:\n{rendered}");
    let report: serde_json::Value = serde_json::from_str(&rendered).unwrap();
    let process = process(&report, hostile.id()).expect("reported");
    let comm = process["comm"].as_str().unwrap();
    assert!(comm.contains("\\n") && !comm.contains('\n'), "comm {comm:?}");
    let cmdline = process["cmdline"].as_str().unwrap();
    assert!(cmdline.contains("arg\\nPID 1 forged") && !cmdline.contains('\n'), "cmdline {cmdline:?}");
    // The paths of the descriptors the site's examples show.
    let details: Vec<&str> = process["sites"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|site| site["examples"].as_array().unwrap())
        .filter_map(|example| example["detail"].as_str())
        .collect();
    let evil = details.iter().find(|d| d.contains("evil")).unwrap_or_else(|| panic!("{rendered}"));
    assert!(evil.ends_with("evil\\nPID 1 forged\u{fffd}.txt"), "path {evil:?}");
    let long = details.iter().find(|d| d.contains("ddddd")).unwrap_or_else(|| panic!("{rendered}"));
    assert!(long.ends_with("…[truncated]") && long.chars().count() < 600, "path {long:?}");

    let out = text.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", text_stderr.try_iter().collect::<Vec<_>>());
    let out = String::from_utf8(out.stdout).expect("the text report is UTF-8");
    assert!(out.contains("\\n"), "{out}");
    assert!(!forged(&out), "a name forged a line of the text report:\n{out}");

    let metrics = serve.metrics();
    assert!(!forged(&metrics), "a name forged a line of the exposition:\n{metrics}");
    let open = exposition_series(&metrics, "helios_trace_open_fds");
    assert!(open.keys().any(|labels| labels.contains(r#"comm="ev\\nPID 1 forge""#)), "{open:?}");
    assert!(serve.stop().success());
    writeln!(tell).unwrap();
    hostile.wait().unwrap();
}

/// The interpreters of the churn: Debian's (static), every pyenv CPython with a shared
/// libpython (as container images build it: the case where the daemon grew by 74 MB a minute),
/// and native jobs.
fn churn_interpreters() -> Vec<String> {
    let mut found = vec!["/usr/bin/python3".to_string(), "native".to_string()];
    let pyenv = std::path::Path::new("/root/.pyenv/versions");
    let mut shared: Vec<String> = std::fs::read_dir(pyenv)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|dir| {
            let minor =
                dir.file_name().and_then(|n| n.to_str()?.strip_prefix("3.")?.split('.').next()?.parse().ok());
            minor.is_some_and(|m: u32| (10..=13).contains(&m))
                && std::fs::read_dir(dir.join("lib")).is_ok_and(|mut files| {
                    files.any(|f| f.is_ok_and(|f| f.file_name().to_string_lossy().starts_with("libpython3")))
                })
        })
        .map(|dir| dir.join("bin/python3").to_string_lossy().into_owned())
        .collect();
    shared.sort();
    assert!(
        !shared.is_empty(),
        "no CPython with a shared libpython under {}: the soak needs one",
        pyenv.display()
    );
    found.extend(shared);
    found
}

fn median_kb(samples: &[(f64, u64)], from: f64, to: f64) -> u64 {
    let mut window: Vec<u64> =
        samples.iter().filter(|(t, _)| (from..to).contains(t)).map(|(_, kb)| *kb).collect();
    assert!(!window.is_empty(), "no sample between {from} s and {to} s");
    window.sort_unstable();
    window[window.len() / 2]
}

/// Issue 17: short-lived jobs, ten a second, each running a script of its own (new Python
/// call sites with every job) in interpreters with a shared libpython among them, next to
/// native jobs. The exporter's memory after warm-up stays flat: the frames and series of
/// gone jobs' sites are forgotten after the retention. (`cargo xtask bench soak` measures the
/// slope over longer; before the fix this grew by 15 to 74 MB a minute.)
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn job_churn_leaves_the_exporters_memory_flat() {
    if !require_bpf() {
        return;
    }
    const SECONDS: u64 = 180;
    let jobs_dir = tempfile::tempdir().unwrap();
    let driver = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/jobchurn.py");
    let mut churn = std::process::Command::new("/usr/bin/python3")
        .arg(&driver)
        .args([&SECONDS.to_string(), "10", jobs_dir.path().to_str().unwrap()])
        .args(churn_interpreters())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("bench/jobchurn.py starts");
    let serve = Serve::start(&["--pid", &churn.id().to_string(), "--retention", "20s"]);
    use std::io::Write as _;
    churn.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut python_sites = 0;
    let mut peak_sites = 0.0f64;
    while started.elapsed() < Duration::from_secs(SECONDS) {
        std::thread::sleep(Duration::from_secs(5));
        samples.push((started.elapsed().as_secs_f64(), anon_rss_kb(serve.pid())));
        if samples.len() % 6 == 0 {
            let text = serve.metrics();
            let dropped = exposition_series(&text, "helios_trace_dropped_total");
            assert_eq!(dropped.get(r#"{what="sites"}"#), Some(&0.0), "a site went unnamed");
            peak_sites = peak_sites.max(exposition_series(&text, "helios_trace_tracked_sites")[""]);
            python_sites += exposition_series(&text, "helios_trace_site_opened_total")
                .keys()
                .filter(|labels| labels.contains(r#"frame="job-"#) && labels.contains(".py:job_"))
                .count();
        }
    }
    let output = churn.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains(" failed 0"), "every job ran: {said}");
    assert!(python_sites > 0, "the jobs' own Python lines were named");
    // After warm-up (the retention's worth of sites is held, 20 s) against the last half minute.
    // What is held at once moves with how the jobs overlap on a loaded machine (seen: 43 to
    // 59 MB with six interpreters); before the fix the same two minutes added 30 to 150 MB.
    let warm = median_kb(&samples, 40.0, 70.0);
    let end = median_kb(&samples, 150.0, 181.0);
    // Nothing holds the jobs' sites once the last has gone for the retention: their frames and
    // series are forgotten and the memory is handed back.
    // (The retention is 20 s: polled, with a deadline well past it.)
    let mut sites_after = peak_sites;
    let forgotten = Instant::now() + Duration::from_secs(60);
    while sites_after * 5.0 > peak_sites && Instant::now() < forgotten {
        std::thread::sleep(Duration::from_secs(1));
        sites_after = exposition_series(&serve.metrics(), "helios_trace_tracked_sites")[""];
    }
    assert!(
        sites_after * 5.0 <= peak_sites,
        "{sites_after} call sites remembered a minute after the churn, {peak_sites} during it"
    );
    // Freed memory is handed back at the exporter's next once-a-second tick: up to 10 s.
    let mut after = anon_rss_kb(serve.pid());
    let handed_back = Instant::now() + Duration::from_secs(10);
    while after > warm + 1024 && Instant::now() < handed_back {
        std::thread::sleep(Duration::from_secs(1));
        after = anon_rss_kb(serve.pid());
    }
    eprintln!(
        "exporter RssAnon under job churn: {warm} kB after warm-up, {end} kB at the end, {after} kB once its sites were forgotten; {samples:?}"
    );
    assert!(end <= warm + 12 * 1024, "grew {} kB in under two minutes of churn", end.saturating_sub(warm));
    assert!(after <= warm + 1024, "{after} kB kept after the churn, {warm} kB during it");
    drop(serve);
}

/// Issue 17: ten thousand short-lived processes, each opening at a call site of its own, do
/// not fill `--max-stacks` (their sites are forgotten once gone for the retention), so a leak
/// that starts after them is named by its own site, not `site-limit`.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_leak_after_ten_thousand_processes_with_sites_of_their_own_is_named() {
    if !require_bpf() {
        return;
    }
    const PROCESSES: usize = 10_000;
    // One function with a call of open() per process, at its own offset (-O0: nothing merged).
    let mut source = String::from(
        "#include <fcntl.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include <sys/wait.h>\n#include <unistd.h>\n\
         static int open_at(int i) {\n    switch (i) {\n",
    );
    for i in 0..PROCESSES {
        source.push_str(&format!("    case {i}: return open(\"/dev/null\", O_RDONLY);\n"));
    }
    source.push_str(
        "    }\n    return -1;\n}\n\
         __attribute__((noinline)) static void leak_here(void) {\n    for (int i = 0; i < 5; i++) open(\"/dev/null\", O_RDONLY);\n}\n\
         int main(void) {\n    char line[16];\n    if (!fgets(line, sizeof line, stdin)) return 1;\n\
         for (int i = 0; i < 10000; i++) {\n        pid_t child = fork();\n\
         if (child == 0) { close(open_at(i)); _exit(0); }\n        waitpid(child, NULL, 0);\n        usleep(300);\n    }\n\
         sleep(2);\n    leak_here();\n    printf(\"leaked\\n\");\n    fflush(stdout);\n\
         while (fgets(line, sizeof line, stdin)) {}\n    return 0;\n}\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let (c, bin) = (dir.path().join("sitefork.c"), dir.path().join("sitefork"));
    std::fs::write(&c, source).unwrap();
    let status =
        std::process::Command::new("gcc").args(["-O0", "-g", "-o"]).arg(&bin).arg(&c).status().unwrap();
    assert!(status.success(), "gcc builds the generated workload");
    let mut forker = std::process::Command::new(&bin)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = forker.id();
    let mut tracer = Tracer::start(&[
        "--pid",
        &pid.to_string(),
        "--max-stacks",
        "8000",
        "--retention",
        "1s",
        "--reconcile-interval",
        "0",
    ]);
    use std::io::{BufRead as _, Write as _};
    forker.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(forker.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "leaked");
    let report = wait_for("the leak in a snapshot", Duration::from_secs(30), || {
        let report = tracer.snapshot();
        let open = process(&report, pid).and_then(|p| p["open_fds"].as_u64()).unwrap_or(0);
        (open >= 5).then_some(report)
    });
    let sites = process(&report, pid).unwrap()["sites"].as_array().unwrap().clone();
    assert!(sites.iter().all(|s| s["site"] != "site-limit"), "{sites:#?}");
    let leak = sites
        .iter()
        .find(|s| s["frames"].as_array().unwrap().iter().any(|f| f["symbol"] == "leak_here"))
        .unwrap_or_else(|| panic!("no site names leak_here: {sites:#?}"));
    assert_eq!(leak["open"], 5);
    assert_eq!(report["events"]["sites_dropped"], 0, "{}", report["events"]);
    drop(forker.stdin.take());
    forker.wait().unwrap();
    drop(tracer);
}
