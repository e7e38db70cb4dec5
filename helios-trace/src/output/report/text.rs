//! The report as text for people: a summary line, the suspected leaks, then every process and
//! its sites with their frames and examples. A Python site's stack shows its Python frames
//! with the native frames of extensions and libraries, the interpreter's own folded
//! (`FrameDisplay`, `--all-frames` shows them; JSON always has every frame).
use std::fmt::Write as _;

use super::{ProcessReport, Report, SiteReport};
use crate::{
    model::frame::{FrameDisplay, shown},
    output::format::{bytes, human_duration, plural, rate, thousands},
};

/// What a session too short for any verdict says instead of "no suspected leak".
pub(crate) fn not_judged(report: &Report) -> String {
    format!(
        "too short to judge leaks (a verdict needs {} of tracing)",
        human_duration(report.judge_after_seconds)
    )
}

pub(crate) fn to_text(report: &Report, frames: FrameDisplay) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "helios-trace: {} traced, {} events ({} lost, {} undecodable), {} with activity, {}",
        human_duration(report.duration_seconds),
        report.events.received,
        report.events.lost,
        report.events.undecodable,
        plural(report.processes.len() as u64, "process", "processes"),
        match report.suspected_leaks {
            0 if !report.judged => not_judged(report),
            0 => "no suspected leak".to_string(),
            1 => "1 suspected leak".to_string(),
            n => format!("{n} suspected leaks"),
        }
    );
    if let Some(command) = &report.command {
        let ended = match (command.exit_code, command.signal) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => "was still running".to_string(),
        };
        let _ = writeln!(out, "command `{}` (pid {}) {ended}", command.argv.join(" "), command.pid);
    }
    if report.events.lost > 0 {
        let _ = writeln!(
            out,
            "warning: {} events were lost; counts may be off until reconciliation",
            report.events.lost
        );
    }
    if report.events.python_frames_missed > 0 {
        let _ = writeln!(
            out,
            "note: {} descriptors opened by CPython processes have no Python frames (opened before the walk began, the walk failed, or the process exited before they were named)",
            report.events.python_frames_missed
        );
    }
    let leaks: Vec<(&ProcessReport, &SiteReport)> = report
        .processes
        .iter()
        .flat_map(|p| p.sites.iter().filter(|s| s.suspected_leak).map(move |s| (p, s)))
        .collect();
    if !leaks.is_empty() {
        let _ = writeln!(
            out,
            "\nSuspected leaks (descriptors kept growing and outlive {}):",
            human_duration(report.min_age_seconds)
        );
        for (p, s) in leaks {
            let _ = writeln!(
                out,
                "  PID {} {}: {} {} open at {}: {}",
                p.pid,
                p.comm,
                s.open,
                s.kind,
                s.frame,
                s.why.as_deref().unwrap_or_default()
            );
        }
    }
    for process in &report.processes {
        let kinds: Vec<String> = process.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "\nPID {} {}{}{}: {} open ({})",
            process.pid,
            process.comm,
            process.cmdline.as_ref().map(|c| format!(" [{c}]")).unwrap_or_default(),
            if process.exited { " (exited; open at its exit)" } else { "" },
            process.open_fds,
            kinds.join(", ")
        );
        if let Some(r) = &process.resources {
            let mut facts = Vec::new();
            if let Some(rss) = r.rss_bytes {
                facts.push(format!("RSS {}", bytes(rss as f64)));
            }
            if let Some(memory) = r.socket_memory_bytes.filter(|m| *m > 0) {
                facts.push(format!("socket buffers {}", bytes(memory as f64)));
            }
            if let Some(limit) = r.fd_limit {
                facts.push(format!("fd limit {}", thousands(limit)));
            }
            if !facts.is_empty() {
                let _ = writeln!(out, "  {}", facts.join(", "));
            }
            if let Some(summary) = &r.summary {
                let _ = writeln!(out, "  {summary}");
            }
            // What is missing, and why (the JSON's `resources.unavailable`).
            for (field, why) in &r.unavailable {
                let _ = writeln!(out, "  {field} unknown: {why}");
            }
        }
        heap_lines(&mut out, process);
        for site in &process.sites {
            let closes: Vec<String> =
                site.closed_by.iter().map(|(r, n)| format!("{} {n}", r.as_str())).collect();
            let _ = writeln!(
                out,
                "  {:>6} open  {:<8} site {}{}  opened {} closed {}{}{}{}",
                site.open,
                site.kind.as_str(),
                site.site,
                if site.frame == site.site { String::new() } else { format!(" {}", site.frame) },
                site.opened,
                site.closed,
                if closes.is_empty() { String::new() } else { format!(" ({})", closes.join(", ")) },
                site.oldest_age_seconds
                    .map(|a| format!("  oldest {}", human_duration(a)))
                    .unwrap_or_default(),
                site.growth_per_minute.map(|g| format!("  {}", rate(g))).unwrap_or_default(),
            );
            if let Some(why) = &site.why {
                let _ = writeln!(out, "           SUSPECTED LEAK: {why}");
            }
            if site.close_wait > 0 {
                let _ = writeln!(
                    out,
                    "           CLOSE_WAIT {}: the peer hung up and these sockets were never closed",
                    site.close_wait
                );
            }
            if site.closed_only_at_exit {
                let elsewhere = site
                    .exited_processes
                    .as_ref()
                    .map(|e| {
                        format!(
                            " ({} in {})",
                            e.closed,
                            plural(e.processes, "exited process", "exited processes")
                        )
                    })
                    .unwrap_or_default();
                let _ = writeln!(out, "           closed only ever by process exit{elsewhere}");
            }
            if let Some(memory) = site.socket_memory_bytes.filter(|m| *m > 0) {
                let _ = writeln!(out, "           socket memory {}", bytes(memory as f64));
            }
            if let Some(why) = &site.socket_memory_unavailable {
                let _ = writeln!(out, "           socket memory unknown: {why}");
            }
            if let Some(pinned) = site.pinned_bytes.filter(|p| *p > 0) {
                let _ = writeln!(out, "           pins {}", bytes(pinned as f64));
            }
            if !site.tcp_states.is_empty() {
                let states: Vec<String> = site.tcp_states.iter().map(|(s, n)| format!("{s} {n}")).collect();
                let _ = writeln!(out, "           tcp: {}", states.join(", "));
            }
            holder_lines(&mut out, site);
            for line in shown(&site.frames, frames) {
                let _ = writeln!(out, "           {}", line.line());
            }
            if let Some(creator) = &site.origin.created_by {
                let _ = writeln!(out, "           created by {}", creator.describe());
            }
            if let Some(listener) = &site.origin.accepted_on {
                let _ = writeln!(out, "           accepted on a listener opened at {}", listener.describe());
            }
            for example in &site.examples {
                let _ = writeln!(
                    out,
                    "           fd {} ({}){}",
                    example.fd,
                    human_duration(example.age_seconds),
                    example.detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
                );
            }
        }
    }
    out
}

