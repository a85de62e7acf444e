//! The commit and build date `kmsroute --version` prints (`KMSROUTE_GIT_COMMIT`,
//! `KMSROUTE_BUILD_DATE`). Either can be given in the environment (a build from a tarball, a
//! reproducible build with SOURCE_DATE_EPOCH); otherwise they come from git, and "unknown"
//! when there is no git. The date is the commit's, not the clock's: the same commit builds the
//! same binary.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=KMSROUTE_GIT_COMMIT");
    println!("cargo:rerun-if-env-changed=KMSROUTE_BUILD_DATE");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // Rebuilt when HEAD moves (a commit, a checkout).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
        println!("cargo:rerun-if-changed={dir}/packed-refs");
    }
    let commit = std::env::var("KMSROUTE_GIT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let date = std::env::var("KMSROUTE_BUILD_DATE")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|d| d.chars().take(10).collect())
        .or_else(|| {
            let epoch: i64 = std::env::var("SOURCE_DATE_EPOCH").ok()?.parse().ok()?;
            Some(civil(epoch.div_euclid(86_400)))
        })
        .or_else(|| git(&["log", "-1", "--format=%cs"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KMSROUTE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=KMSROUTE_BUILD_DATE={date}");
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (Howard Hinnant's days-to-civil).
fn civil(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
