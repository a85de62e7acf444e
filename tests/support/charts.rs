//! The chart tests' tools: the real `helm` (installed by `scripts/install-test-tools.sh`;
//! skipped outside CI when missing), rendering, and the fields of a schema without a
//! description. Included by path (`#[path = "support/charts.rs"]`).
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// The helm binary: `$HELM` or `.tools/bin/helm`; `None` (a skip) outside CI when missing.
pub fn helm() -> Option<PathBuf> {
    let path = std::env::var_os("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".tools/bin/helm"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install helm (scripts/install-test-tools.sh)"
    );
    eprintln!("SKIPPED: no helm at {path:?}; run scripts/install-test-tools.sh");
    None
}

/// `helm template` of the chart as release `kmsroute` in namespace `kmsroute`, with `--set`
/// values; Ok(documents) or Err(stderr).
pub fn render(helm: &PathBuf, sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut cmd = Command::new(helm);
    cmd.args([
        "template",
        "kmsroute",
        "charts/kmsroute",
        "--namespace",
        "kmsroute",
    ]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(docs(&String::from_utf8_lossy(&out.stdout)))
}

/// The YAML documents of `text`, empty ones left out.
pub fn docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// The paths of a JSON schema's properties (array items included) that have no description.
pub fn undescribed(schema: &Value) -> Vec<String> {
    fn walk(v: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = v["properties"].as_object() {
            for (k, p) in props {
                let at = format!("{path}.{k}");
                if p["description"].as_str().is_none_or(str::is_empty) {
                    missing.push(at.clone());
                }
                walk(p, &at, missing);
            }
        }
        if v["items"].is_object() {
            walk(&v["items"], &format!("{path}[]"), missing);
        }
    }
    let mut missing = Vec::new();
    walk(schema, "", &mut missing);
    missing
}