/// Who keeps a site's descriptors alive (ARCHITECTURE.md, "Holders"), a line per chain.
fn holder_lines(out: &mut String, site: &SiteReport) {
    for holder in site.holders.iter().flatten() {
        let _ = writeln!(out, "           holders: {}", holder.line());
    }
}

/// What the walk of a process's Python heap covered, and its census by type.
fn heap_lines(out: &mut String, process: &ProcessReport) {
    let Some(heap) = &process.heap else { return };
    if let Some(error) = &heap.error {
        let _ = writeln!(out, "  python heap: not walked: {error}");
        return;
    }
    let _ = writeln!(
        out,
        "  python heap ({}): {} objects walked in {:.2}s{}{}{}{}",
        heap.python.as_deref().unwrap_or("?"),
        thousands(heap.objects),
        heap.walk_seconds,
        match (heap.paused_seconds, &heap.pause_error) {
            (Some(s), _) => format!(" (process stopped {s:.2}s)"),
            (None, Some(e)) => format!(" ({e})"),
            (None, None) => String::new(),
        },
        if heap.unknown_objects > 0 {
            format!(", {} unreadable", heap.unknown_objects)
        } else {
            String::new()
        },
        if heap.cut_short > 0 {
            format!(", {} containers read in part", heap.cut_short)
        } else {
            String::new()
        },
        heap.stopped.as_ref().map(|s| format!("; stopped early: {s}")).unwrap_or_default(),
    );
    let census: Vec<String> = heap
        .census
        .iter()
        .map(|e| match e.growth {
            Some(g) if g != 0 => format!("{} {} ({g:+})", e.type_name, thousands(e.count)),
            _ => format!("{} {}", e.type_name, thousands(e.count)),
        })
        .collect();
    let _ = writeln!(out, "  python objects: {}", census.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::report::build::tests::{build_sample, sample};

    #[test]
    fn text_names_sites_and_frames() {
        let (table, stats) = sample();
        let text = to_text(&build_sample(&table, &stats), FrameDisplay::Readable);
        assert!(text.contains("PID 7 leaky [leaky --serve]: 4 open (socket 3, device 1)"), "{text}");
        assert!(text.contains("site 00000000000000ab leaky+0x1010  opened 3"), "{text}");
        assert!(text.contains("/usr/bin/leaky+0x1010"), "{text}");
    }

    /// A Python site: its Python frames with the extension and libc frames, the interpreter's
    /// folded; `--all-frames` (FrameDisplay::All) shows each.
    #[test]
    fn python_stacks_fold_the_interpreter_frames() {
        use crate::model::frame::tests::accept_stack;

        let (table, stats) = sample();
        let mut report = build_sample(&table, &stats);
        let glue = [
            ("cfunction_vectorcall_NOARGS", 0x30),
            ("PyObject_Vectorcall", 0x55),
            ("method_vectorcall", 0x12),
        ];
        let frames = accept_stack(&glue, 0x1b3e, &[]);
        report.processes[0].sites[0].frames = frames.clone();
        let text = to_text(&report, FrameDisplay::Readable);
        let expected = [
            "#0  accept4 in libc.so.6",
            "#1  sock_accept in _socket.cpython-312-x86_64-linux-gnu.so",
            "… 3 interpreter frames",
            "#5  socket.accept (/x/lib/python3.12/socket.py:295)",
            "#6  Handler.on_connect (/srv/app.py:21)",
            "#7  main (/srv/app.py:40)",
            "… 2 interpreter frames",
        ]
        .map(|line| format!("           {line}\n"))
        .concat();
        assert!(text.contains(&expected), "{text}");
        assert!(!text.contains("PyObject_Vectorcall"), "{text}");
        let all = to_text(&report, FrameDisplay::All);
        assert!(!all.contains("interpreter frame"), "{all}");
        for (i, frame) in frames.iter().enumerate() {
            assert!(all.contains(&format!("           #{i:<2} {}\n", frame.describe())), "{all}");
        }
    }

    #[test]
    fn holders_and_the_census_have_their_lines() {
        use crate::model::{census::CensusEntry, holders::Holder};
        let (table, stats) = sample();
        let mut report = build_sample(&table, &stats);
        let process = &mut report.processes[0];
        process.heap = Some(super::super::HeapReport {
            python: Some("3.11".into()),
            error: None,
            objects: 17554,
            unknown_objects: 0,
            cut_short: 0,
            stopped: None,
            walk_seconds: 0.05,
            paused_seconds: None,
            pause_error: None,
            age_seconds: 0.0,
            census: vec![CensusEntry { type_name: "socket".into(), count: 31, growth: Some(30) }],
        });
        process.sites[0].holders = Some(vec![Holder {
            count: 30,
            root: Some("app:H._conns".into()),
            path: Some(".writer._transport._sock".into()),
            container: Some("set".into()),
            container_size: Some(30),
            note: None,
        }]);
        let text = to_text(&report, FrameDisplay::Readable);
        assert!(text.contains("  python heap (3.11): 17,554 objects walked in 0.05s\n"), "{text}");
        assert!(text.contains("  python objects: socket 31 (+30)\n"), "{text}");
        assert!(
            text.contains("holders: 30 held by app:H._conns (set of 30) via .writer._transport._sock"),
            "{text}"
        );
    }

    #[test]
    fn a_go_site_says_what_created_its_goroutines() {
        use std::sync::Arc;

        use crate::model::frame::{Frame, Language};
        let (table, stats) = sample();
        let mut report = build_sample(&table, &stats);
        report.processes[0].sites[0].origin.created_by = Some(Frame {
            symbol: Some(Arc::from("net/http.(*Transport).queueForDial")),
            file: Some(Arc::from("/usr/lib/go-1.19/src/net/http/transport.go")),
            line: Some(1419),
            language: Language::Go,
            ..Frame::native(0x6a0000, None, None)
        });
        let text = to_text(&report, FrameDisplay::Readable);
        let line = "           created by net/http.(*Transport).queueForDial \
                    (/usr/lib/go-1.19/src/net/http/transport.go:1419)\n";
        assert!(text.contains(line), "{text}");
        assert_eq!(text.matches("created by").count(), 1, "only the site that has one: {text}");
    }

    #[test]
    fn a_site_a_runtimes_loop_accepted_says_its_listener() {
        use crate::model::frame::tests::js;
        let (table, stats) = sample();
        let mut report = build_sample(&table, &stats);
        report.processes[0].sites[0].origin.accepted_on = Some(js("listenTcp", "/srv/server.js", 33));
        let text = to_text(&report, FrameDisplay::Readable);
        let line = "           accepted on a listener opened at listenTcp (/srv/server.js:33)\n";
        assert!(text.contains(line), "{text}");
        assert_eq!(text.matches("accepted on").count(), 1, "only the site that has one: {text}");
        let json = serde_json::to_value(&report.processes[0].sites[0]).unwrap();
        assert_eq!(json["accepted_on"]["symbol"], "listenTcp", "{json:#}");
        assert!(json.get("created_by").is_none(), "absent where not known: {json:#}");
    }
}
