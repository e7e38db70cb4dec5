//! Replays the fuzz corpus (fuzz/corpus/<target>/) through the fuzz targets, plus truncations
//! of every input: the short, always-on part of the fuzzing (`cargo xtask fuzz` runs the
//! coverage-guided search). A panic here is a parser bug.
use std::{fs, path::Path};

use helios_trace::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut inputs = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display())) {
        let data = fs::read(entry.unwrap().path()).unwrap();
        // Every prefix: records cut short are exactly what a length check must survive.
        for end in 0..=data.len().min(512) {
            run(&data[..end]);
        }
        run(&data);
        inputs += 1;
    }
    assert!(inputs > 0, "empty corpus for {target}");
}

#[test]
fn record_corpus() {
    replay("record", fuzzing::record);
}

#[test]
fn maps_corpus() {
    replay("maps", fuzzing::maps);
}

#[test]
fn proc_text_corpus() {
    replay("proc_text", fuzzing::proc_text);
}

#[test]
fn fd_link_corpus() {
    replay("fd_link", fuzzing::fd_link);
}

#[test]
fn heap_corpus() {
    replay("heap", fuzzing::heap);
}

#[test]
fn python_corpus() {
    replay("python", fuzzing::python);
}
