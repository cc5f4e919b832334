//! The S3 blob engine against a throwaway S3-compatible server: multipart
//! writes of several parts, whole and ranged reads, deletion.

use futures_util::StreamExt;
use natter_proto::MediaId;
use natter_server::blobs::{BlobKind, Blobs};
use natter_server::config::Config;
use natter_testkit::engines::S3Server;

fn s3_config(s3: &S3Server, bucket: &str) -> Config {
    let mut config = Config {
        blobs: Some(format!("s3://{bucket}")),
        ..Config::default()
    };
    config.s3.endpoint = Some(s3.url().to_owned());
    config.s3.allow_http = true;
    config.s3.access_key_id = Some("test".to_owned());
    config.s3.secret_access_key = Some(serde_json::from_str("\"test\"").unwrap());
    config.validate().unwrap();
    config
}

async fn s3_blobs(s3: &S3Server) -> Blobs {
    let bucket = format!("natter-{}", uuid::Uuid::now_v7().simple());
    s3.create_bucket(&bucket).await.unwrap();
    let config = s3_config(s3, &bucket);
    let blobs = Blobs::s3(&config).unwrap();
    blobs.check().await.unwrap();
    blobs
}

async fn read(blobs: &Blobs, id: MediaId, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = blobs.get(id, BlobKind::Original, range).await.unwrap();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test]
async fn a_large_file_goes_up_in_parts_and_reads_back_whole_and_by_range() {
    let s3 = S3Server::start().await.unwrap();
    let blobs = s3_blobs(&s3).await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    // Three parts of the 5 MiB part size, the last one short.
    let data: Vec<u8> = (0..5 * 1024 * 1024 * 2 + 12_345)
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(&source, &data).unwrap();
    let id = MediaId::new();
    assert!(!blobs.exists(id, BlobKind::Original).await.unwrap());
    blobs
        .put_file(id, BlobKind::Original, &source)
        .await
        .unwrap();
    assert!(blobs.exists(id, BlobKind::Original).await.unwrap());
    assert_eq!(read(&blobs, id, None).await, data);
    let tail = (data.len() - 100) as u64..data.len() as u64;
    assert_eq!(read(&blobs, id, Some(tail)).await, data[data.len() - 100..]);
    // A range across the first part boundary.
    let edge = 5 * 1024 * 1024 - 10..5 * 1024 * 1024 + 10;
    assert_eq!(
        read(&blobs, id, Some(edge.start as u64..edge.end as u64)).await,
        data[edge]
    );
    blobs.delete(id).await.unwrap();
    assert!(!blobs.exists(id, BlobKind::Original).await.unwrap());
    // Deleting what is gone is not an error.
    blobs.delete(id).await.unwrap();
}

#[tokio::test]
async fn a_wrong_bucket_fails_at_start_not_at_the_first_upload() {
    let s3 = S3Server::start().await.unwrap();
    let config = s3_config(&s3, "no-such-bucket-here");
    let blobs = Blobs::s3(&config).unwrap();
    assert!(blobs.check().await.is_err());
}
