//! S3-compatible blobs: object_store's S3 engine over the workspace's own
//! HTTP client (reqwest with rustls and ring). object_store's bundled
//! connector is a second reqwest major version with aws-lc; this one adds
//! no TLS stack.

use std::time::Duration;

use http_body_util::BodyExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::{BackoffConfig, RetryConfig};

use crate::config::Config;

/// Longest a connection to the S3 endpoint may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one S3 request may wait for a response or a chunk of one
/// (a stalled server; parts are at most 5 MiB).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Retries of a failed idempotent request, and for how long at most.
const RETRIES: usize = 5;
const RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds reqwest clients for object_store.
#[derive(Debug)]
struct Connector {
    /// Whether plain http:// may be used (`s3.allow_http`).
    allow_http: bool,
}

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .https_only(!self.allow_http)
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(Service(client)))
    }
}

/// One client, many requests.
#[derive(Debug)]
struct Service(reqwest::Client);

fn kind_of(e: &reqwest::Error) -> HttpErrorKind {
    if e.is_timeout() {
        HttpErrorKind::Timeout
    } else if e.is_connect() {
        HttpErrorKind::Connect
    } else if e.is_body() || e.is_decode() {
        HttpErrorKind::Decode
    } else {
        HttpErrorKind::Request
    }
}

#[async_trait::async_trait]
impl HttpService for Service {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let req = http::Request::from_parts(parts, reqwest::Body::wrap(body));
        let req = reqwest::Request::try_from(req)
            .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
        let response = self
            .0
            .execute(req)
            .await
            .map_err(|e| HttpError::new(kind_of(&e), e))?;
        let response: http::Response<reqwest::Body> = response.into();
        let (parts, body) = response.into_parts();
        let body = body.map_err(|e| HttpError::new(kind_of(&e), e));
        Ok(http::Response::from_parts(
            parts,
            HttpResponseBody::new(body),
        ))
    }
}

/// The S3 engine of `blobs = "s3://bucket"` and `[s3]`.
///
/// # Errors
/// A configuration object_store refuses (validation catches most first).
pub(super) fn store(config: &Config) -> object_store::Result<AmazonS3> {
    let s3 = &config.s3;
    let bucket = config.s3_bucket().unwrap_or_default();
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(&s3.region)
        .with_allow_http(s3.allow_http)
        .with_virtual_hosted_style_request(s3.virtual_hosted_style)
        .with_http_connector(Connector {
            allow_http: s3.allow_http,
        })
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: RETRIES,
            retry_timeout: RETRY_TIMEOUT,
        });
    if let Some(id) = &s3.access_key_id {
        builder = builder.with_access_key_id(id);
    }
    if let Some(secret) = &s3.secret_access_key {
        builder = builder.with_secret_access_key(secret.expose());
    }
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    builder.build()
}
