//! Throw-away certificates for tests and the demo, made with the `openssl` command (files only, no network).

use std::path::Path;

use anyhow::{ensure, Context, Result};

use crate::lab::Netns;

/// Runs `openssl` (on the host: it only makes files).
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Makes a CA (`ca.pem`, unless the directory has one) and, per `(file stem, names)`, a P-256 certificate
/// `<stem>.pem` and key `<stem>.key` it signs (names separated by commas, DNS names or IP addresses; the first is
/// the subject's CN). A stem starting with `client` makes a client certificate (clientAuth).
pub fn make(dir: &Path, leaves: &[(&str, &str)]) -> Result<()> {
    make_with(dir, leaves, LeafKey::P256)
}

/// The key type of the leaf certificates [`make_with`] makes (the CA is always P-256).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKey {
    /// ECDSA P-256.
    P256,
    /// RSA 2048 bits.
    Rsa2048,
}

/// [`make`] with leaf keys of type `key`.
pub fn make_with(dir: &Path, leaves: &[(&str, &str)], key_type: LeafKey) -> Result<()> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let rsa = ["-newkey", "rsa:2048", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=xlb test CA",
    ]);
    if !dir.join("ca.pem").exists() {
        openssl(dir, &ca)?;
    }
    for (stem, names) in leaves {
        let name = names.split(',').next().unwrap_or(names);
        let sans: Vec<String> = names
            .split(',')
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(_) => format!("IP:{n}"),
                Err(_) => format!("DNS:{n}"),
            })
            .collect();
        let (key, csr, pem, ext) = (
            format!("{stem}.key"),
            format!("{stem}.csr"),
            format!("{stem}.pem"),
            format!("{stem}.ext"),
        );
        let mut req = vec!["req"];
        match key_type {
            LeafKey::P256 => req.extend(ec),
            LeafKey::Rsa2048 => req.extend(rsa),
        }
        let subj = format!("/CN={name}");
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req)?;
        let ext_text = if stem.starts_with("client") {
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n".to_string()
        } else {
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            )
        };
        std::fs::write(dir.join(&ext), ext_text)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        )?;
    }
    Ok(())
}

/// `openssl s_client -connect <connect> <args>` in `ns` (10 s at most), sending `input`; returns its stdout and
/// stderr together.
pub fn s_client(ns: &Netns, connect: &str, args: &[&str], input: &[u8]) -> Result<String> {
    let mut cmd = ns.command("timeout", &["10", "openssl", "s_client", "-connect", connect]);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}
