//! Compiles the XDP filter (`bpf/xlb_filter.bpf.c`) with clang into a BPF object that
//! `src/xdp/filter.rs` embeds with `include_bytes!`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/xlb_filter.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("xlb_filter.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{arch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run `{clang}` to build the XDP filter ({e}); run `make deps` (needs clang, libbpf-dev)")
        });
    assert!(
        status.success(),
        "`{clang}` failed to compile {src}; see the error above"
    );
}
