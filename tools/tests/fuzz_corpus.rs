//! The fuzz targets on stable Rust, bounded: every input of the committed corpus (`fuzz/corpus/<target>/`) goes
//! through the target's entry point (`xlb_tools::fuzzing`), then a fixed number of mutations of them, from a
//! fixed seed (bit flips, interesting bytes, insertions, deletions, splices — libFuzzer's basic moves). It runs in
//! `cargo test`, so CI exercises the targets on every change; the real fuzzers (`cargo +nightly fuzz run …`) search
//! far longer (see `fuzz/README.md`). A failing input is written to `target/fuzz-failures/` and named in the
//! failure; set `XLB_FUZZ_MUTATIONS` to change the number of mutations per target.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use xlb_tools::fuzzing;

/// Mutations per target (unless `XLB_FUZZ_MUTATIONS` says otherwise): fewer for the packet pipeline, whose
/// every input builds two workers' pipelines (about 25 ms in a debug build), so the whole test stays within
/// seconds.
const PIPELINE_MUTATIONS: usize = 100;
const CONTROL_MUTATIONS: usize = 1000;
const CONFIG_MUTATIONS: usize = 1000;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let corpus: Vec<_> = entries
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    assert!(!corpus.is_empty(), "{}: no corpus", dir.display());
    corpus
}

/// xorshift64*: a small, fixed-seed generator (no dependency, the same sequence everywhere).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, 0x20, 0x40, 0x0a, 0x0d, b'9'];

/// One to four of libFuzzer's basic mutations of `input` (with `other` for splices).
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(8);
                let byte = rng.next() as u8;
                v.splice(i..i, std::iter::repeat_n(byte, n));
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = (1 + rng.below(16)).min(v.len() - i);
                v.drain(i..i + n);
            }
            4 if !other.is_empty() => {
                // Splice: a piece of another input at a random place.
                let from = rng.below(other.len());
                let n = (1 + rng.below(64)).min(other.len() - from);
                let at = rng.below(v.len() + 1);
                v.splice(at..at, other[from..from + n].iter().copied());
            }
            5 if !v.is_empty() => {
                v.truncate(rng.below(v.len()));
            }
            _ if v.len() >= 2 => {
                // A 16-bit field set to an edge value (lengths, ports, offsets).
                let i = rng.below(v.len() - 1);
                let edge: u16 = [0, 1, 7, 8, 20, 0x2000, 0x3fff, 0x7fff, 0xffff][rng.below(9)];
                v[i..i + 2].copy_from_slice(&edge.to_be_bytes());
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

/// Runs `target` on the corpus, then on `mutations` mutations of it; a panic fails the test with the input saved.
fn exercise(name: &str, seed: u64, mutations: usize, target: fn(&[u8])) {
    let corpus = corpus(name);
    let mutations = std::env::var("XLB_FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(mutations);
    let mut rng = Rng(seed);
    let inputs = corpus
        .iter()
        .map(|(n, d)| (n.clone(), d.clone()))
        .chain((0..mutations).map(|i| {
            let (base_name, base) = &corpus[rng.below(corpus.len())];
            let other = &corpus[rng.below(corpus.len())].1;
            (format!("{base_name}~{i}"), mutate(&mut rng, base, other))
        }));
    let mut ran = 0;
    for (label, input) in inputs {
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/fuzz-failures")
                .join(name);
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(label.replace('~', "-"));
            let _ = std::fs::write(&file, &input);
            panic!(
                "{name}: input {label} fails (saved as {}; replay with `cargo +nightly fuzz run {name} {}`)",
                file.display(),
                file.display()
            );
        }
        ran += 1;
    }
    assert_eq!(ran, corpus.len() + mutations);
}

#[test]
fn packet_pipeline_corpus_and_mutations() {
    exercise(
        "packet_pipeline",
        0x9e37_79b9_7f4a_7c15,
        PIPELINE_MUTATIONS,
        fuzzing::packet_pipeline,
    );
}

#[test]
fn control_request_corpus_and_mutations() {
    exercise(
        "control_request",
        0xd1b5_4a32_d192_ed03,
        CONTROL_MUTATIONS,
        fuzzing::control_request,
    );
}

#[test]
fn config_corpus_and_mutations() {
    exercise("config", 0x8cb9_2ba7_2f3d_8dd7, CONFIG_MUTATIONS, fuzzing::config);
}

/// The mutator changes inputs (a replay of unchanged seeds would prove little).
#[test]
fn mutations_differ_from_their_input() {
    let mut rng = Rng(1);
    let base = b"GET /v1/status HTTP/1.1\r\n\r\n";
    let changed = (0..100).filter(|_| mutate(&mut rng, base, b"xyz") != base).count();
    assert!(changed >= 90, "only {changed} of 100 mutations changed the input");
}

/// The seeds reach what they are meant to: flows forwarded through both workers, fragments reassembled, TTL 1
/// answered (so mutations of them start deep in the pipeline, not at its first check).
#[test]
fn pipeline_seeds_reach_forwarding_reassembly_and_ttl_handling() {
    let seed = |name: &str| {
        corpus("packet_pipeline")
            .into_iter()
            .find(|(n, _)| n == &format!("seed-{name}"))
            .unwrap_or_else(|| panic!("no seed {name}"))
            .1
    };
    let run = |name: &str| {
        let start = std::time::Instant::now();
        let mut workers = fuzzing::pipelines(start);
        fuzzing::run_frames(&mut workers, start, &seed(name));
        workers
    };
    use xlb_stack::drops::DropReason;
    use xlb_stack::pipeline::Pipeline;
    let conns = |w: &[xlb_tools::lb::LbPipeline], listener: usize| -> u64 {
        w.iter()
            .map(|s| s.handler().first.counters().listeners[listener].conns_total)
            .sum()
    };
    let total = |w: &[xlb_tools::lb::LbPipeline], f: &dyn Fn(&xlb_stack::counters::StackCounters) -> u64| -> u64 {
        w.iter().map(|s| f(s.counters())).sum()
    };
    assert_eq!(conns(&run("tcp_flow"), 0), 1, "the web listener's flow");
    assert_eq!(conns(&run("udp_flow"), 1), 1, "the dns listener's flow");
    assert_eq!(conns(&run("dr_flow"), 2), 1, "the DR listener's flow");
    let w = run("udp_fragments");
    assert_eq!(total(&w, &|c| c.reassembled), 1);
    assert_eq!(conns(&w, 1), 1, "the reassembled datagram opened its flow");
    assert_eq!(total(&run("udp_fragments_reversed"), &|c| c.reassembled), 1);
    assert_eq!(total(&run("ping_fragments"), &|c| c.icmp_echo_replies), 1);
    let w = run("fragment_overlap");
    assert!(total(&w, &|c| c.drops_of(DropReason::FragmentOverlap)) >= 2);
    let w = run("ttl_one");
    assert_eq!(total(&w, &|c| c.icmp_time_exceeded), 2);
    assert_eq!(conns(&w, 0) + conns(&w, 1), 0);
}
