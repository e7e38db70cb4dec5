//! Kernel tests of `helios-trace serve`: the real programs, real workloads leaking from known
//! call sites, a real Prometheus scraping the exporter every second, PromQL answers compared
//! with exactly what the workloads hold.
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::*;
use serde_json::Value;

/// A Prometheus of our own: loopback, 1 s scrapes of one target, its tsdb in a temp dir.
pub(crate) struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub(crate) fn start(target: &str) -> Prometheus {
        Prometheus::start_with(target, "")
    }

    /// The same with `job` (YAML lines indented by four spaces, e.g. `    scheme: https`) in its
    /// scrape job.
    pub(crate) fn start_with(target: &str, job: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: helios-trace\n{job}    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prometheus starts (cargo xtask setup --tests installs it)");
        let base = format!("http://127.0.0.1:{port}");
        wait_for("Prometheus to be ready", Duration::from_secs(30), || {
            http_get(&format!("{base}/-/ready"), &[]).ok().filter(|(status, _)| *status == 200)
        });
        Prometheus { child, base, _dir: dir }
    }

    /// An instant query: each series' labels and value.
    pub(crate) fn query(&self, expr: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.query_at(expr, None)
    }

    /// An instant query at `time` (Unix seconds; now when `None`).
    pub(crate) fn query_at(&self, expr: &str, time: Option<f64>) -> Vec<(BTreeMap<String, String>, f64)> {
        let time = time.map(|t| format!("{t:.3}"));
        let mut query = vec![("query", expr)];
        if let Some(time) = &time {
            query.push(("time", time));
        }
        let (status, body) = http_get(&format!("{}/api/v1/query", self.base), &query).unwrap();
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((status, &answer["status"]), (200, &Value::from("success")), "{expr}: {body}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = serde_json::from_value(r["metric"].clone()).unwrap();
                (labels, r["value"][1].as_str().unwrap().parse().unwrap())
            })
            .collect()
    }

    /// Wait until `expr` gives exactly one series of value `value`; that series' labels.
    pub(crate) fn wait_for_one(&self, expr: &str, value: f64) -> BTreeMap<String, String> {
        let mut last = Vec::new();
        let found = (0..300).find_map(|_| {
            last = self.query(expr);
            let hit = match last.as_slice() {
                [(labels, v)] if *v == value => Some(labels.clone()),
                _ => None,
            };
            if hit.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            hit
        });
        found.unwrap_or_else(|| panic!("{expr} never answered exactly {value}; last: {last:?}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// cgroups of our own in the cgroup v2 hierarchy, shaped like a runtime's, removed on drop.
struct TestCgroups {
    root: PathBuf,
}

impl TestCgroups {
    fn new() -> TestCgroups {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        let mount = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("a cgroup v2 hierarchy is mounted");
        let root = mount.join(format!("helios-trace-test-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        TestCgroups { root }
    }

    /// Create `relative` (a path of cgroups) under our root.
    fn create(&self, relative: &str) -> PathBuf {
        let path = self.root.join(relative);
        fs::create_dir_all(&path).unwrap();
        path
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        // cgroups are removed with rmdir, innermost first, once empty.
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
            dirs.push(dir);
        }
        for dir in dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The leaker under the name `name` (its comm), started in `cgroup` when given: a shell moves
/// itself there and execs it, so the process runs in the cgroup from its exec on.
fn spawn_leaker(name: &str, cgroup: Option<&Path>) -> (Workload, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("leakers-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let binary = dir.join(name);
    if !binary.exists() {
        fs::copy(leaker_bin(), &binary).unwrap();
    }
    let mut command = Command::new("sh");
    command.args([
        "-c",
        r#"if [ -n "$1" ]; then echo $$ > "$1/cgroup.procs" || exit 1; fi; exec "$2" "$3""#,
        "sh",
    ]);
    command.arg(cgroup.map(|c| c.as_os_str().to_owned()).unwrap_or_default()).arg(&binary);
    (Workload::spawn_command(command), binary)
}

/// A comm of our own (at most 15 characters), so other processes cannot match our queries.
fn unique_name(tag: &str) -> String {
    format!("lk{tag}{}", std::process::id() % 100_000)
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn prometheus_answers_exactly_what_leaked_and_forgets_exited_workloads() {
    if !require_bpf() {
        return;
    }
    const RETENTION: Duration = Duration::from_secs(6);
    let serve = Serve::start(&["--retention", "6s"]);
    let prometheus = Prometheus::start(serve.base.trim_start_matches("http://"));
    let cgroups = TestCgroups::new();
    let pod_uid = format!("{:08x}-5e7a-4c1d-9b3e-{:012x}", std::process::id(), 0x2a);
    let container_id = format!("{:064x}", u64::from(std::process::id()) << 8 | 0xc);
    let in_pod = cgroups.create(&format!("kubepods/burstable/pod{pod_uid}/{container_id}"));
    let in_unit = cgroups.create("geo-leaker.service");
    // The same program in two workloads: the labels keep them apart.
    let name = unique_name("p");
    let (mut pod, _) = spawn_leaker(&name, Some(&in_pod));
    let (mut unit, _) = spawn_leaker(&name, Some(&in_unit));
    let files = pod.run("files 7");
    pod.run("sockets 5");
    pod.run(&format!("close {}", files[0]));
    unit.run("sockets 3");

    let pod_selector = format!(r#"comm="{name}",container_id="{container_id}",pod_uid="{pod_uid}""#);
    let sockets = prometheus.wait_for_one(
        &format!(r#"helios_trace_site_open_fds{{{pod_selector},kind="socket",site!="before-trace"}}"#),
        5.0,
    );
    // The label is the innermost frame of the leaker's own code: its inlined syscall helper,
    // at its line in leaker.c (the chain through leak_socket is checked at /sites below).
    assert!(sockets["frame"].starts_with("raw3 (leaker.c:"), "{sockets:?}");
    // The loader's own opens at start are sites too, closed since: only ours has any open.
    let file_site = prometheus.wait_for_one(
        &format!(r#"helios_trace_site_open_fds{{{pod_selector},kind="file",site!="before-trace"}} > 0"#),
        6.0,
    );
    assert!(file_site["frame"].starts_with("raw3 (leaker.c:"), "{file_site:?}");
    let file_selector = format!(r#"{pod_selector},kind="file",site="{}""#, file_site["site"]);
    prometheus.wait_for_one(&format!("helios_trace_site_opened_total{{{file_selector}}}"), 7.0);
    prometheus.wait_for_one(&format!("helios_trace_site_closed_total{{{file_selector}}}"), 1.0);
    let unit_sockets = prometheus.wait_for_one(
        &format!(r#"helios_trace_site_open_fds{{comm="{name}",unit="geo-leaker.service",kind="socket"}}"#),
        3.0,
    );
    assert_eq!(unit_sockets.get("container_id"), None, "a unit's series carry no container (empty = absent)");
    assert_eq!(unit_sockets["site"], sockets["site"], "same code, same site, wherever it runs");
    // Per kind, the workload's total is what the kernel says the process has open.
    for (kind, count) in kind_counts(&proc_fds(pod.pid)) {
        let expr = format!(r#"helios_trace_open_fds{{{pod_selector},kind="{kind}"}}"#);
        prometheus.wait_for_one(&expr, count as f64);
    }

    // /sites: the full stack of the exported site, innermost first, down through main.
    let (status, body) = serve.get("/sites");
    assert_eq!(status, 200);
    let sites: Value = serde_json::from_str(&body).unwrap();
    let site =
        sites["sites"].as_array().unwrap().iter().find(|s| s["site"] == sockets["site"].as_str()).unwrap();
    assert_eq!(site["frame"], sockets["frame"].as_str());
    let frames = site["frames"].as_array().unwrap();
    assert!(frames[0]["module"].as_str().unwrap().ends_with(&format!("/{name}")));
    let symbols: Vec<&str> = frames.iter().filter_map(|f| f["symbol"].as_str()).collect();
    let at = |symbol: &str| symbols.iter().position(|s| *s == symbol);
    assert!(at("leak_socket") < at("main") && at("leak_socket").is_some(), "{symbols:?}");
    let file_frames =
        sites["sites"].as_array().unwrap().iter().find(|s| s["site"] == file_site["site"].as_str());
    let file_frames = file_frames.unwrap()["frames"].as_array().unwrap();
    assert!(file_frames.iter().any(|f| f["symbol"] == "leak_file"), "{file_frames:?}");

    // promtool lints the exposition; every dashboard query is valid against the real series.
    let exposition = serve.metrics();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let dashboard: Value = serde_json::from_str(
        &fs::read_to_string(workspace_file("deploy/grafana/helios-trace.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard["panels"], &mut exprs);
    assert!(exprs.len() >= 8, "{exprs:?}");
    for expr in &exprs {
        let expr = expr.replace("$__rate_interval", "1m").replace("$instance", ".*");
        prometheus.query(&expr);
    }
    let per_workload =
        exprs.iter().find(|e| e.contains("helios_trace_open_fds")).unwrap().replace("$instance", ".*");
    assert!(
        prometheus.query(&per_workload).iter().any(|(labels, _)| labels.get("pod_uid") == Some(&pod_uid)),
        "the per-workload panel shows the pod"
    );

    // The pod's workload exits: its series stay (at zero) for the retention, then go.
    pod.exit();
    let exited = Instant::now();
    let all_of_pod = format!("helios_trace_site_open_fds{{{pod_selector}}}");
    wait_for("the exited pod's sites to show 0 open", Duration::from_secs(10), || {
        let series = prometheus.query(&all_of_pod);
        assert!(!series.is_empty(), "the series went before the retention ({:?})", exited.elapsed());
        series.iter().all(|(_, v)| *v == 0.0).then_some(())
    });
    wait_for("the exited pod's series to go", RETENTION + Duration::from_secs(20), || {
        prometheus.query(&all_of_pod).is_empty().then_some(())
    });
    assert!(exited.elapsed() >= RETENTION, "gone after {:?}, before the retention", exited.elapsed());
    assert!(
        !prometheus.query(&format!(r#"helios_trace_site_open_fds{{comm="{name}"}}"#)).is_empty(),
        "the unit lives on"
    );
    unit.exit();
    assert!(serve.stop().success(), "SIGTERM: exit 0");
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(expr)) = map.get("expr") {
                out.push(expr.clone());
            }
            map.values().for_each(|v| collect_exprs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

fn workspace_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join(relative)
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn sites_beyond_max_sites_fold_and_short_lived_children_expire() {
    if !require_bpf() {
        return;
    }
    let name = unique_name("s");
    let (mut leaker, _) = spawn_leaker(&name, None);
    let pid = leaker.pid.to_string();
    let serve = Serve::start(&["--pid", &pid, "--max-sites", "3", "--pid-label", "--retention", "2s"]);
    leaker.run("spread 40");
    leaker.run("files 2");
    // Every file the leaker has open (what it inherited, such as a redirected stderr, included).
    let files = kind_counts(&proc_fds(leaker.pid))["file"] as f64;
    let file_sites = |text: &str| -> BTreeMap<String, f64> {
        exposition_series(text, "helios_trace_site_open_fds")
            .into_iter()
            .filter(|(k, _)| k.contains(&format!(r#"pid="{pid}""#)) && k.contains(r#"kind="file""#))
            .collect()
    };
    let sites = wait_for("every file in 3 sites and other", Duration::from_secs(10), || {
        let sites = file_sites(&serve.metrics());
        (sites.values().sum::<f64>() == files).then_some(sites)
    });
    assert_eq!(sites.len(), 4, "3 sites + other: {sites:#?}");
    let (other, top) = sites.iter().partition::<Vec<_>, _>(|(k, _)| k.contains(r#"site="other""#));
    let mut exported: Vec<f64> = top.iter().map(|(_, v)| **v).collect();
    exported.sort_by(|a, b| b.total_cmp(a));
    assert!(exported[0] >= 2.0, "the 2-file site (or a bigger before-trace) is exported: {sites:#?}");
    assert_eq!(*other[0].1, files - exported.iter().sum::<f64>(), "other holds the rest");
    assert!(*other[0].1 >= 40.0 - 3.0, "most of the 40 one-file sites are folded");

    // 30 children, each leaking a file as it exits: one pid-labelled series set each, gone
    // after the retention.
    let children = leaker.run("forks 30");
    let child_series =
        |text: &str| children.iter().filter(|c| text.contains(&format!(r#"pid="{c}""#))).count();
    wait_for("the children's series", Duration::from_secs(10), || {
        (child_series(&serve.metrics()) == children.len()).then_some(())
    });
    let opened = exposition_series(&serve.metrics(), "helios_trace_site_opened_total");
    let opened_by_children: f64 = opened
        .iter()
        .filter(|(k, _)| children.iter().any(|c| k.contains(&format!(r#"pid="{c}""#))))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(opened_by_children, 30.0, "each child opened one file");
    wait_for("the children's series to expire", Duration::from_secs(15), || {
        (child_series(&serve.metrics()) == 0).then_some(())
    });
    assert_eq!(file_sites(&serve.metrics()).len(), 4, "the parent's series stay");
    leaker.exit();
    assert!(serve.interrupt().success(), "SIGINT: exit 0");
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn runs_with_only_the_daemonsets_capabilities() {
    if !require_bpf() {
        return;
    }
    // The capability list of the DaemonSet (a flow sequence of quoted names: JSON).
    let manifest = fs::read_to_string(workspace_file("deploy/kubernetes/daemonset.yaml")).unwrap();
    let list = manifest.lines().find_map(|l| l.trim().strip_prefix("add: ")).expect("capabilities.add");
    let caps: Vec<String> = serde_json::from_str(list).unwrap();
    assert!(caps.contains(&"BPF".to_string()), "{caps:?}");
    let bounding: Vec<String> = caps.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
    // A workload of root's with every capability: reading its /proc entries takes
    // CAP_SYS_PTRACE (the ptrace access check compares capability sets).
    ensure_host_tracefs();
    let mut leaker = Workload::spawn_command(Command::new(leaker_bin()));
    let mut setpriv = Command::new("setpriv");
    setpriv.arg(format!("--bounding-set=-all,{}", bounding.join(","))).arg(helios_trace_bin());
    let serve = Serve::start_with(setpriv, &["--pid", &leaker.pid.to_string()]);
    // Once attached, every thread holds only what the rest of the run needs (not CAP_PERFMON
    // nor CAP_SYS_ADMIN); the uprobe maker only what making a uprobe needs.
    assert!(caps.contains(&"SYS_ADMIN".to_string()), "for the uprobe maker: {caps:?}");
    assert_maker_keeps_only_what_uprobes_need(serve.pid());
    leaker.run("sockets 4");
    let truth = proc_fds(leaker.pid);
    wait_for("the tables to match /proc", Duration::from_secs(10), || {
        let open = exposition_series(&serve.metrics(), "helios_trace_open_fds");
        let total: f64 = open.iter().filter(|(k, _)| k.contains("comm=\"leaker\"")).map(|(_, v)| v).sum();
        (total == truth.len() as f64).then_some(())
    });
    assert_eq!(serve.get("/healthz"), (200, "ok\n".to_string()));
    // The node's flame graph of what is open names the leaking function.
    let (status, svg) = serve.get("/flamegraph.svg");
    assert_eq!(status, 200);
    assert!(svg.contains("leak_socket") && svg.contains("4 descriptors"), "{svg}");
    leaker.exit();
    assert!(serve.stop().success());
}

#[test]
fn bad_input_and_a_busy_port_are_one_line_errors() {
    let run = |args: &[&str]| {
        let out = Command::new(helios_trace_bin()).arg("serve").args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run(&["--retention", "forever"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, stderr) = run(&["--listen", "nowhere"]);
    assert_eq!(code, Some(2), "{stderr}");
    // What is served names paths and command lines: not to the network unless asked.
    let (code, stderr) = run(&["--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("pass --allow-remote"), "{stderr}");
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let (code, stderr) = run(&["--listen", &address]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("helios-trace: cannot listen on {address}: ")), "{stderr}");
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_full_table_keeps_the_oldest_and_counts_what_it_drops() {
    if !require_bpf() {
        return;
    }
    let mut leaker = Workload::spawn_command(Command::new(leaker_bin()));
    let before = proc_fds(leaker.pid).len() as f64;
    // Room for what it holds now and two more: of the next six sockets, four are dropped.
    let limit = (before + 2.0).to_string();
    let serve = Serve::start(&["--pid", &leaker.pid.to_string(), "--max-fds", &limit]);
    leaker.run("sockets 6");
    wait_for("the drops to be counted", Duration::from_secs(10), || {
        let text = serve.metrics();
        let dropped = exposition_series(&text, "helios_trace_dropped_total");
        (dropped.get(r#"{what="fds"}"#) == Some(&4.0)).then_some(text)
    });
    let text = serve.metrics();
    assert_eq!(exposition_series(&text, "helios_trace_tracked_fds")[""], before + 2.0, "{text}");
    assert_eq!(exposition_series(&text, "helios_trace_dropped_total")[r#"{what="processes"}"#], 0.0);
    leaker.exit();
    assert!(serve.stop().success());
}

/// With the kernel's BPF statistics on, each kernel program's runs and time are exported (what
/// helios-trace costs, next to what it finds); with them off, no such series.
/// `kernel.bpf_stats_enabled` turned on, and put back as it was when dropped, even by a failed
/// assertion: left on, every BPF program of the machine pays for its statistics.
struct BpfStatistics {
    before: String,
}

impl BpfStatistics {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn on() -> BpfStatistics {
        let before = fs::read_to_string(Self::SYSCTL).unwrap();
        fs::write(Self::SYSCTL, "1").unwrap();
        BpfStatistics { before: before.trim().to_string() }
    }
}

impl Drop for BpfStatistics {
    fn drop(&mut self) {
        let _ = fs::write(Self::SYSCTL, &self.before);
    }
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn kernel_program_costs_are_exported_while_bpf_statistics_are_on() {
    if !require_bpf() {
        return;
    }
    let mut w = Workload::spawn();
    let serve = Serve::start(&["--pid", &w.pid.to_string()]);
    assert!(!serve.metrics().contains("helios_trace_bpf_program_runs_total{"), "statistics are off");
    let statistics = BpfStatistics::on();
    w.run("churn 20");
    let runs = wait_for("the programs' runs in /metrics", Duration::from_secs(10), || {
        let runs = exposition_series(&serve.metrics(), "helios_trace_bpf_program_runs_total");
        runs.get(r#"{program="fd_syscall_exit"}"#).copied().filter(|n| *n >= 20.0).map(|_| runs)
    });
    let seconds = exposition_series(&serve.metrics(), "helios_trace_bpf_program_run_seconds_total");
    drop(statistics);
    assert!(seconds[r#"{program="fd_syscall_exit"}"#] > 0.0, "{seconds:?}");
    // Named by the job, whichever way the kernel runs it (a BTF tracepoint here).
    assert!(!runs.keys().any(|program| program.contains("_btf")), "{runs:?}");
    w.exit();
}
