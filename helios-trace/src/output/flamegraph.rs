//! A flame graph of what is open: one bar per call stack, as wide as the descriptors still open
//! from it, under a root per kind and process (or workload, for serve), so a leak is the widest
//! tower and its top is the code that opened it. Built from the report (`--flamegraph`) or the
//! exporter's snapshot (`/flamegraph.svg`), so it shows what they show; drawn by inferno (the
//! Rust port of Brendan Gregg's flamegraph.pl) from the "collapsed stack" lines it reads:
//! `root;caller;...;callee COUNT`.
use std::fmt::Write as _;

use inferno::flamegraph::{self, Options};

use crate::{
    model::frame::{Frame, frame_label},
    output::{metrics::aggregate::Exported, report::Report},
};

/// The collapsed-stack lines: `kind;comm (pid);outermost frame;...;innermost frame open`, for
/// every site with descriptors open now (exited processes' sites are left out: their
/// descriptors closed with them). A site without frames is one bar named after it.
pub(crate) fn collapsed(report: &Report) -> Vec<String> {
    let mut lines = Vec::new();
    for process in report.processes.iter().filter(|p| !p.exited) {
        for site in process.sites.iter().filter(|s| s.open > 0) {
            let mut line = format!("{};{} ({})", site.kind.as_str(), name(&process.comm), process.pid);
            if site.frames.is_empty() {
                let _ = write!(line, ";{}", name(&site.site));
            }
            push_frames(&mut line, &site.frames);
            let _ = write!(line, " {}", site.open);
            lines.push(line);
        }
    }
    lines.sort();
    lines
}

/// The same from the exporter's snapshot: `kind;comm [workload];...` for every exported site
/// with descriptors open (the folded ones as one bar, `other`).
pub(crate) fn collapsed_exported(exported: &Exported) -> Vec<String> {
    let mut lines = Vec::new();
    for group in &exported.groups {
        let workload =
            [&group.key.workload.container_id, &group.key.workload.pod_uid, &group.key.workload.unit]
                .into_iter()
                .flatten()
                .next()
                .map(|w| format!(" [{w}]"))
                .unwrap_or_default();
        for site in group.sites.iter().filter(|s| s.open > 0) {
            let mut line = format!("{};{}{workload}", site.kind.as_str(), name(&group.key.comm));
            match site.site.and_then(|id| exported.sites.get(&id)) {
                Some(known) if !known.frames.is_empty() => push_frames(&mut line, &known.frames),
                Some(known) => {
                    let _ = write!(line, ";{}", name(&known.site));
                }
                None => line.push_str(";other"),
            }
            let _ = write!(line, " {}", site.open);
            lines.push(line);
        }
    }
    lines.sort();
    lines
}

/// Frames are innermost first; a flame graph's stacks start at the root.
fn push_frames(line: &mut String, frames: &[Frame]) {
    for frame in frames.iter().rev() {
        let _ = write!(line, ";{}", name(&label(frame)));
    }
}

/// The SVG of the report's [`collapsed`] lines.
pub(crate) fn svg(report: &Report) -> std::io::Result<Vec<u8>> {
    draw(collapsed(report))
}

/// The SVG of collapsed-stack lines.
pub(crate) fn draw(lines: Vec<String>) -> std::io::Result<Vec<u8>> {
    let mut options = Options::default();
    options.title = "helios-trace: open descriptors by the stack that opened them".to_string();
    options.count_name = "descriptors".to_string();
    if lines.is_empty() {
        // inferno draws an error for an empty profile; nothing open is an answer, not an error.
        return Ok(format!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"1200\" height=\"60\" \
             xmlns=\"http://www.w3.org/2000/svg\"><text x=\"600\" y=\"35\" text-anchor=\"middle\" \
             font-family=\"Verdana\" font-size=\"17\">{}: nothing open</text></svg>\n",
            options.title
        )
        .into_bytes());
    }
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out)
        .map_err(std::io::Error::other)?;
    Ok(out)
}

fn label(frame: &Frame) -> String {
    let label = frame_label(frame);
    if frame.inlined { format!("{label} [inlined]") } else { label }
}

/// A frame name as the collapsed format takes it: `;` separates frames, and the count follows
/// the last space of the line.
fn name(text: &str) -> String {
    text.replace(';', ":").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        model::{fd::FdKind, frame::Language},
        output::live::tests::{empty_report, process, site},
    };

    fn native(symbol: &str, file: &str, line: u32) -> Frame {
        Frame {
            symbol: Some(Arc::from(symbol)),
            file: Some(Arc::from(file)),
            line: Some(line),
            module: Some(Arc::from("/srv/app")),
            address: Some(0x1000),
            offset: Some(0x10),
            symbol_offset: Some(4),
            inlined: false,
            language: Language::Native,
            interpreter: false,
        }
    }

    #[test]
    fn open_stacks_collapse_root_first_under_kind_and_process() {
        let mut leak = site("1eaf", FdKind::Socket, 60, None, true);
        leak.frames = vec![native("leak;socket", "app.c", 14), native("main", "app.c", 40)];
        let closed = site("c105ed", FdKind::File, 0, None, false);
        let before = site("before-trace", FdKind::File, 3, None, false);
        let mut gone = process(30, "gone", vec![site("9", FdKind::Pipe, 2, None, false)]);
        gone.exited = true;
        let report = Report {
            processes: vec![process(20, "leaky", vec![leak, closed, before]), gone],
            ..empty_report()
        };
        assert_eq!(
            collapsed(&report),
            ["file;leaky (20);before-trace 3", "socket;leaky (20);main (app.c:40);leak:socket (app.c:14) 60",],
            "nothing closed, nothing of exited processes; `;` in a name is not a frame boundary"
        );
        let svg = String::from_utf8(svg(&report).unwrap()).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("</svg>"));
        assert!(svg.contains("leak:socket (app.c:14)") && svg.contains("60 descriptors"), "{svg}");
        // Nothing open: still a picture, saying so.
        let empty = String::from_utf8(super::svg(&empty_report()).unwrap()).unwrap();
        assert!(empty.contains("nothing open"));
    }
}
