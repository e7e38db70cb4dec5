//! `--redact-paths`: what the outputs show instead of paths, memfd names and command lines,
//! which can say more about the traced workloads than whoever reads the output should know
//! (README.md, "Privileges and threat model"). Applied where each output is made from the
//! model — the report (and so the text, JSON, live view, summary lines and flame graph made
//! from it), `serve`'s `/sites`, `run`'s command — after frame labels were chosen, which look
//! at whole paths (model/frame.rs `is_runtime`) and are basenames already.
use std::sync::Arc;

use crate::{
    model::frame::{Frame, SiteOrigin, basename},
    output::report::Report,
};

/// What a path or memfd name becomes.
pub(crate) const REDACTED: &str = "[path redacted]";

/// A command line keeps its program's name, not its directory or its arguments.
pub(crate) fn cmdline(cmdline: &str) -> String {
    let program = cmdline.split(' ').next().unwrap_or_default();
    format!("{} [arguments redacted]", basename(program))
}

/// An argv as `cmdline` shows it: the program's name, then one word for the arguments.
pub(crate) fn argv(argv: &[String]) -> Vec<String> {
    let mut kept: Vec<String> = argv.first().map(|a| basename(a).to_string()).into_iter().collect();
    if argv.len() > 1 {
        kept.push("[arguments redacted]".to_string());
    }
    kept
}

/// A frame keeps the names of its file and module, not their directories: the code's names
/// say where a leak is; the directories say where the workload lives.
pub(crate) fn frame(frame: &Frame) -> Frame {
    let name = |path: &Option<Arc<str>>| path.as_deref().map(|p| Arc::from(basename(p)));
    Frame { file: name(&frame.file), module: name(&frame.module), ..frame.clone() }
}

/// A site's goroutine creator and listener, as its frames.
pub(crate) fn origin(origin: &SiteOrigin) -> SiteOrigin {
    SiteOrigin {
        created_by: origin.created_by.as_ref().map(frame),
        accepted_on: origin.accepted_on.as_ref().map(frame),
    }
}

pub(crate) fn frames(frames: &[Frame]) -> Arc<[Frame]> {
    frames.iter().map(frame).collect()
}

/// Every command line and frame path of a report (paths of descriptors were redacted when
/// they were described).
pub(crate) fn report(report: &mut Report) {
    for process in &mut report.processes {
        process.cmdline = process.cmdline.as_deref().map(cmdline);
        for site in &mut process.sites {
            site.frames = site.frames.iter().map(frame).collect();
            site.origin = origin(&site.origin);
        }
    }
    if let Some(command) = &mut report.command {
        command.argv = argv(&command.argv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::frame::Language;

    #[test]
    fn only_names_remain() {
        assert_eq!(cmdline("/srv/secret-7/bin/app --token=abc"), "app [arguments redacted]");
        assert_eq!(
            argv(&["/srv/secret-7/app".into(), "--token=abc".into()]),
            ["app", "[arguments redacted]"]
        );
        assert_eq!(argv(&["app".into()]), ["app"]);
        let python = Frame::python("serve".into(), "/srv/secret-7/app.py".into(), Some(3));
        let redacted = frame(&python);
        assert_eq!((redacted.file.as_deref(), redacted.symbol.as_deref()), (Some("app.py"), Some("serve")));
        let native = Frame { module: Some("/srv/secret-7/lib/libx.so".into()), ..python.clone() };
        assert_eq!(frame(&native).module.as_deref(), Some("libx.so"));
        assert_eq!(frame(&native).language, Language::Python);
    }
}
