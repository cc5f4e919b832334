//! Media: the seed's multipart upload, resumable (tus) uploads, downloads
//! with ranges, thumbnails, who may fetch what, media in messages and
//! profiles, limits, quota and garbage collection.

use std::io::Cursor;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{Answer, TestApp, TestUser, WAIT, mls_app};

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic, incompressible-looking bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub(crate) fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A valid PNG whose header declares `width`×`height` pixels: a few hundred
/// bytes that would decode to gigabytes (a decompression bomb).
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(1, 1);
    // IHDR data starts at byte 16 (8 signature + 4 length + 4 type).
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    // Recompute the IHDR CRC over type + data (bytes 12..29).
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

async fn pair(app: &TestApp) -> (TestUser, TestUser, String) {
    let alice = app.signup("+14155550101", "Alice").await;
    let bob = app.signup("+14155550102", "Bob").await;
    let chat = alice.direct_chat_with(app, &bob).await;
    (alice, bob, chat)
}

async fn blob_files(app: &TestApp) -> usize {
    app.media_blobs().await
}

#[tokio::test]
async fn the_seed_upload_round_trips_byte_exact_and_only_members_may_fetch_it() {
    let app = TestApp::start().await;
    let (alice, bob, chat) = pair(&app).await;
    let carol = app.signup("+14155550103", "Carol").await;
    let data = noise(1024, 1);

    let media = alice
        .uploads(&app, data.clone(), "file", Some(&chat))
        .await
        .ok(201);
    let id = media["media_id"].as_str().unwrap().to_owned();
    assert_eq!(media["size"], 1024);
    assert_eq!(media["type"], "file");
    assert_eq!(media["sha256"], sha_hex(&data));
    assert_eq!(media["content_type"], "application/octet-stream");
    assert_eq!(media["url"], format!("/api/v1/media/{id}"));
    assert_eq!(media["chat_id"], chat.as_str());
    assert_eq!(media["filename"], "upload.bin");

    let got = alice
        .download(&app, &format!("/api/v1/media/{id}"), &[])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.bytes, data);
    assert_eq!(got.header("content-length"), "1024");
    assert_eq!(got.header("content-type"), "application/octet-stream");
    assert_eq!(got.header("etag"), format!("\"{}\"", sha_hex(&data)));
    assert_eq!(got.header("x-content-type-options"), "nosniff");
    assert!(got.header("content-security-policy").contains("sandbox"));
    assert!(got.header("content-disposition").starts_with("attachment"));

    // Not shared yet: Bob (a member of the chat) cannot fetch it, exactly
    // like an id that does not exist; Carol neither.
    let unknown = format!("/api/v1/media/{}", uuid_like());
    for user in [&bob, &carol] {
        let denied = user.get(&app, &format!("/api/v1/media/{id}")).await;
        denied.expect(404, "media_not_found");
        let missing = user.get(&app, &unknown).await;
        assert_eq!(denied.body, missing.body, "forbidden looks like missing");
    }
    user_sends_media(&alice, &app, &chat, &id, "file")
        .await
        .ok(201);
    let got = bob
        .download(&app, &format!("/api/v1/media/{id}"), &[])
        .await;
    assert_eq!((got.status.as_u16(), got.bytes), (200, data));
    carol
        .get(&app, &format!("/api/v1/media/{id}"))
        .await
        .expect(404, "media_not_found");
    // Malformed ids are missing ids too.
    alice
        .get(&app, "/api/v1/media/not-an-id")
        .await
        .expect(404, "media_not_found");
}

fn uuid_like() -> String {
    "01a2209e-91c8-76b5-99b4-754b2065aa94".to_owned()
}

async fn user_sends_media(
    user: &TestUser,
    app: &TestApp,
    chat: &str,
    media: &str,
    kind: &str,
) -> Answer {
    user.post(
        app,
        "/api/v1/messages",
        json!({"chat_id": chat, "type": kind, "media_id": media, "content": "look"}),
    )
    .await
}

#[tokio::test]
async fn ranges_are_served_as_206_and_outside_ranges_as_416() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550101", "Alice").await;
    let data = noise(1000, 2);
    let id = alice.uploaded(&app, data.clone(), "file").await;
    let path = format!("/api/v1/media/{id}");

    let part = alice
        .download(&app, &path, &[("range", "bytes=100-199")])
        .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.bytes, data[100..200]);
    assert_eq!(part.header("content-range"), "bytes 100-199/1000");
    assert_eq!(part.header("content-length"), "100");

    let tail = alice.download(&app, &path, &[("range", "bytes=-10")]).await;
    assert_eq!((tail.status.as_u16(), &tail.bytes[..]), (206, &data[990..]));
    let open = alice
        .download(&app, &path, &[("range", "bytes=995-")])
        .await;
    assert_eq!((open.status.as_u16(), &open.bytes[..]), (206, &data[995..]));
    let last = alice
        .download(&app, &path, &[("range", "bytes=999-5000")])
        .await;
    assert_eq!((last.status.as_u16(), &last.bytes[..]), (206, &data[999..]));

    let outside = alice
        .download(&app, &path, &[("range", "bytes=1000-")])
        .await;
    assert_eq!(outside.status, 416);
    assert_eq!(outside.header("content-range"), "bytes */1000");

    // Several ranges, or a stale If-Range: the whole thing.
    let several = alice
        .download(&app, &path, &[("range", "bytes=0-1,5-6")])
        .await;
    assert_eq!((several.status.as_u16(), several.bytes.len()), (200, 1000));
    let stale = alice
        .download(
            &app,
            &path,
            &[("range", "bytes=0-1"), ("if-range", "\"old\"")],
        )
        .await;
    assert_eq!(stale.status, 200);
    // A cached copy is still good.
    let etag = part.header("etag").to_owned();
    let cached = alice
        .download(&app, &path, &[("if-none-match", &etag)])
        .await;
    assert_eq!((cached.status.as_u16(), cached.bytes.len()), (304, 0));
    let weak = format!("W/{etag}");
    let cached = alice
        .download(&app, &path, &[("if-none-match", &weak)])
        .await;
    assert_eq!(cached.status, 304, "weak comparison");
}

