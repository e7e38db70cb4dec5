//! deploy/: the manifests pass the Kubernetes schemas and agree with each other, the alert
//! rules pass promtool and fire on growth only, the dashboard asks for metrics we export, and
//! the image builds with podman and, assembled as the DaemonSet mounts it, serves.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use crate::support::*;
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A tool of the virtualenv `cargo xtask setup --tests` makes.
fn venv_tool(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let tool = PathBuf::from(home).join(".local/share/helios-trace/venv/bin").join(name);
    assert!(tool.exists(), "{} is missing: run cargo xtask setup --tests", tool.display());
    tool
}

fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![workspace().join("deploy/kubernetes")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every document of a YAML file, as JSON (read with the virtualenv's PyYAML).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = run(Command::new(venv_tool("python")).args(["-c", script]).arg(path));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn document(kind: &str) -> Value {
    manifests()
        .iter()
        .flat_map(|path| yaml_documents(path))
        .find(|doc| doc["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
}

#[test]
fn manifests_pass_the_kubernetes_schemas() {
    let files = manifests();
    let validator = venv_tool("kubernetes-validate");
    // The oldest Kubernetes the DaemonSet supports (appArmorProfile is 1.30) and the newest.
    for version in ["1.30.0", "1.37.0"] {
        let out = run(Command::new(&validator).args(["--strict", "-k", version]).args(&files));
        let report = String::from_utf8_lossy(&out.stdout);
        for file in &files {
            let shown = file.strip_prefix(workspace()).unwrap().to_string_lossy().into_owned();
            let custom = shown.contains("/prometheus-operator/");
            let passed =
                report.lines().any(|l| l.starts_with("INFO ") && l.contains(&shown) && l.contains("passed"));
            // The operator's kinds have no schema here: promtool checks the rules below, and
            // their references are checked against the core manifests.
            assert!(passed || custom, "{shown} was not validated against {version}:\n{report}");
        }
    }
    // Strict validation does catch a mistake.
    let daemonset = workspace().join("deploy/kubernetes/daemonset.yaml");
    let broken = tempfile::tempdir().unwrap();
    let copy = broken.path().join("daemonset.yaml");
    fs::write(&copy, fs::read_to_string(&daemonset).unwrap().replace("hostPID: true", "hostPid: true"))
        .unwrap();
    let out = Command::new(&validator).arg("--strict").arg(&copy).output().unwrap();
    assert!(!out.status.success(), "a misspelt field must fail validation");
}

#[test]
fn manifests_agree_with_each_other() {
    let daemonset = document("DaemonSet");
    let service = document("Service");
    let monitor = document("ServiceMonitor");
    let pod = &daemonset["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let subset = |small: &Value, big: &Value| small.as_object().unwrap().iter().all(|(k, v)| &big[k] == v);
    assert!(subset(&daemonset["spec"]["selector"]["matchLabels"], &pod["metadata"]["labels"]));
    assert!(subset(&service["spec"]["selector"], &pod["metadata"]["labels"]), "the Service selects the pods");
    assert!(subset(&monitor["spec"]["selector"]["matchLabels"], &service["metadata"]["labels"]));
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], container["ports"][0]["name"]);
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], port.to_string());
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[..3], ["serve", "--listen", &format!("0.0.0.0:{port}")]);
    assert!(args.contains(&"--allow-remote"), "serve refuses a non-loopback address without it");
    assert!(pod["spec"]["hostPID"].as_bool().unwrap());
    assert_eq!(container["securityContext"]["privileged"], false);
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(container[probe]["httpGet"]["scheme"], "HTTPS", "{probe}: the port serves TLS");
        assert_eq!(container[probe]["httpGet"]["port"], container["ports"][0]["name"], "{probe}");
    }
    // Every volume mounted, at the paths the tracer reads: tracefs, BTF, and the --proc-root.
    let proc_root = args.iter().skip_while(|a| **a != "--proc-root").nth(1).expect("--proc-root");
    let mounts: BTreeSet<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    let web_config =
        args.iter().skip_while(|a| **a != "--web-config-file").nth(1).expect("--web-config-file");
    let web_dir = Path::new(web_config).parent().unwrap().to_str().unwrap();
    assert_eq!(mounts, BTreeSet::from(["/sys/kernel/tracing", "/sys/kernel/btf", *proc_root, web_dir]));
    for resource in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            assert!(container["resources"][resource][what].is_string(), "{resource}.{what}");
        }
    }
}

