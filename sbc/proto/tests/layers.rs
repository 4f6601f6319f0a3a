//! The layers of `sbc-proto` form a stack: each module may use only the modules below it
//! (sip → flow → nat → topology → dialog → registration → transaction → engine), so there is no import circle. This
//! reads the crate's own sources and fails on any `crate::<module>` path pointing upward.
//! (`super::` inside a layer stays inside it.)

use std::path::{Path, PathBuf};

/// Bottom first.
const STACK: [&str; 8] = ["sip", "flow", "nat", "topology", "dialog", "registration", "transaction", "engine"];

fn rank(module: &str) -> Option<usize> {
    STACK.iter().position(|m| *m == module)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_layer_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked = 0;
    let mut upward = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let Some(own) = rank(&first) else { continue };
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if let Some(r) = rank(&name) {
                    checked += 1;
                    if r > own {
                        upward.push(format!("{}:{}: {first} uses crate::{name}", rel.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(checked > 20, "too few crate:: paths found ({checked}): is the scan broken?");
    assert!(upward.is_empty(), "imports pointing up the stack:\n{}", upward.join("\n"));
}