#[tokio::test]
async fn size_limits_hold_at_n_and_n_plus_one_per_type() {
    let app = TestApp::start_with(|c| {
        c.media.max_file_bytes = 1024;
        c.media.max_image_bytes = 4096;
    })
    .await;
    let alice = app.signup("+14155550101", "Alice").await;
    alice
        .uploads(&app, noise(1024, 3), "file", None)
        .await
        .ok(201);
    alice
        .uploads(&app, noise(1025, 3), "file", None)
        .await
        .expect(413, "payload_too_large");
    // The limit is the declared type's: 1025 bytes of image is fine.
    let mut img = png(4, 4);
    img.resize(1025, 0);
    alice.uploads(&app, img, "image", None).await.ok(201);
    // Resumable uploads are refused at creation.
    tus_create(&app, &alice, 1024, "file").await.ok(201);
    tus_create(&app, &alice, 1025, "file")
        .await
        .expect(413, "payload_too_large");
}

#[tokio::test]
async fn a_declared_type_that_the_bytes_contradict_is_415() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550101", "Alice").await;
    alice
        .uploads(&app, noise(2000, 4), "image", None)
        .await
        .expect(415, "media_type_mismatch");
    alice
        .uploads(&app, png(8, 8), "video", None)
        .await
        .expect(415, "media_type_mismatch");
    // `file` takes anything and says what it found; `encrypted` is opaque.
    let found = alice.uploads(&app, png(8, 8), "file", None).await.ok(201);
    assert_eq!(found["content_type"], "image/png");
    // Found types a browser could run are served as opaque bytes.
    let html = b"<html><script>alert(1)</script></html>".to_vec();
    let page = alice.uploads(&app, html, "file", None).await.ok(201);
    let id = page["media_id"].as_str().unwrap();
    let got = alice
        .download(&app, &format!("/api/v1/media/{id}"), &[])
        .await;
    assert_eq!(got.header("content-type"), "application/octet-stream");
    assert!(got.header("content-disposition").starts_with("attachment"));
    let opaque = alice
        .uploads(&app, png(8, 8), "encrypted", None)
        .await
        .ok(201);
    assert_eq!(opaque["content_type"], "application/octet-stream");
}

#[tokio::test]
async fn images_get_thumbnails_and_encrypted_blobs_never_do() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550101", "Alice").await;
    let image = alice
        .uploads(&app, png(640, 480), "image", None)
        .await
        .ok(201);
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(640), Some(480))
    );
    assert_eq!(image["content_type"], "image/png");
    let id = image["media_id"].as_str().unwrap();
    assert_eq!(
        image["thumbnail_url"],
        format!("/api/v1/media/{id}/thumbnail")
    );
    let thumb = alice
        .download(&app, &format!("/api/v1/media/{id}/thumbnail"), &[])
        .await;
    assert_eq!(thumb.status, 200);
    assert_eq!(thumb.header("content-type"), "image/jpeg");
    let decoded = image::load_from_memory(&thumb.bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 240));
    let original = alice
        .download(&app, &format!("/api/v1/media/{id}"), &[])
        .await;
    assert!(original.header("content-disposition").starts_with("inline"));

    let opaque = alice
        .uploads(&app, png(640, 480), "encrypted", None)
        .await
        .ok(201);
    assert_eq!(opaque["thumbnail_url"], Value::Null);
    assert_eq!(opaque["width"], Value::Null);
    let id = opaque["media_id"].as_str().unwrap();
    alice
        .get(&app, &format!("/api/v1/media/{id}/thumbnail"))
        .await
        .expect(404, "media_not_found");
}

#[tokio::test]
async fn an_image_bomb_is_refused_without_being_decoded() {
    let app = TestApp::start_with(|c| c.media.max_image_pixels = 10_000).await;
    let alice = app.signup("+14155550101", "Alice").await;
    // 100,000 × 100,000 pixels declared in 70 bytes.
    let bomb = png_bomb(100_000, 100_000);
    assert!(bomb.len() < 100);
    alice
        .uploads(&app, bomb, "image", None)
        .await
        .expect(422, "image_rejected");
    // The pixel limit at N and N+1.
    alice
        .uploads(&app, png(100, 100), "image", None)
        .await
        .ok(201);
    alice
        .uploads(&app, png(101, 100), "image", None)
        .await
        .expect(422, "image_rejected");
    // A PNG signature followed by garbage.
    let mut broken = png(50, 50);
    broken.truncate(60);
    alice
        .uploads(&app, broken, "image", None)
        .await
        .expect(422, "image_rejected");
    assert_eq!(blob_files(&app).await, 1, "refused uploads leave no blob");
}

