//! `xlbctl` is for management hosts: it must build without clang, libelf, libbpf or libxdp. That holds as long
//! as nothing it depends on (normal or build dependencies, transitively) is a crate that needs them, which is
//! what this checks with `cargo tree` (offline: the packages are already fetched when the tests run).

use std::process::Command;

/// Crates that need a C toolchain and the BPF/XDP libraries to build.
const DATAPATH_CRATES: &[&str] = &[
    "libbpf-sys",
    "libxdp-sys",
    "xsk-rs",
    "bindgen",
    "clang-sys",
    "libbpf-rs",
];

/// The names of the crates in `package`'s normal and build dependency tree.
fn dependency_names(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            package,
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn xlbctl_depends_on_nothing_that_needs_clang_or_libbpf() {
    let ctl = dependency_names("xlbctl");
    assert!(
        ctl.iter().any(|c| c == "xlb-api"),
        "the tree lists xlbctl's dependencies: {ctl:?}"
    );
    for c in DATAPATH_CRATES {
        assert!(
            !ctl.iter().any(|d| d == c),
            "xlbctl depends on {c}, which needs clang/libbpf to build"
        );
    }
    // The same check sees them in the datapath's tree, so it would see them if xlbctl grew one.
    let stack = dependency_names("xlb-stack");
    assert!(stack.iter().any(|d| d == "libbpf-sys" || d == "xsk-rs"), "{stack:?}");
}