#[test]
fn alert_rules_pass_promtool_and_fire_on_steady_growth_only() {
    let rule = document("PrometheusRule");
    let dir = tempfile::tempdir().unwrap();
    // The rule file Prometheus itself would read: the PrometheusRule's spec.
    fs::write(dir.path().join("rules.yaml"), serde_json::to_string_pretty(&rule["spec"]).unwrap()).unwrap();
    let test = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/promtool/alerts.test.yaml");
    fs::copy(test, dir.path().join("alerts.test.yaml")).unwrap();
    let out = run(Command::new("promtool").args(["check", "rules", "rules.yaml"]).current_dir(dir.path()));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 9 rules found"));
    run(Command::new("promtool").args(["test", "rules", "alerts.test.yaml"]).current_dir(dir.path()));
    // The test is not vacuous: a leak that stops growing must fail it.
    let flat =
        fs::read_to_string(dir.path().join("alerts.test.yaml")).unwrap().replace("'0+2x90'", "'50x90'");
    fs::write(dir.path().join("flat.test.yaml"), flat).unwrap();
    let out =
        Command::new("promtool").args(["test", "rules", "flat.test.yaml"]).current_dir(dir.path()).output();
    assert!(!out.unwrap().status.success(), "a flat series must not fire the leak alert");
}

#[test]
fn recording_rules_name_namespace_pod_and_container_from_kube_state_metrics() {
    let rule = document("PrometheusRule");
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("rules.yaml"), serde_json::to_string_pretty(&rule["spec"]).unwrap()).unwrap();
    let test =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/promtool/names.test.yaml"))
            .unwrap();
    fs::write(dir.path().join("names.test.yaml"), &test).unwrap();
    run(Command::new("promtool").args(["test", "rules", "names.test.yaml"]).current_dir(dir.path()));
    // Not vacuous: the join must strip kube-state-metrics' runtime scheme from container_id;
    // with an id helios-trace does not export, the expected names are not found.
    let other_id = test.replace("containerd://3f1e", "containerd://0f1e");
    fs::write(dir.path().join("other.test.yaml"), other_id).unwrap();
    let out =
        Command::new("promtool").args(["test", "rules", "other.test.yaml"]).current_dir(dir.path()).output();
    assert!(!out.unwrap().status.success(), "a container kube-state-metrics does not know gets no names");
}