#[tokio::test]
async fn malformed_uploads_get_clear_errors() {
    let app = TestApp::start().await;
    let (alice, _bob, _chat) = pair(&app).await;
    let url = format!("{}/api/v1/media/upload", app.base);
    // Not multipart.
    let answer = TestApp::answer(
        app.http
            .post(&url)
            .bearer_auth(&alice.token)
            .json(&json!({"file": "x", "type": "file"})),
    )
    .await;
    answer.expect(415, "unsupported_media_type");
    // No token.
    let form = reqwest::multipart::Form::new().text("type", "file");
    TestApp::answer(app.http.post(&url).multipart(form))
        .await
        .expect(401, "unauthorized");
    // No file; no type; a bad type; an unknown part; a bad chat.
    let cases: Vec<(reqwest::multipart::Form, u16, &str)> = vec![
        (
            reqwest::multipart::Form::new().text("type", "file"),
            422,
            "validation_failed",
        ),
        (
            reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(vec![1, 2])),
            422,
            "validation_failed",
        ),
        (
            reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(vec![1, 2]))
                .text("type", "audio"),
            422,
            "validation_failed",
        ),
        (
            reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(vec![1, 2]))
                .text("type", "file")
                .text("caption", "hi"),
            422,
            "validation_failed",
        ),
        (
            reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(vec![1, 2]))
                .text("type", "file")
                .text("chat_id", "chat_789"),
            422,
            "validation_failed",
        ),
        (
            reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(vec![1, 2]))
                .text("type", "file")
                .text("chat_id", uuid_like()),
            404,
            "chat_not_found",
        ),
    ];
    for (form, status, code) in cases {
        TestApp::answer(
            app.http
                .post(&url)
                .bearer_auth(&alice.token)
                .multipart(form),
        )
        .await
        .expect(status, code);
    }
    assert_eq!(blob_files(&app).await, 0);
}

