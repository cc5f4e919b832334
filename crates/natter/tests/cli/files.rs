//! The data directory is private whatever the umask: directories 0700,
//! files (database, -wal, -shm, lock, blobs, staging files, backups) 0600.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use super::{Natter, WAIT};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every path under `dir`, `dir` included.
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    out.push(dir.to_path_buf());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[track_caller]
fn assert_private(root: &Path) -> usize {
    let mut paths = Vec::new();
    walk(root, &mut paths);
    for path in &paths {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(
            mode(path),
            want,
            "{} is {:o}, not {want:o}",
            path.display(),
            mode(path)
        );
    }
    paths.len()
}

#[tokio::test]
async fn under_umask_000_every_file_is_0600_and_every_directory_0700() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    // An old install's directory, world-readable: start-up tightens it.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut natter = Natter::spawn_umask(
        cwd.path(),
        &["serve"],
        &[
            ("NATTER_LISTEN", "127.0.0.1:0"),
            ("NATTER_DATA_DIR", data.to_str().unwrap()),
            ("NATTER_LOG", "info"),
        ],
        Some("000"),
    );
    let line = natter.wait_for_line("natter is serving");
    let addr = super::listen_addr(&line);
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let alice = super::sign_up(&mut natter, &http, &base, "+14155554300").await;
    let token = alice["access_token"].as_str().unwrap();

    // A finished upload (a blob) and a resumable one in progress (a staging file).
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![1u8; 1000]).file_name("a.bin"),
        )
        .text("type", "file");
    let res = http
        .post(format!("{base}/api/v1/media/upload"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let media: Value = res.json().await.unwrap();
    let media_id = media["media_id"].as_str().unwrap();
    let res = http
        .post(format!("{base}/api/v1/media/tus"))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5000")
        .header("upload-metadata", "type ZmlsZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{:?}", res.text().await);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let upload = location.rsplit('/').next().unwrap().to_owned();
    // Its first half: one segment blob.
    let res = http
        .patch(format!("{base}/api/v1/media/tus/{upload}"))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(vec![2u8; 2500])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204, "{:?}", res.text().await);

    // While it runs: the database with its -wal and -shm, the lock, the
    // blob, the segment.
    assert!(data.join("natter.db-wal").is_file());
    assert!(data.join("natter.db-shm").is_file());
    assert!(data.join("blobs/media").join(media_id).is_file());
    let segments = data.join("blobs/uploads").join(&upload);
    assert_eq!(std::fs::read_dir(&segments).unwrap().count(), 1);
    let checked = assert_private(&data);
    assert!(checked >= 10, "only {checked} paths");

    // A backup is as private as the data.
    let backup = cwd.path().join("backup");
    let status = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_natter"))
        .args(["admin", "backup", "--data-dir"])
        .arg(&data)
        .arg("--to")
        .arg(&backup)
        .output()
        .unwrap();
    assert!(status.status.success(), "{:?}", status);
    assert_private(&backup);
    drop(json!(null));
}
