//! The Debian package's files (`crates/natter/debian`, installed by
//! `cargo deb`): the default configuration is one the binary accepts, and
//! the systemd unit parses (with `systemd-analyze verify`, where installed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn packaged(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
}

#[test]
fn the_packaged_configuration_passes_checkconfig() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter"));
    cmd.args(["admin", "checkconfig"])
        .arg(packaged("debian/natter.toml"))
        .stdin(Stdio::null());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("NATTER_")) {
        cmd.env_remove(k);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The package installs it where the unit reads it.
    let manifest = std::fs::read_to_string(packaged("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(r#"["debian/natter.toml", "etc/natter/natter.toml", "644"]"#),
        "the deb assets install the configuration as /etc/natter/natter.toml"
    );
}

#[test]
fn the_systemd_unit_parses() {
    let unit = std::fs::read_to_string(packaged("debian/natter.service")).unwrap();
    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("an ExecStart");
    assert_eq!(
        exec,
        "ExecStart=/usr/bin/natter serve --config /etc/natter/natter.toml"
    );
    let analyze = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !analyze.is_ok_and(|s| s.success()) {
        eprintln!("systemd-analyze is not installed: the unit's syntax is not checked");
        return;
    }
    // `verify` also checks that the command exists: point it at this build.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("natter.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/natter", env!("CARGO_BIN_EXE_natter")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    // It reports unknown keys and bad values on stderr and still exits 0.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("natter.service"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