#[tokio::test]
async fn the_quota_and_the_upload_rate_limit_hold_at_n_and_n_plus_one() {
    let app = TestApp::start_with(|c| {
        c.media.quota_bytes_per_user = 2048;
        c.media.max_pending_uploads_per_user = 1;
    })
    .await;
    let alice = app.signup("+14155550101", "Alice").await;
    alice
        .uploads(&app, noise(1024, 5), "file", None)
        .await
        .ok(201);
    alice
        .uploads(&app, noise(1024, 6), "file", None)
        .await
        .ok(201);
    alice
        .uploads(&app, noise(1, 7), "file", None)
        .await
        .expect(413, "storage_quota_exceeded");
    tus_create(&app, &alice, 1, "file")
        .await
        .expect(413, "storage_quota_exceeded");

    let bob = app.signup("+14155550102", "Bob").await;
    tus_create(&app, &bob, 10, "file").await.ok(201);
    tus_create(&app, &bob, 10, "file")
        .await
        .expect(409, "too_many_uploads");

    let app = TestApp::start_with(|c| c.rate_limits.uploads_per_user.burst = 2).await;
    let alice = app.signup("+14155550101", "Alice").await;
    alice
        .uploads(&app, noise(10, 8), "file", None)
        .await
        .ok(201);
    alice
        .uploads(&app, noise(10, 9), "file", None)
        .await
        .ok(201);
    let refused = alice.uploads(&app, noise(10, 10), "file", None).await;
    refused.expect(429, "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));
}

// ---- tus ---------------------------------------------------------------

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn tus_create(app: &TestApp, user: &TestUser, length: u64, kind: &str) -> Answer {
    let req = app
        .http
        .post(format!("{}/api/v1/media/tus", app.base))
        .bearer_auth(&user.token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", length.to_string())
        .header(
            "upload-metadata",
            format!(
                "type {},filename {},filetype {}",
                b64(kind),
                b64("clip.bin"),
                b64("x/y")
            ),
        );
    TestApp::answer(req).await
}

async fn tus_patch(
    app: &TestApp,
    user: &TestUser,
    location: &str,
    offset: u64,
    body: impl Into<reqwest::Body>,
) -> Answer {
    let req = app
        .http
        .patch(format!("{}{location}", app.base))
        .bearer_auth(&user.token)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(body);
    TestApp::answer(req).await
}

async fn tus_offset(app: &TestApp, user: &TestUser, location: &str) -> Option<u64> {
    let res = app
        .http
        .head(format!("{}{location}", app.base))
        .bearer_auth(&user.token)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["tus-resumable"], "1.0.0");
    if res.status() == 404 {
        return None;
    }
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    Some(
        res.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap(),
    )
}

fn location(answer: &Answer) -> String {
    answer.headers["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_tus_upload_cut_at_half_resumes_and_completes_with_the_right_hash() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550101", "Alice").await;
    let data = noise(4 * 1024 * 1024, 11);
    let created = tus_create(&app, &alice, data.len() as u64, "video").await;
    assert_eq!(created.status, 201, "{created:?}");
    assert!(created.headers.contains_key("upload-expires"));
    let loc = location(&created);
    assert!(loc.starts_with("/api/v1/media/tus/"));
    assert_eq!(tus_offset(&app, &alice, &loc).await, Some(0));

    // The first half, then the connection breaks.
    let half = data.len() / 2;
    let first: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(data[..half].to_vec()),
        Err(std::io::Error::other("the network dropped")),
    ];
    let cut = app
        .http
        .patch(format!("{}{loc}", app.base))
        .bearer_auth(&alice.token)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            first,
        )))
        .send()
        .await;
    assert!(cut.is_err(), "the request broke off");

    // The server kept what arrived (at most half), durably; resume from there.
    let offset = tokio::time::timeout(WAIT, async {
        loop {
            // The server notices the break asynchronously.
            if let Some(o) = tus_offset(&app, &alice, &loc).await
                && o > 0
            {
                return o;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the server records the received part");
    assert!(offset <= half as u64, "{offset}");
    let offset_usize = usize::try_from(offset).unwrap();
    // A PATCH at the wrong offset is refused.
    tus_patch(&app, &alice, &loc, 0, data[..10].to_vec())
        .await
        .expect(409, "upload_offset_mismatch");
    // The rest completes it. Random bytes declared `video` are not one:
    // completion is refused as a plain upload would be, and the upload is gone.
    let rest = tus_patch(&app, &alice, &loc, offset, data[offset_usize..].to_vec()).await;
    rest.expect(415, "media_type_mismatch");
    assert_eq!(tus_offset(&app, &alice, &loc).await, None);

    // The same, declared `file`: completes, with the plain upload's result.
    let created = tus_create(&app, &alice, data.len() as u64, "file")
        .await
        .ok_status(201);
    let loc = location(&created);
    let answer = tus_patch(&app, &alice, &loc, 0, data[..half].to_vec()).await;
    assert_eq!(answer.status, 204);
    assert_eq!(answer.headers["upload-offset"], half.to_string().as_str());
    let answer = tus_patch(&app, &alice, &loc, half as u64, data[half..].to_vec()).await;
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(
        answer.headers["upload-offset"],
        data.len().to_string().as_str()
    );
    assert_eq!(
        tus_offset(&app, &alice, &loc).await,
        Some(data.len() as u64)
    );

    let id = loc.rsplit('/').next().unwrap();
    let got = alice
        .download(&app, &format!("/api/v1/media/{id}"), &[])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("etag"), format!("\"{}\"", sha_hex(&data)));
    assert!(got.bytes == data, "byte-exact");
    assert!(got.header("content-disposition").contains("clip.bin"));
}

#[tokio::test]
async fn tus_speaks_the_protocol_and_refuses_what_it_must() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550101", "Alice").await;
    let bob = app.signup("+14155550102", "Bob").await;

    let options = app
        .http
        .request(Method::OPTIONS, format!("{}/api/v1/media/tus", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 204);
    assert_eq!(options.headers()["tus-version"], "1.0.0");
    assert_eq!(options.headers()["tus-resumable"], "1.0.0");
    let ext = options.headers()["tus-extension"].to_str().unwrap();
    for e in ["creation", "termination", "expiration"] {
        assert!(ext.contains(e), "{ext}");
    }
    assert_eq!(options.headers()["tus-max-size"], "2147483648");

    // No Tus-Resumable: 412 with the supported version.
    let answer = TestApp::answer(
        app.http
            .post(format!("{}/api/v1/media/tus", app.base))
            .bearer_auth(&alice.token)
            .header("upload-length", "10"),
    )
    .await;
    answer.expect(412, "tus_version_unsupported");
    assert_eq!(answer.headers["tus-version"], "1.0.0");
    // No Upload-Length; a bad one; deferred length.
    for (name, value) in [
        ("x-none", "1"),
        ("upload-length", "-1"),
        ("upload-defer-length", "1"),
    ] {
        let mut req = app
            .http
            .post(format!("{}/api/v1/media/tus", app.base))
            .bearer_auth(&alice.token)
            .header("tus-resumable", "1.0.0")
            .header(name, value);
        if name == "upload-defer-length" {
            req = req.header("upload-metadata", format!("type {}", b64("file")));
        }
        TestApp::answer(req).await.expect(400, "invalid_parameter");
    }
    // Metadata that is not base64; no type.
    let bad_meta = TestApp::answer(
        app.http
            .post(format!("{}/api/v1/media/tus", app.base))
            .bearer_auth(&alice.token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", "10")
            .header("upload-metadata", "type !!!"),
    )
    .await;
    bad_meta.expect(400, "invalid_parameter");
    let twice = TestApp::answer(
        app.http
            .post(format!("{}/api/v1/media/tus", app.base))
            .bearer_auth(&alice.token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", "10")
            .header(
                "upload-metadata",
                format!("type {},type {}", b64("file"), b64("image")),
            ),
    )
    .await;
    twice.expect(400, "invalid_parameter");

    let loc = location(&tus_create(&app, &alice, 10, "file").await.ok_status(201));
    // Wrong content type.
    let answer = TestApp::answer(
        app.http
            .patch(format!("{}{loc}", app.base))
            .bearer_auth(&alice.token)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", "0")
            .header("content-type", "application/octet-stream")
            .body(vec![0u8; 5]),
    )
    .await;
    answer.expect(415, "unsupported_media_type");
    // Past the declared length: N fits, N+1 does not.
    tus_patch(&app, &alice, &loc, 0, vec![0u8; 11])
        .await
        .expect(413, "payload_too_large");
    // A chunked body (no Content-Length) that goes past the length is
    // refused and keeps none of its bytes.
    let part: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![1u8; 4]), Ok(vec![2u8; 7])];
    let answer = TestApp::answer(
        app.http
            .patch(format!("{}{loc}", app.base))
            .bearer_auth(&alice.token)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(part))),
    )
    .await;
    answer.expect(413, "payload_too_large");
    assert_eq!(tus_offset(&app, &alice, &loc).await, Some(0));
    // A wrong offset is a 409 whatever the body's length.
    tus_patch(&app, &alice, &loc, u64::MAX, vec![0u8; 5])
        .await
        .expect(409, "upload_offset_mismatch");
    // Someone else's upload does not exist for them.
    assert_eq!(tus_offset(&app, &bob, &loc).await, None);
    tus_patch(&app, &bob, &loc, 0, vec![0u8; 5])
        .await
        .expect(404, "upload_not_found");
    // Termination.
    let delete = |user: &TestUser| {
        app.http
            .delete(format!("{}{loc}", app.base))
            .bearer_auth(&user.token)
            .header("tus-resumable", "1.0.0")
    };
    TestApp::answer(delete(&bob))
        .await
        .expect(404, "upload_not_found");
    assert_eq!(TestApp::answer(delete(&alice)).await.status, 204);
    assert_eq!(tus_offset(&app, &alice, &loc).await, None);
    TestApp::answer(delete(&alice))
        .await
        .expect(404, "upload_not_found");
    tus_patch(&app, &alice, &loc, 0, vec![0u8; 5])
        .await
        .expect(404, "upload_not_found");

    // An empty upload is complete at creation.
    let created = tus_create(&app, &alice, 0, "file").await.ok_status(201);
    let loc = location(&created);
    assert_eq!(tus_offset(&app, &alice, &loc).await, Some(0));
    let id = loc.rsplit('/').next().unwrap();
    let got = alice
        .download(&app, &format!("/api/v1/media/{id}"), &[])
        .await;
    assert_eq!((got.status.as_u16(), got.bytes.len()), (200, 0));
}

