//! Shell completions and man pages, generated from helios-trace's own clap definitions so they
//! never disagree with `--help`.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, ValueEnum as _};
use clap_complete::Shell;
use helios_trace::cli::Cli;

const BIN: &str = "helios-trace";

/// One completion script per shell; the paths written.
pub fn completions(out_dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut command = Cli::command();
    Shell::value_variants()
        .iter()
        .map(|shell| {
            clap_complete::generate_to(*shell, &mut command, BIN, out_dir)
                .with_context(|| format!("cannot write the {shell} completions"))
        })
        .collect()
}

/// helios-trace.1 and helios-trace-SUBCOMMAND.1; the paths written.
pub fn man_pages(out_dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    clap_mangen::generate_to(Cli::command(), out_dir).context("cannot write the man pages")?;
    let mut pages: Vec<PathBuf> = fs::read_dir(out_dir)?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "1"))
        .collect();
    pages.sort();
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_know_the_subcommands_and_options() {
        let dir = tempfile::tempdir().unwrap();
        let written = completions(dir.path()).unwrap();
        assert_eq!(written.len(), Shell::value_variants().len());
        let bash = fs::read_to_string(dir.path().join("helios-trace.bash")).unwrap();
        for word in ["serve", "run", "--min-age", "--interval", "--output", "--view"] {
            assert!(bash.contains(word), "bash completion lacks {word}");
        }
        let zsh = fs::read_to_string(dir.path().join("_helios-trace")).unwrap();
        assert!(zsh.contains("--format"));
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man_pages(dir.path()).unwrap();
        let names: Vec<String> =
            pages.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["helios-trace-run.1", "helios-trace-serve.1", "helios-trace.1"]);
        let main = fs::read_to_string(dir.path().join("helios-trace.1")).unwrap();
        assert!(main.starts_with(".ie \\n(.g .ds Aq \\(aq") || main.contains(".TH helios-trace 1"), "{main}");
        assert!(main.contains("min\\-age"), "options are documented");
        assert!(main.contains("Examples:"), "so are the examples");
        let run = fs::read_to_string(dir.path().join("helios-trace-run.1")).unwrap();
        assert!(run.contains("CMD"), "{run}");
    }
}
