//! Issue 8: a bounded fuzz smoke run on stable, inside `cargo test`. It drives the same
//! harnesses as the libFuzzer targets in `fuzz/` (`cargo +nightly fuzz run <target>`) with a
//! seeded PRNG: mutations of real inputs (the example policies, the official ARM examples) and
//! random bytes. `KMSROUTE_FUZZ_ITERS` sets the inputs per target (default 3,000).

use kmsroute::fuzzing;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// xorshift64*: deterministic, so a failure reproduces from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Flips, inserts, deletes, duplicates and splices (with tokens that matter to the parser).
fn mutate(rng: &mut Rng, seed: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.insert(at, rng.next() as u8),
            2 if !v.is_empty() => {
                let end = (at + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 => {
                let t = tokens[rng.below(tokens.len())];
                v.splice(at..at, t.iter().copied());
            }
            4 if !v.is_empty() => {
                let start = rng.below(v.len());
                let end = (start + rng.below(64)).min(v.len());
                let chunk: Vec<u8> = v[start..end].to_vec();
                v.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    v
}

fn run(name: &str, seeds: &[Vec<u8>], tokens: &[&[u8]], harness: fn(&[u8]) -> usize) {
    let iters: usize = std::env::var("KMSROUTE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
    let mut deep = 0usize;
    for i in 0..iters {
        let input = if i % 10 == 9 || seeds.is_empty() {
            (0..rng.below(256)).map(|_| rng.next() as u8).collect()
        } else {
            let pick = rng.below(seeds.len());
            mutate(&mut rng, &seeds[pick], tokens)
        };
        match catch_unwind(AssertUnwindSafe(|| harness(&input))) {
            Ok(n) => deep += usize::from(n > 0),
            Err(_) => panic!(
                "{name}: input {i} panicked; bytes (hex): {}",
                input.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        }
    }
    println!("fuzz smoke {name}: {iters} inputs, {deep} reached the deep path, 0 panics");
    assert!(
        deep > 0,
        "{name}: no input got past the parser; the seeds are broken"
    );
}

fn files(dir: &str, ext: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    out.sort();
    out
}

#[test]
fn policy_yaml() {
    let mut seeds = files("deploy/examples", "yaml");
    seeds.push(std::fs::read("examples/kmsroutepolicy.yaml").unwrap());
    let tokens: &[&[u8]] = &[
        b"0.0.0.0/0",
        b"10.0.0.1",
        b"20.118.99.224/31",
        b"::1",
        b"\n---\n",
        b"additionalAddresses: [\"1.2.3.4\"]",
        b"{vnet}",
        b"mode: Audit",
        b"\"",
        b": ",
        b"- ",
        b"\n  ",
    ];
    run("policy_yaml", &seeds, tokens, fuzzing::policy_yaml);
}

#[test]
fn arm_body() {
    // The 200 bodies of the official examples (list pages, effective routes, errors).
    let mut seeds = Vec::new();
    for f in files("tests/fixtures/arm/2024-03-01/examples", "json") {
        let v: serde_json::Value = serde_json::from_slice(&f).unwrap();
        if let Some(body) = v.pointer("/responses/200/body") {
            seeds.push(serde_json::to_vec(body).unwrap());
        }
    }
    // List pages whose entries carry subscription IDs the client must refuse.
    seeds.push(br#"{"value":[{"id":"/subscriptions/00000000-0000-0000-0000-00000000000A/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v","location":"westeurope","properties":{"subnets":[{"id":"/subscriptions/00000000-0000-0000-0000-00000000000b/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s","properties":{"addressPrefix":"10.0.0.0/24"}}]}}]}"#.to_vec());
    let tokens: &[&[u8]] = &[
        b"null",
        b"\"value\":",
        b"[]",
        b"{}",
        b"\"/subscriptions/x\"",
        b"\"0.0.0.0/0\"",
        b"\"Internet\"",
        b"\"Invalid\"",
        b"1e999",
        b"\"\\u0000\"",
    ];
    run("arm_body", &seeds, tokens, fuzzing::arm_body);
}

#[test]
fn planner() {
    // The planner harness builds its estate from the bytes; random bytes are the best seeds.
    let seeds: Vec<Vec<u8>> = (0u8..32)
        .map(|i| {
            (0..64)
                .map(|j| i.wrapping_mul(31).wrapping_add(j))
                .collect()
        })
        .collect();
    run(
        "planner",
        &seeds,
        &[b"\x00", b"\xff", b"\x01\x01\x01"],
        fuzzing::planner,
    );
}