#[tokio::test]
async fn unfinished_tus_uploads_expire_and_are_collected() {
    let app = TestApp::start_with(|c| c.media.upload_expiry_secs = 1).await;
    let alice = app.signup("+14155550101", "Alice").await;
    let loc = location(&tus_create(&app, &alice, 100, "file").await.ok_status(201));
    tus_patch(&app, &alice, &loc, 0, vec![1u8; 50])
        .await
        .ok(204);
    assert_eq!(segment_blobs(&app).await, 1, "one request, one segment");
    let staging = app.data_dir().join("uploads").join("tus");
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "no request's file outlives it"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(tus_offset(&app, &alice, &loc).await, None, "expired");
    tus_patch(&app, &alice, &loc, 50, vec![1u8; 50])
        .await
        .expect(404, "upload_not_found");
    app.housekeeping().await;
    assert_eq!(segment_blobs(&app).await, 0, "its bytes are gone");
}

/// How many segments of resumable uploads the blob store holds.
async fn segment_blobs(app: &TestApp) -> usize {
    app.blobs_under("uploads").await
}

// ---- tus across nodes ----------------------------------------------------

/// One node of a cluster, as a load balancer sees it: its own data
/// directory and port, the cluster's database, bus and bucket.
struct Node {
    server: natter_server::RunningServer,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// What the nodes of the test cluster share.
struct Cluster<'a> {
    database: &'a natter_testkit::pg::TestDatabase<'a>,
    nats: &'a natter_testkit::engines::NatsServer,
    prefix: String,
    s3: &'a natter_testkit::engines::S3Server,
    bucket: String,
    sms: &'a natter_testkit::SmsInbox,
}

impl Cluster<'_> {
    /// Starts a node (in time, or the test fails).
    async fn node(&self) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut config = natter_server::Config {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().join("data"),
            sms_webhook_url: Some(self.sms.url().to_owned()),
            bus: Some(self.nats.url()),
            blobs: Some(format!("s3://{}", self.bucket)),
            ..natter_server::Config::default()
        };
        config.sms.timeout_secs = 5;
        config.nats.prefix.clone_from(&self.prefix);
        config.store.url =
            Some(serde_json::from_value(Value::String(self.database.url())).unwrap());
        config.store.pool_size = 4;
        config.s3.endpoint = Some(self.s3.url().to_owned());
        config.s3.allow_http = true;
        config.s3.access_key_id = Some("test".to_owned());
        config.s3.secret_access_key = Some(serde_json::from_str("\"test\"").unwrap());
        config.validate().unwrap();
        let server = tokio::time::timeout(WAIT, natter_server::RunningServer::start(config))
            .await
            .expect("the node starts in time")
            .unwrap();
        Node {
            base: format!("http://{}", server.local_addr()),
            http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
            server,
            _dir: dir,
        }
    }
}

impl Node {
    fn tus(&self, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
    }

    async fn patch(&self, location: &str, token: &str, offset: usize, body: &[u8]) -> Answer {
        TestApp::answer(
            self.tus(Method::PATCH, location, token)
                .header("upload-offset", offset.to_string())
                .header("content-type", "application/offset+octet-stream")
                .body(body.to_vec()),
        )
        .await
    }