#[test]
fn the_network_policy_admits_only_the_monitoring_namespace_to_the_metrics_port() {
    let policy = document("NetworkPolicy");
    let daemonset = document("DaemonSet");
    let pod = &daemonset["spec"]["template"];
    let labels = pod["metadata"]["labels"].as_object().unwrap();
    let selected = policy["spec"]["podSelector"]["matchLabels"].as_object().unwrap();
    assert!(selected.iter().all(|(k, v)| labels.get(k) == Some(v)), "the policy selects the pods");
    assert_eq!(policy["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1, "one rule: {ingress:?}");
    assert_eq!(
        ingress[0]["from"],
        serde_json::json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
    );
    assert_eq!(ingress[0]["ports"], serde_json::json!([{"port": "metrics", "protocol": "TCP"}]));
    // The ServiceMonitor scrapes over TLS with basic auth, as the pod's web config asks.
    let monitor = document("ServiceMonitor");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"], "https");
    assert!(endpoint["tlsConfig"]["ca"]["secret"]["name"].is_string(), "{endpoint}");
    assert!(endpoint["basicAuth"]["password"]["name"].is_string(), "{endpoint}");
    let args: Vec<&str> = pod["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--web-config-file"), "{args:?}");
}

#[test]
fn the_dashboard_asks_for_exported_metrics_only() {
    let text = fs::read_to_string(workspace().join("deploy/grafana/helios-trace.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 6);
    // ARCHITECTURE.md's metric contract ("Contracts: Metrics"), and the conventional process
    // metrics.
    let exported = [
        "helios_trace_open_fds",
        "helios_trace_site_open_fds",
        "helios_trace_site_opened_total",
        "helios_trace_site_closed_total",
        "helios_trace_site_oldest_open_seconds",
        "helios_trace_events_total",
        "helios_trace_events_lost_total",
        "helios_trace_tracked_processes",
        "helios_trace_tracked_fds",
        "helios_trace_tracked_sites",
        "helios_trace_build_info",
        "helios_trace_bpf_program_runs_total",
        "helios_trace_bpf_program_run_seconds_total",
        "helios_trace_reconcile_corrections_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ];
    let mut used = BTreeSet::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("helios_trace_") || word.starts_with("process_") {
            used.insert(word);
        }
    }
    assert!(used.iter().all(|m| exported.contains(m)), "unknown metrics in the dashboard: {used:?}");
    for wanted in ["helios_trace_open_fds", "helios_trace_site_open_fds"] {
        assert!(used.contains(wanted), "the dashboard shows {wanted}");
    }
    assert!(text.contains("\"frame\""), "the growing-sites table shows each site's frame");
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn the_image_builds_and_its_contents_serve_as_the_daemonset_mounts_them() {
    if !require_bpf() {
        return; // podman build, unshare and chroot need root
    }
    let tag = format!("localhost/helios-trace:test-{}", std::process::id());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    run(Command::new(cargo)
        .args(["xtask", "image", "--binary", helios_trace_bin(), "--tag", &tag])
        .current_dir(workspace()));
    let inspect = |format: &str| {
        let out = run(Command::new("podman").args(["image", "inspect", "--format", format, &tag]));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(inspect("{{json .Config.Entrypoint}}"), serde_json::json!(["/usr/local/bin/helios-trace"]));
    assert_eq!(
        inspect("{{json .Config.Cmd}}"),
        serde_json::json!(["serve", "--listen", "0.0.0.0:9877", "--allow-remote"])
    );
    run(Command::new("podman").args(["image", "rm", &tag]));

    // `podman run` cannot work here: run what the image holds the way a container would,
    // in a mount namespace of its own, chrooted into the staged rootfs, with the runtime's
    // /proc and /sys and the DaemonSet's host mounts (tracefs, BTF, the host's /proc).
    let rootfs = tempfile::tempdir().unwrap();
    run(Command::new("cp").arg("-a").arg(workspace().join("target/image/rootfs/.")).arg(rootfs.path()));
    for dir in ["proc", "sys", "host/proc"] {
        fs::create_dir_all(rootfs.path().join(dir)).unwrap();
    }
    let script = r#"R=$0
mount -t proc proc "$R/proc" && mount -t sysfs sysfs "$R/sys" &&
mount --bind /sys/kernel/tracing "$R/sys/kernel/tracing" && mount --bind /sys/kernel/btf "$R/sys/kernel/btf" &&
mount --rbind /proc "$R/host/proc" && exec chroot "$R" /usr/local/bin/helios-trace "$@""#;
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", script]).arg(rootfs.path());
    ensure_host_tracefs();
    let mut leaker = Workload::spawn_command(Command::new(leaker_bin()));
    let serve = Serve::start_with(command, &["--proc-root", "/host/proc", "--pid", &leaker.pid.to_string()]);
    leaker.run("sockets 3");
    let truth = proc_fds(leaker.pid).len() as f64;
    wait_for("the exporter in the image to see the workload", Duration::from_secs(10), || {
        let open = exposition_series(&serve.metrics(), "helios_trace_open_fds");
        (open.iter().filter(|(k, _)| k.contains(r#"comm="leaker""#)).map(|(_, v)| v).sum::<f64>() == truth)
            .then_some(())
    });
    leaker.exit();
    assert!(serve.stop().success());
}

/// `--version` names the git revision it was built from (so does `helios_trace_build_info`).
#[test]
fn the_version_names_the_git_revision() {
    let out = Command::new(helios_trace_bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(workspace())
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("helios-trace {} ({head})\n", env!("CARGO_PKG_VERSION"))
    );
}
