//! The `kmsroute` binary's read-only subcommands, run as a user would.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn kmsroute(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsroute"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn crd_prints_the_checked_in_crd() {
    let o = kmsroute(&["crd"], None);
    assert!(o.status.success());
    let printed: serde_json::Value = serde_saphyr::from_str(&stdout(&o)).unwrap();
    let file: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string("crds/kmsroutepolicies.kmsroute.io.yaml").unwrap(),
    )
    .unwrap();
    assert_eq!(printed, file);
}

#[test]
fn endpoints_json_lists_every_cloud_and_one_cloud_on_request() {
    let o = kmsroute(&["endpoints", "-o", "json"], None);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4);
    assert_eq!(v[0]["kmsAddresses"][0], "20.118.99.224");
    assert_eq!(v[0]["kmsPort"], 1688);

    let o = kmsroute(&["endpoints", "--cloud", "AzureChina"], None);
    let out = stdout(&o);
    assert!(
        out.contains("159.27.28.100") && out.contains("azkms.core.chinacloudapi.cn"),
        "{out}"
    );
    assert!(!out.contains("20.118.99.224"), "{out}");
}

#[test]
fn endpoints_refuses_an_unknown_cloud() {
    let o = kmsroute(&["endpoints", "--cloud", "Mars"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown cloud"));
}

#[test]
fn validate_accepts_the_example_and_exits_zero() {
    let o = kmsroute(&["validate", "-f", "examples/kmsroutepolicy.yaml"], None);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("spokes: valid (3 destination(s), cloud AzurePublic)"));
}

#[test]
fn validate_reads_stdin_and_reports_every_problem_with_its_path() {
    let bad = "apiVersion: kmsroute.io/v1alpha1\nkind: KmsRoutePolicy\nmetadata:\n  name: bad\nspec:\n  subnets: [\"/subscriptions/x\"]\n  kms:\n    additionalAddresses: [\"0.0.0.0/0\"]\n";
    let o = kmsroute(&["validate", "-f", "-"], Some(bad));
    assert_eq!(o.status.code(), Some(2));
    let out = stdout(&o);
    assert!(out.contains("bad: invalid"), "{out}");
    assert!(out.contains("spec.subnets[0]:"), "{out}");
    assert!(out.contains("spec.kms.additionalAddresses[0]:"), "{out}");
}

/// What the API server refuses, `validate` refuses, all at once and beside an unknown field;
/// what it only warns about, `validate` accepts with the warning.
#[test]
fn validate_reports_the_crd_bounds_and_cel_rules_all_at_once() {
    let subnets: Vec<String> = (0..5001)
        .map(|i| format!("\"/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s{i}\""))
        .collect();
    let names: Vec<String> = (0..101).map(|i| format!("n{i}")).collect();
    let bad = format!(
        "apiVersion: kmsroute.io/v1alpha1\nkind: KmsRoutePolicy\nmetadata:\n  name: bad\nspec:\n  conflictPolicyy: Replace\n  resyncInterval: 25h\n  subnets: [{}]\n  kms:\n    additionalAddresses: [\"999.1.1.1\"]\n  selector:\n    subscriptions: [\"00000000-0000-0000-0000-000000000001\"]\n    subnetNames: [{}]\n    excludeSubnetNames: [n1, N2]\n",
        subnets.join(", "),
        names.join(", ")
    );
    let o = kmsroute(&["validate", "-f", "-"], Some(&bad));
    assert_eq!(o.status.code(), Some(2));
    let out = stdout(&o);
    for path in [
        "spec.conflictPolicyy: unknown field",
        "spec.resyncInterval:",
        "spec.subnets: must have at most 5000 items (5001 given)",
        "spec.kms.additionalAddresses[0]:",
        "spec.selector.subnetNames: must have at most 100 items (101 given)",
        "spec.selector.excludeSubnetNames:",
    ] {
        assert!(out.contains(path), "{path} missing in:\n{out}");
    }
    let warned = "apiVersion: kmsroute.io/v1alpha1\nkind: KmsRoutePolicy\nmetadata:\n  name: warned\nspec:\n  selector:\n    subscriptions: [\"00000000-0000-0000-0000-000000000001\"]\n    virtualNetworkTags: {env: a, Env: b}\n";
    let o = kmsroute(&["validate", "-f", "-"], Some(warned));
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("warning: spec.selector.virtualNetworkTags"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn validate_fails_on_a_missing_file_or_an_empty_one() {
    assert_eq!(
        kmsroute(&["validate", "-f", "/nonexistent.yaml"], None)
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        kmsroute(&["validate", "-f", "-"], Some("")).status.code(),
        Some(2)
    );
}

#[test]
fn emulator_serves_the_example_estate_on_loopback() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsroute"))
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "examples/estate.json",
            "--page-size",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (unauth, page) = rt.block_on(async {
        let path = format!("{url}/subscriptions/11111111-1111-1111-1111-111111111111/providers/Microsoft.Network/virtualNetworks?api-version=2024-03-01");
        let c = reqwest::Client::new();
        let unauth = c.get(&path).send().await.unwrap().status().as_u16();
        let page: serde_json::Value = c.get(&path).bearer_auth("anything").send().await.unwrap().json().await.unwrap();
        (unauth, page)
    });
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(unauth, 401);
    assert_eq!(page["value"].as_array().unwrap().len(), 1);
    assert!(page["nextLink"].as_str().unwrap().contains("$skiptoken=1"));
}

/// An emulator on the example estate, kept alive by its runtime while the binary talks to it.
fn estate_emulator() -> (tokio::runtime::Runtime, kmsroute::emulator::EmulatorHandle) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seed: kmsroute::emulator::Seed =
        serde_json::from_str(&std::fs::read_to_string("examples/estate.json").unwrap()).unwrap();
    let em = rt
        .block_on(kmsroute::emulator::start(
            kmsroute::emulator::Config::default(),
            seed,
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    (rt, em)
}

/// The example policy with the conflicting subnet excluded, written to a temp file.
fn policy_without_conflict() -> std::path::PathBuf {
    let text = std::fs::read_to_string("examples/kmsroutepolicy.yaml")
        .unwrap()
        .replace(
            "      kms: enabled\n",
            "      kms: enabled\n    excludeSubnetNames: [legacy]\n",
        );
    let path = std::env::temp_dir().join(format!("kmsroute-cli-{}.yaml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn plan_and_apply_exit_codes_follow_the_readme() {
    let (_rt, em) = estate_emulator();
    let url = em.url();
    let file = policy_without_conflict();
    let f = file.to_str().unwrap();
    let plan = kmsroute(&["plan", "-f", f, "--arm-endpoint", &url], None);
    assert_eq!(
        plan.status.code(),
        Some(1),
        "changes pending: {}",
        stdout(&plan)
    );
    assert!(stdout(&plan).contains("create route table vnet-spoke1-app-kms"));
    assert_eq!(em.stats().writes, 0, "plan reads only");

    let refused = kmsroute(&["apply", "-f", f, "--arm-endpoint", &url], Some(""));
    assert_eq!(refused.status.code(), Some(2), "no --yes and no terminal");
    assert_eq!(em.stats().writes, 0);

    let apply = kmsroute(&["apply", "-f", f, "--arm-endpoint", &url, "--yes"], None);
    assert_eq!(apply.status.code(), Some(0), "{}", stdout(&apply));
    let out = stdout(&apply);
    assert!(out.contains("9 write(s) done, 0 failed."), "{out}");
    assert!(out.contains("spokes               True"), "{out}");

    let again = kmsroute(
        &["plan", "-f", f, "--arm-endpoint", &url, "-o", "json"],
        None,
    );
    assert_eq!(again.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert_eq!(doc["plan"]["writes"], serde_json::json!([]));
    assert_eq!(doc["policies"][0]["summary"]["inSync"], 5);
    let _ = std::fs::remove_file(file);
}

#[test]
fn plan_exits_3_on_conflicts_and_2_on_invalid_input_without_calling_azure() {
    let (_rt, em) = estate_emulator();
    let url = em.url();
    let plan = kmsroute(
        &[
            "plan",
            "-f",
            "examples/kmsroutepolicy.yaml",
            "--arm-endpoint",
            &url,
            "-o",
            "yaml",
        ],
        None,
    );
    assert_eq!(plan.status.code(), Some(3));
    assert!(
        stdout(&plan).contains("reason: Conflict"),
        "{}",
        stdout(&plan)
    );
    em.reset_stats();
    let bad = "apiVersion: kmsroute.io/v1alpha1\nkind: KmsRoutePolicy\nmetadata:\n  name: bad\nspec:\n  subnets: [\"nope\"]\n";
    let o = kmsroute(&["plan", "-f", "-", "--arm-endpoint", &url], Some(bad));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("spec.subnets[0]"));
    assert_eq!(
        em.stats().reads + em.stats().writes,
        0,
        "invalid input never reaches Azure"
    );
}

#[test]
fn a_static_token_is_refused_for_a_real_arm_endpoint() {
    let o = kmsroute(
        &[
            "plan",
            "-f",
            "examples/kmsroutepolicy.yaml",
            "--arm-endpoint",
            "https://management.azure.com",
            "--auth",
            "static-token",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("only allowed for a loopback"));
}

#[test]
fn demo_tours_the_estate_and_exits_zero() {
    let o = kmsroute(&["demo"], None);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = stdout(&o);
    for needle in [
        "11 write(s) planned.",
        "11 write(s) done, 0 failed",
        "Checked: vnet-spoke1/data gained its routeTable",
        // The two repairs run in parallel lanes: either may be reported first.
        "/2] associate vnet-spoke1/app with vnet-spoke1-app-kms",
        "/2] add route kms-20-118-99-224 20.118.99.224/32 -> Internet in rt-spoke1-shared",
        "0 write(s) planned; ARM saw 7 reads (4 list calls of VNets and route tables: 2 per subscription; 3 of NICs, public IPs and load balancers",
        "1 of 2 running NIC(s) have no outbound path",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn plan_exits_3_naming_a_subscription_that_does_not_exist() {
    let (_rt, em) = estate_emulator();
    let url = em.url();
    let text = std::fs::read_to_string("examples/kmsroutepolicy.yaml").unwrap().replace(
        "    - 22222222-2222-2222-2222-222222222222\n",
        "    - 22222222-2222-2222-2222-222222222222\n    - 33333333-3333-3333-3333-333333333333\n",
    );
    let path = std::env::temp_dir().join(format!("kmsroute-cli-typo-{}.yaml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let plan = kmsroute(
        &["plan", "-f", path.to_str().unwrap(), "--arm-endpoint", &url],
        None,
    );
    let out = stdout(&plan);
    assert_eq!(plan.status.code(), Some(3), "{out}");
    assert!(out.contains("SubscriptionUnreadable"), "{out}");
    assert!(
        out.contains("33333333-3333-3333-3333-333333333333"),
        "{out}"
    );
    assert!(out.contains("SubscriptionNotFound"), "{out}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_closed_port_fails_fast_naming_the_url_and_the_cause_with_a_line_per_retry() {
    // Port 1 on loopback: nothing listens there.
    let started = std::time::Instant::now();
    let o = kmsroute(
        &[
            "plan",
            "-f",
            "examples/kmsroutepolicy.yaml",
            "--arm-endpoint",
            "http://127.0.0.1:1",
        ],
        None,
    );
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(err.contains("http://127.0.0.1:1/subscriptions/"), "{err}");
    assert_eq!(err.matches("retry ").count(), 2, "a line per retry: {err}");
    // Not written to a terminal here: no colour codes in the log.
    assert!(!err.contains('\u{1b}'), "{err}");
    eprintln!("closed port answered in {took:?}");
}

/// `--log-format json` works outside `run` too: each retry line is a JSON object.
#[test]
fn log_format_json_applies_to_plan() {
    let o = kmsroute(
        &[
            "plan",
            "--log-format",
            "json",
            "-f",
            "examples/kmsroutepolicy.yaml",
            "--arm-endpoint",
            "http://127.0.0.1:1",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    let json_lines: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(json_lines.len(), 2, "a JSON line per retry: {err}");
    assert!(json_lines.iter().all(|l| l["level"] == "WARN"), "{err}");
}

#[test]
fn an_unsupported_scheme_is_refused_before_any_request() {
    let o = kmsroute(
        &[
            "plan",
            "-f",
            "examples/kmsroutepolicy.yaml",
            "--arm-endpoint",
            "ftp://127.0.0.1:21",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("unsupported scheme \"ftp\""), "{err}");
}

#[test]
fn ctrl_c_during_apply_finishes_in_flight_writes_and_exits_130() {
    let (_rt, em) = estate_emulator();
    // Slow writes, so the interrupt lands mid-plan.
    em.add_fault(kmsroute::emulator::FaultRule {
        method: Some("PUT".into()),
        latency_ms: Some(300),
        ..Default::default()
    });
    let file = policy_without_conflict();
    let child = Command::new(env!("CARGO_BIN_EXE_kmsroute"))
        .args([
            "apply",
            "--yes",
            "--concurrency",
            "1",
            "--arm-endpoint",
            &em.url(),
            "-f",
        ])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while em.stats().writes < 1 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no write started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: sending SIGINT to our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("interrupted after "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.ends_with("writes; run again to continue"), "{line}");
    let done: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(done < 9, "stopped before the end: {line}");
    // Every write that was started finished: what ARM changed is what was reported done.
    assert_eq!(em.stats().mutations, done);
    // Running again converges.
    let again = kmsroute(
        &[
            "apply",
            "--yes",
            "--arm-endpoint",
            &em.url(),
            "-f",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(again.status.code(), Some(0), "{}", stdout(&again));
    let _ = std::fs::remove_file(file);
}

#[test]
fn json_output_is_camel_case_throughout() {
    let (_rt, em) = estate_emulator();
    let o = kmsroute(
        &[
            "plan",
            "-f",
            "examples/kmsroutepolicy.yaml",
            "--arm-endpoint",
            &em.url(),
            "-o",
            "json",
        ],
        None,
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    out.push(k.clone());
                    keys(x, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| keys(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    keys(&doc, &mut all);
    let snake: Vec<&String> = all.iter().filter(|k| k.contains('_')).collect();
    assert!(snake.is_empty(), "{snake:?}");
    assert!(all.iter().any(|k| k == "addressPrefix"));
}

#[test]
fn plan_summary_prints_counts_not_every_subnet() {
    let (_rt, em) = estate_emulator();
    let o = kmsroute(
        &[
            "plan",
            "-f",
            "examples/kmsroutepolicy.yaml",
            "--arm-endpoint",
            &em.url(),
            "--summary",
        ],
        None,
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.starts_with("11 write(s) planned.\nNAME"), "{out}");
    assert!(
        !out.contains("route table rt-spoke1-shared"),
        "no per-table listing: {out}"
    );
    assert!(out.contains("Conflict"), "{out}");
}

/// Each kind of failure leaves with its own documented exit code, not 2 for all: the
/// Kubernetes API (5), an address that cannot be listened on (6), input (2).
#[test]
fn failures_leave_with_the_exit_code_of_their_kind() {
    let no_cluster = Command::new(env!("CARGO_BIN_EXE_kmsroute"))
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&no_cluster.stderr);
    assert_eq!(no_cluster.status.code(), Some(5), "{err}");
    assert!(err.contains("Kubernetes"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let busy = kmsroute(&["emulator", "--listen", &addr], None);
    let err = String::from_utf8_lossy(&busy.stderr);
    assert_eq!(busy.status.code(), Some(6), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");

    let elsewhere = kmsroute(&["emulator", "--listen", "192.0.2.1:80"], None);
    assert_eq!(elsewhere.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&elsewhere.stderr).contains("only listens on loopback"));
}

/// Every wrong enum value and pattern at once, as the API server reports them (issue 27,
/// defect 6: `validate` used to stop at the first field serde could not read).
#[test]
fn validate_reports_every_wrong_enum_and_pattern_not_just_the_first() {
    let bad = "apiVersion: kmsroute.io/v1alpha1\nkind: KmsRoutePolicy\nmetadata:\n  name: bad\nspec:\n  conflictPolicy: replace\n  mode: audit\n  resyncInterval: 10 minutes\n  selector:\n    subscriptions: [not-a-guid]\n";
    let o = kmsroute(&["validate", "-f", "-"], Some(bad));
    assert_eq!(o.status.code(), Some(2));
    let out = stdout(&o);
    for path in [
        "spec.conflictPolicy:",
        "spec.mode:",
        "spec.resyncInterval:",
        "spec.selector.subscriptions[0]:",
    ] {
        assert!(out.contains(path), "{path} missing in:\n{out}");
    }
}

/// Issue 33: `--version` names the commit and the build date (support triage).
#[test]
fn version_names_the_commit_and_the_build_date() {
    let out = stdout(&kmsroute(&["--version"], None));
    let re = regex::Regex::new(
        r"^kmsroute \d+\.\d+\.\d+ \(commit ([0-9a-f]{12}|unknown), built (\d{4}-\d{2}-\d{2}|unknown)\)\n$",
    )
    .unwrap();
    assert!(re.is_match(&out), "{out:?}");
}

/// Issue 33: completion scripts for the four shells, naming the subcommands and flags.
#[test]
fn completions_are_printed_for_every_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _kmsroute"),
        ("zsh", "#compdef kmsroute"),
        ("fish", "complete -c kmsroute"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let o = kmsroute(&["completions", shell], None);
        assert!(o.status.success(), "{shell}");
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell}: {marker:?} missing");
        for word in [
            "validate",
            "apply",
            "completions",
            "filename",
            "allowed-identity",
        ] {
            assert!(script.contains(word), "{shell}: {word} missing");
        }
        // The shells that complete values know the --auth modes.
        if shell != "powershell" {
            assert!(script.contains("workload-identity"), "{shell}");
        }
    }
    let o = kmsroute(&["completions", "tcsh"], None);
    assert_eq!(o.status.code(), Some(2));
}

/// Issue 33: what `kubectl get krp -o yaml` prints (a `kind: List` with server fields and
/// status) is read item by item, by `validate` and `plan` alike.
#[test]
fn a_kubectl_list_is_read_item_by_item() {
    let example = std::fs::read_to_string("examples/kmsroutepolicy.yaml").unwrap();
    let policy: serde_json::Value = serde_saphyr::from_str(&example).unwrap();
    let mut from_cluster = policy.clone();
    from_cluster["metadata"]["resourceVersion"] = serde_json::json!("1234");
    from_cluster["metadata"]["uid"] = serde_json::json!("0b9f0d3e-1111-2222-3333-444444444444");
    from_cluster["metadata"]["generation"] = serde_json::json!(3);
    from_cluster["metadata"]["managedFields"] =
        serde_json::json!([{"manager": "kubectl", "operation": "Apply"}]);
    from_cluster["status"] = serde_json::json!({"observedGeneration": 3, "conditions": [
        {"type": "Ready", "status": "True", "reason": "InSync", "message": "",
         "lastTransitionTime": "2026-12-06T10:00:00Z", "observedGeneration": 3}]});
    let mut second = from_cluster.clone();
    second["metadata"]["name"] = serde_json::json!("hub");
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List",
        "metadata": {"resourceVersion": ""}, "items": [from_cluster, second]});
    let yaml = serde_saphyr::to_string(&list).unwrap();
    let o = kmsroute(&["validate", "-f", "-", "-o", "json"], Some(&yaml));
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let checked: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let names: Vec<&str> = checked
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["spokes", "hub"]);
    assert!(
        checked
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["valid"] == true)
    );
    // An empty list has no policies in it.
    let empty = "apiVersion: v1\nkind: List\nitems: []\n";
    let o = kmsroute(&["validate", "-f", "-"], Some(empty));
    assert_eq!(o.status.code(), Some(2));
    // A list of something else is still refused, item by item.
    let other = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: x}\n";
    let o = kmsroute(&["validate", "-f", "-", "-o", "json"], Some(other));
    assert_eq!(o.status.code(), Some(2));
    let checked: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(checked[0]["errors"][0]["path"], "kind");
}

/// Issue 33: `validate -o json` and `apply -o json` for scripts: stdout is one JSON document
/// (the preview and the prompt would go to stderr), with what was written.
#[test]
fn validate_and_apply_speak_json() {
    let bad = "apiVersion: kmsroute.io/v1alpha1\nkind: KmsRoutePolicy\nmetadata: {name: bad}\nspec:\n  subnets: [nope]\n";
    let o = kmsroute(&["validate", "-f", "-", "-o", "json"], Some(bad));
    assert_eq!(o.status.code(), Some(2));
    let checked: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(checked[0]["name"], "bad");
    assert_eq!(checked[0]["valid"], false);
    assert!(
        checked[0]["errors"][0]["path"]
            .as_str()
            .unwrap()
            .starts_with("spec.subnets"),
        "{checked}"
    );

    let (_rt, em) = estate_emulator();
    let url = em.url();
    let file = policy_without_conflict();
    let f = file.to_str().unwrap();
    let o = kmsroute(
        &[
            "apply",
            "-f",
            f,
            "--arm-endpoint",
            &url,
            "--yes",
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["writesDone"], 9, "{doc}");
    assert_eq!(doc["writesFailed"], 0);
    assert_eq!(doc["interrupted"], false);
    let writes = doc["writes"].as_array().unwrap();
    assert_eq!(writes.len(), 9);
    assert!(
        writes
            .iter()
            .all(|w| w["op"].is_string() && w["error"].is_null())
    );
    assert_eq!(doc["policies"][0]["summary"]["inSync"], 5);
    assert_eq!(em.stats().writes, 9);
    let _ = std::fs::remove_file(file);
}

/// Issue 33: `kmsroute probe` (what the chart's `helm test` runs) exits 0 on a 200 and 1,
/// saying why, on any other answer or none; a URL that is no http(s) URL is an input error.
#[test]
fn probe_exits_zero_only_on_200() {
    let (_rt, em) = estate_emulator();
    let ok = kmsroute(&["probe", &format!("{}/_emulator/stats", em.url())], None);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("200 OK"));
    let missing = kmsroute(&["probe", &format!("{}/nowhere", em.url())], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("401 Unauthorized"));
    let closed = kmsroute(
        &["probe", "http://127.0.0.1:9/readyz", "--timeout", "2s"],
        None,
    );
    assert_eq!(closed.status.code(), Some(1));
    let bad = kmsroute(&["probe", "ftp://127.0.0.1/readyz"], None);
    assert_eq!(bad.status.code(), Some(2));
}