    async fn offset(&self, location: &str, token: &str) -> String {
        let res = self
            .tus(Method::HEAD, location, token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.headers()["upload-offset"].to_str().unwrap().to_owned()
    }

    async fn stop(self) {
        tokio::time::timeout(WAIT * 3, self.server.shutdown())
            .await
            .expect("the node stops in time");
    }
}

#[tokio::test]
async fn a_tus_upload_started_on_one_node_finishes_on_another() {
    let pg = natter_testkit::pg::PgCluster::from_env_or_start().unwrap();
    let database = pg.empty_database().await.unwrap();
    let nats = natter_testkit::engines::NatsServer::start().await.unwrap();
    let s3 = natter_testkit::engines::S3Server::start().await.unwrap();
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let bucket = format!("natter-{unique}");
    s3.create_bucket(&bucket).await.unwrap();
    let sms = natter_testkit::SmsInbox::start().await.unwrap();
    let cluster = Cluster {
        database: &database,
        nats: &nats,
        prefix: format!("natter-{unique}"),
        s3: &s3,
        bucket,
        sms: &sms,
    };
    let a = cluster.node().await;
    let b = cluster.node().await;
    let client = natter_client::Client::with_transport(
        std::sync::Arc::new(
            natter_client::NativeTransport::with_client(a.http.clone(), WAIT).unwrap(),
        ),
        &a.base,
    );
    let alice = natter_testkit::TestUser::sign_up(&client, &sms, "+14155550101", "Alice")
        .await
        .unwrap();
    let token = alice.token();

    // Created and half sent on node A.
    let data = noise(3 * 1024 * 1024 + 17, 41);
    let half = data.len() / 2 + 3;
    let created = TestApp::answer(
        a.tus(Method::POST, "/api/v1/media/tus", token)
            .header("upload-length", data.len().to_string())
            .header("upload-metadata", format!("type {}", b64("file"))),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let loc = location(&created);
    let first = a.patch(&loc, token, 0, &data[..half]).await;
    assert_eq!(first.status, 204, "{first:?}");
    assert_eq!(first.headers["upload-offset"], half.to_string().as_str());

    // Node B sees the offset; a PATCH there from a stale offset is refused.
    assert_eq!(b.offset(&loc, token).await, half.to_string());
    b.patch(&loc, token, 0, &data[..10])
        .await
        .expect(409, "upload_offset_mismatch");
    assert_eq!(a.offset(&loc, token).await, half.to_string());

    // The rest, on node B, finishes it.
    let rest = b.patch(&loc, token, half, &data[half..]).await;
    assert_eq!(rest.status, 204, "{rest:?}");
    assert_eq!(
        rest.headers["upload-offset"],
        data.len().to_string().as_str()
    );
    // And A, at the offset it last knew, is refused.
    a.patch(&loc, token, half, &data[half..])
        .await
        .expect(409, "upload_offset_mismatch");

    // Downloaded from A: the same bytes, the same SHA-256.
    let id = loc.rsplit('/').next().unwrap();
    let got = tokio::time::timeout(
        WAIT,
        a.http
            .get(format!("{}/api/v1/media/{id}", a.base))
            .bearer_auth(token)
            .send(),
    )
    .await
    .expect("the download answers in time")
    .unwrap();
    assert_eq!(got.status(), 200);
    let etag = got.headers()["etag"].to_str().unwrap().to_owned();
    let bytes = got.bytes().await.unwrap();
    assert!(bytes[..] == data[..], "byte-exact");
    assert_eq!(sha_hex(&bytes), sha_hex(&data));
    assert_eq!(etag, format!("\"{}\"", sha_hex(&data)));
    let listing = |prefix: &'static str| {
        let url = format!(
            "{}/{}?list-type=2&prefix={prefix}",
            s3.url(),
            cluster.bucket
        );
        let http = a.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(
        listing("uploads/").await.matches("<Key>").count(),
        0,
        "the segments are gone once the blob is written"
    );

    // Two nodes appending at one offset at once: exactly one is recorded.
    let other = noise(4000, 42);
    let created = TestApp::answer(
        a.tus(Method::POST, "/api/v1/media/tus", token)
            .header("upload-length", other.len().to_string())
            .header("upload-metadata", format!("type {}", b64("file"))),
    )
    .await;
    let loc = location(&created);
    let (on_a, on_b) = tokio::join!(
        a.patch(&loc, token, 0, &other[..1000]),
        b.patch(&loc, token, 0, &other[..2000])
    );
    let won: Vec<usize> = [(&on_a, 1000), (&on_b, 2000)]
        .into_iter()
        .filter(|(answer, _)| answer.status == 204)
        .map(|(_, len)| len)
        .collect();
    assert_eq!(won.len(), 1, "one wins: {on_a:?} {on_b:?}");
    for answer in [&on_a, &on_b].into_iter().filter(|a| a.status != 204) {
        answer.expect(409, "upload_offset_mismatch");
    }
    assert_eq!(b.offset(&loc, token).await, won[0].to_string());
    let done = a.patch(&loc, token, won[0], &other[won[0]..]).await;
    assert_eq!(done.status, 204, "{done:?}");
    let id = loc.rsplit('/').next().unwrap();
    let got = b
        .http
        .get(format!("{}/api/v1/media/{id}", b.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == other[..], "the winner's bytes, then the rest");
    assert_eq!(listing("uploads/").await.matches("<Key>").count(), 0);

    a.stop().await;
    b.stop().await;
}

// ---- media in messages and profiles --------------------------------------

#[tokio::test]
async fn messages_carry_only_media_the_sender_may_use() {
    let app = TestApp::start().await;
    let (alice, bob, chat) = pair(&app).await;
    let image = alice.uploaded(&app, png(16, 16), "image").await;
    let file = alice.uploaded(&app, noise(100, 12), "file").await;
    let secret = alice.uploaded(&app, noise(100, 13), "encrypted").await;
    let bobs = bob.uploaded(&app, noise(100, 14), "file").await;

    let sent = user_sends_media(&alice, &app, &chat, &image, "image")
        .await
        .ok(201);
    assert_eq!(sent["media_id"], image.as_str());
    assert_eq!(sent["type"], "image");
    // A caption is optional with media.
    alice
        .post(
            &app,
            "/api/v1/messages",
            json!({"chat_id": chat, "type": "file", "media_id": file}),
        )
        .await
        .ok(201);
    // Someone else's unshared upload; an unknown id; a malformed id.
    for media in [bobs.as_str(), &uuid_like(), "media_1"] {
        user_sends_media(&alice, &app, &chat, media, "file")
            .await
            .expect(422, "validation_failed");
    }
    // Type mismatches; encrypted blobs belong in encrypted chats.
    user_sends_media(&alice, &app, &chat, &file, "image")
        .await
        .expect(422, "validation_failed");
    user_sends_media(&alice, &app, &chat, &secret, "file")
        .await
        .expect(422, "validation_failed");
    alice
        .post(
            &app,
            "/api/v1/messages",
            json!({"chat_id": chat, "type": "image", "content": "x"}),
        )
        .await
        .expect(422, "validation_failed");
    alice
        .post(
            &app,
            "/api/v1/messages",
            json!({"chat_id": chat, "type": "text", "content": "x", "media_id": file}),
        )
        .await
        .expect(422, "validation_failed");

    // Bob received it, may fetch it, and may forward it to another chat.
    let history = bob
        .get(&app, &format!("/api/v1/chats/{chat}/messages"))
        .await
        .ok(200);
    assert!(
        history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["media_id"] == image.as_str())
    );
    let carol = app.signup("+14155550103", "Carol").await;
    let other = bob.direct_chat_with(&app, &carol).await;
    user_sends_media(&bob, &app, &other, &image, "image")
        .await
        .ok(201);
    let got = carol
        .download(&app, &format!("/api/v1/media/{image}"), &[])
        .await;
    assert_eq!(got.status, 200);

    // Encrypted chats take encrypted blobs, with the key in the ciphertext.
    let secret_chat = alice
        .post(
            &app,
            "/api/v1/chats",
            json!({"type": "group", "name": "Sealed", "participants": [bob.user_id], "encrypted": true}),
        )
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sealed = json!({"chat_id": secret_chat, "type": "image", "media_id": secret, "ciphertext": mls_app(&secret_chat, 0)});
    alice.post(&app, "/api/v1/messages", sealed).await.ok(201);
    let plain = json!({"chat_id": secret_chat, "type": "image", "media_id": image, "ciphertext": mls_app(&secret_chat, 0)});
    alice
        .post(&app, "/api/v1/messages", plain)
        .await
        .expect(422, "validation_failed");

    // Deleting the message unshares the media: the members lose access.
    let doc = alice.uploaded(&app, noise(100, 20), "file").await;
    let sent = user_sends_media(&alice, &app, &chat, &doc, "file")
        .await
        .ok(201);
    let got = bob
        .download(&app, &format!("/api/v1/media/{doc}"), &[])
        .await;
    assert_eq!(got.status, 200);
    let message = sent["id"].as_str().unwrap();
    alice
        .delete(&app, &format!("/api/v1/messages/{message}"))
        .await
        .ok(204);
    bob.get(&app, &format!("/api/v1/media/{doc}"))
        .await
        .expect(404, "media_not_found");
    let own = alice
        .download(&app, &format!("/api/v1/media/{doc}"), &[])
        .await;
    assert_eq!(
        own.status, 200,
        "the uploader keeps it until it is collected"
    );
}

#[tokio::test]
async fn a_profile_picture_shows_in_profiles_and_contacts() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550101", "Alice").await;
    let bob = app.signup("+14155550102", "Bob").await;
    bob.adds_contact(&app, &alice).await;
    let pic = alice.uploaded(&app, png(64, 64), "image").await;
    let url = format!("/api/v1/media/{pic}");

    let me = alice
        .patch(
            &app,
            "/api/v1/users/me",
            json!({"profile_pic_media_id": pic}),
        )
        .await
        .ok(200);
    assert_eq!(me["profile_pic_url"], url.as_str());
    let profile = bob
        .get(&app, &format!("/api/v1/users/{}", alice.user_id))
        .await
        .ok(200);
    assert_eq!(profile["profile_pic_url"], url.as_str());
    let contacts = bob.get(&app, "/api/v1/users/contacts").await.ok(200);
    assert_eq!(contacts["contacts"][0]["profile_pic_url"], url.as_str());
    let got = bob.download(&app, &url, &[]).await;
    assert_eq!(
        got.status, 200,
        "anyone signed in may fetch a profile picture"
    );

    // Only a finished image of one's own.
    let file = alice.uploaded(&app, noise(10, 15), "file").await;
    let bobs = bob.uploaded(&app, png(8, 8), "image").await;
    for bad in [file.as_str(), bobs.as_str(), "nope"] {
        alice
            .patch(
                &app,
                "/api/v1/users/me",
                json!({"profile_pic_media_id": bad}),
            )
            .await
            .expect(422, "validation_failed");
    }
    // "" removes it.
    let me = alice
        .patch(
            &app,
            "/api/v1/users/me",
            json!({"profile_pic_media_id": ""}),
        )
        .await
        .ok(200);
    assert_eq!(me["profile_pic_url"], Value::Null);
    bob.get(&app, &url).await.expect(404, "media_not_found");
}

#[tokio::test]
async fn garbage_collection_removes_unreferenced_uploads_and_never_referenced_ones() {
    let app = TestApp::start_with(|c| c.media.unreferenced_ttl_secs = 1).await;
    let (alice, bob, chat) = pair(&app).await;
    let shared = alice.uploaded(&app, noise(100, 16), "file").await;
    let unused = alice.uploaded(&app, noise(100, 17), "file").await;
    let pic = alice.uploaded(&app, png(8, 8), "image").await;
    user_sends_media(&alice, &app, &chat, &shared, "file")
        .await
        .ok(201);
    alice
        .patch(
            &app,
            "/api/v1/users/me",
            json!({"profile_pic_media_id": pic}),
        )
        .await
        .ok(200);

    // Younger than the time allowed: kept.
    app.housekeeping().await;
    assert_eq!(blob_files(&app).await, 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.housekeeping().await;
    assert_eq!(blob_files(&app).await, 2);
    alice
        .get(&app, &format!("/api/v1/media/{unused}"))
        .await
        .expect(404, "media_not_found");
    for id in [&shared, &pic] {
        let got = bob
            .download(&app, &format!("/api/v1/media/{id}"), &[])
            .await;
        assert_eq!(got.status, 200);
    }
    // A collected upload cannot be attached any more.
    user_sends_media(&alice, &app, &chat, &unused, "file")
        .await
        .expect(422, "validation_failed");
}

#[tokio::test]
async fn blobs_and_unfinished_uploads_survive_a_restart() {
    let mut app = TestApp::start().await;
    let alice = app.signup("+14155550101", "Alice").await;
    let data = noise(300_000, 18);
    let id = alice.uploaded(&app, data.clone(), "file").await;
    let image = alice.uploaded(&app, png(100, 50), "image").await;
    let loc = location(&tus_create(&app, &alice, 1000, "file").await.ok_status(201));
    tus_patch(&app, &alice, &loc, 0, noise(1000, 19)[..400].to_vec())
        .await
        .ok(204);

    app.restart().await;

    let got = alice
        .download(&app, &format!("/api/v1/media/{id}"), &[])
        .await;
    assert!(got.status == 200 && got.bytes == data);
    let thumb = alice
        .download(&app, &format!("/api/v1/media/{image}/thumbnail"), &[])
        .await;
    assert_eq!(thumb.status, 200);
    assert_eq!(tus_offset(&app, &alice, &loc).await, Some(400));
    tus_patch(&app, &alice, &loc, 400, noise(1000, 19)[400..].to_vec())
        .await
        .ok(204);
    let tus_id = loc.rsplit('/').next().unwrap();
    let got = alice
        .download(&app, &format!("/api/v1/media/{tus_id}"), &[])
        .await;
    assert_eq!(got.bytes, noise(1000, 19));
}

impl Answer {
    /// Asserts a status and keeps the answer (for its headers).
    #[track_caller]
    fn ok_status(self, status: u16) -> Self {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        self
    }
}

/// A GIF of 797 bytes whose screen and only frame declare `width` × `height`.
fn gif_bomb(width: u16, height: u16) -> Vec<u8> {
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&width.to_le_bytes());
    gif.extend_from_slice(&height.to_le_bytes());
    gif.extend_from_slice(&[0, 0, 0]);
    gif.push(0x2C);
    gif.extend_from_slice(&[0, 0, 0, 0]);
    gif.extend_from_slice(&width.to_le_bytes());
    gif.extend_from_slice(&height.to_le_bytes());
    gif.push(0);
    gif.push(2); // LZW minimum code size
    while gif.len() < 796 - 256 {
        gif.push(255);
        gif.extend_from_slice(&[0u8; 255]);
    }
    gif.resize(796, 0);
    gif.push(0x3B);
    gif
}

/// A BMP of 130 bytes declaring `width` × `height` pixels.
fn bmp_bomb(width: i32, height: i32) -> Vec<u8> {
    let mut bmp = b"BM".to_vec();
    bmp.extend_from_slice(&130u32.to_le_bytes());
    bmp.extend_from_slice(&[0; 4]);
    bmp.extend_from_slice(&54u32.to_le_bytes());
    bmp.extend_from_slice(&40u32.to_le_bytes());
    bmp.extend_from_slice(&width.to_le_bytes());
    bmp.extend_from_slice(&height.to_le_bytes());
    bmp.extend_from_slice(&1u16.to_le_bytes());
    bmp.extend_from_slice(&24u16.to_le_bytes());
    bmp.resize(130, 0);
    bmp
}

fn gif(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(width, height, image::Rgba([0, 90, 200, 255]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Gif)
        .unwrap();
    out
}

#[tokio::test]
async fn every_image_is_checked_or_refused_and_only_checked_ones_are_inline() {
    let app = TestApp::start_with(|c| c.media.max_image_pixels = 10_000).await;
    let alice = app.signup("+14155550150", "Alice").await;
    let bomb = gif_bomb(65_535, 65_535);
    assert_eq!(bomb.len(), 797);
    alice
        .uploads(&app, bomb, "image", None)
        .await
        .expect(422, "image_rejected");
    let mut junk = b"GIF89a".to_vec();
    junk.extend_from_slice(&noise(500, 3));
    alice
        .uploads(&app, junk, "image", None)
        .await
        .expect(422, "image_rejected");
    // A format the server does not decode is refused as an image...
    let bmp = bmp_bomb(100_000, 100_000);
    assert_eq!(bmp.len(), 130);
    alice
        .uploads(&app, bmp.clone(), "image", None)
        .await
        .expect(415, "media_type_mismatch");
    // ...and as a file it is stored but never shown inline.
    let file = alice.uploaded(&app, bmp, "file").await;
    let served = alice
        .download(&app, &format!("/api/v1/media/{file}"), &[])
        .await;
    assert_eq!(served.status, 200);
    assert!(
        served
            .header("content-disposition")
            .starts_with("attachment")
    );
    // GIF is checked like the others: the pixel limit at N and N+1.
    let ok = alice
        .uploads(&app, gif(100, 100), "image", None)
        .await
        .ok(201);
    assert_eq!(ok["content_type"], "image/gif");
    assert_eq!(ok["width"], 100);
    let id = ok["media_id"].as_str().unwrap();
    let served = alice
        .download(&app, &format!("/api/v1/media/{id}"), &[])
        .await;
    assert!(served.header("content-disposition").starts_with("inline"));
    alice
        .uploads(&app, gif(101, 100), "image", None)
        .await
        .expect(422, "image_rejected");
}

#[tokio::test]
async fn media_sent_over_the_socket_is_attached_as_over_rest() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155553090", "Alice").await;
    let bob = app.signup("+14155553091", "Bob").await;
    let carol = app.signup("+14155553092", "Carol").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let media = alice.uploaded(&app, png(32, 32), "image").await;
    let mut a = alice.connect(&app).await;
    let mut b = bob.connect(&app).await;
    a.send(
        json!({"type": "send_message", "chat_id": chat, "message_type": "image",
                  "media_id": media, "content": "look"}),
    )
    .await;
    let sent = a.next_of("message_sent").await;
    assert_eq!(sent["message"]["media_id"], media.as_str());
    assert_eq!(sent["message"]["type"], "image");
    let got = b.next_of("new_message").await;
    assert_eq!(got["message"]["media_id"], media.as_str());
    // Bob may now fetch it; Carol, outside the chat, may not.
    let res = app
        .http
        .get(format!("{}/api/v1/media/{media}", app.base))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .http
        .get(format!("{}/api/v1/media/{media}", app.base))
        .bearer_auth(&carol.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // The same checks as over REST: an image message needs its media.
    a.send(json!({"type": "send_message", "chat_id": chat, "message_type": "image"}))
        .await;
    assert_eq!(a.next_of("error").await["code"], "validation_failed");
}
