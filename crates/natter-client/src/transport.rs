//! The SDK's only contact with the network and the clock: HTTP
//! request/response, WebSocket connect/send/recv, and sleeping. Everything
//! above ([`crate::api`], [`crate::session`]) talks to a [`Transport`], so
//! the SDK builds for `wasm32-unknown-unknown` with a browser implementation
//! (fetch + WebSocket + timers) and natively with [`NativeTransport`]
//! (reqwest with rustls/ring, tokio-tungstenite, tokio timers).
//!
//! May depend on: `natter-proto` nothing; only the engines it wraps.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Marker: `Send + Sync` natively, nothing on wasm32 (browser futures are
/// single-threaded and not `Send`).
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> MaybeSend for T {}
/// Marker: `Send + Sync` natively, nothing on wasm32 (browser futures are
/// single-threaded and not `Send`).
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSend for T {}

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
    /// `DELETE`
    Delete,
    /// `HEAD`
    Head,
}

impl Method {
    /// The method's name on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Head => "HEAD",
        }
    }
}

/// One part of a `multipart/form-data` body.
#[derive(Clone)]
pub enum FormPart {
    /// A text field.
    Text {
        /// The field name.
        name: String,
        /// Its value.
        value: String,
    },
    /// A file field.
    File {
        /// The field name.
        name: String,
        /// The file name sent with it.
        file_name: String,
        /// The bytes.
        bytes: Vec<u8>,
    },
}

impl fmt::Debug for FormPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text { name, .. } => write!(f, "Text({name})"),
            Self::File { name, bytes, .. } => write!(f, "File({name}, {} bytes)", bytes.len()),
        }
    }
}

/// A request body.
#[derive(Clone, Default)]
pub enum Body {
    /// No body.
    #[default]
    Empty,
    /// `application/json`, already serialised.
    Json(Vec<u8>),
    /// `multipart/form-data`.
    Form(Vec<FormPart>),
    /// Raw bytes of a content type (a tus `PATCH`).
    Bytes {
        /// The `Content-Type`.
        content_type: String,
        /// The bytes.
        bytes: Vec<u8>,
    },
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bodies carry message text and tokens: never print them.
        match self {
            Self::Empty => f.write_str("Empty"),
            Self::Json(b) => write!(f, "Json({} bytes)", b.len()),
            Self::Form(parts) => write!(f, "Form({parts:?})"),
            Self::Bytes {
                content_type,
                bytes,
            } => write!(f, "Bytes({content_type}, {} bytes)", bytes.len()),
        }
    }
}

/// One HTTP request.
#[derive(Clone)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The absolute URL, query included.
    pub url: String,
    /// `Authorization: Bearer` token, if any.
    pub bearer: Option<String>,
    /// Extra headers (name, value).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Body,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

/// One HTTP response, read to the end.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status.
    pub status: u16,
    /// The headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lower case).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a WebSocket delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A text frame.
    Text(String),
    /// The connection ended, with the close code if the peer sent one.
    Closed(Option<u16>),
}

/// A transport failure: the request or socket did not complete. (An HTTP
/// error status is not a transport failure; see [`crate::ApiError`].)
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// An open WebSocket.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait WebSocket: MaybeSend + fmt::Debug {
    /// Sends one text frame.
    ///
    /// # Errors
    /// The connection failed.
    async fn send(&mut self, text: String) -> Result<(), TransportError>;
    /// The next text frame or the end of the connection (control frames
    /// are handled inside).
    ///
    /// # Errors
    /// The connection failed.
    async fn recv(&mut self) -> Result<WsEvent, TransportError>;
    /// Closes politely.
    async fn close(&mut self);
}

/// The network and the clock, as the SDK needs them.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait Transport: MaybeSend + fmt::Debug {
    /// Sends a request and reads the whole response.
    ///
    /// # Errors
    /// Connection, TLS or timeout failures.
    async fn http(&self, request: Request) -> Result<Response, TransportError>;
    /// Opens a WebSocket to `url` (`ws://` or `wss://`).
    ///
    /// # Errors
    /// Connection or upgrade failures.
    async fn connect(&self, url: &str) -> Result<Box<dyn WebSocket>, TransportError>;
    /// Waits `duration`.
    async fn sleep(&self, duration: Duration);
}

/// Runs `work`, giving up after `limit`.
///
/// # Errors
/// `None` when the time ran out.
pub async fn timeout<T>(
    transport: &dyn Transport,
    limit: Duration,
    work: impl Future<Output = T>,
) -> Option<T> {
    let work = std::pin::pin!(work);
    let sleep = transport.sleep(limit);
    match futures_util::future::select(work, sleep).await {
        futures_util::future::Either::Left((value, _)) => Some(value),
        futures_util::future::Either::Right(((), _)) => None,
    }
}

/// A shared transport.
pub type SharedTransport = Arc<dyn Transport>;

#[cfg(not(target_arch = "wasm32"))]
pub use native::NativeTransport;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::{
        Body, FormPart, Method, Request, Response, Transport, TransportError, WebSocket, WsEvent,
    };
    use futures_util::{SinkExt as _, StreamExt as _};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

    /// Largest WebSocket message accepted: above the server's largest frame
    /// (a sync page), far below tungstenite's 64 MiB default.
    const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

    /// reqwest (rustls with ring) for HTTP, tokio-tungstenite (the same
    /// rustls) for WebSockets, tokio for timers. Both trust the Web PKI's
    /// roots (webpki-roots) and any roots given to [`Self::with_roots`].
    #[derive(Clone)]
    pub struct NativeTransport {
        /// Connection pool, each request bounded by the timeout.
        http: reqwest::Client,
        /// TLS for `wss://`.
        tls: Arc<rustls::ClientConfig>,
        /// Bound on connecting a WebSocket.
        timeout: Duration,
    }

    impl std::fmt::Debug for NativeTransport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("NativeTransport")
                .field("timeout", &self.timeout)
                .finish_non_exhaustive()
        }
    }

    fn tls_error(e: impl std::fmt::Display) -> TransportError {
        TransportError(format!("TLS: {e}"))
    }

    /// rustls with ring, the Web PKI's roots and `extra` (DER certificates).
    fn tls_config(extra: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, TransportError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for der in extra {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
                .map_err(tls_error)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    }

    impl NativeTransport {
        /// A transport whose requests each get `timeout`.
        ///
        /// # Errors
        /// The HTTP client cannot be built.
        pub fn new(timeout: Duration) -> Result<Self, TransportError> {
            Self::with_roots(timeout, &[])
        }

        /// A transport that also trusts `roots` (DER certificates), for a
        /// server with a certificate of its own CA or a self-signed one.
        ///
        /// # Errors
        /// A certificate is not valid DER, or the HTTP client cannot be built.
        pub fn with_roots(timeout: Duration, roots: &[&[u8]]) -> Result<Self, TransportError> {
            let mut builder = reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .pool_max_idle_per_host(256);
            for der in roots {
                builder = builder
                    .add_root_certificate(reqwest::Certificate::from_der(der).map_err(tls_error)?);
            }
            let http = builder.build().map_err(|e| TransportError(e.to_string()))?;
            Ok(Self {
                http,
                tls: tls_config(roots)?,
                timeout,
            })
        }

        /// A transport over a ready reqwest client (custom TLS roots, …);
        /// its WebSockets trust the Web PKI's roots.
        ///
        /// # Errors
        /// The TLS configuration cannot be built.
        pub fn with_client(
            http: reqwest::Client,
            timeout: Duration,
        ) -> Result<Self, TransportError> {
            Ok(Self {
                http,
                tls: tls_config(&[])?,
                timeout,
            })
        }
    }

    #[derive(Debug)]
    struct NativeSocket {
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    }

    #[async_trait::async_trait]
    impl WebSocket for NativeSocket {
        async fn send(&mut self, text: String) -> Result<(), TransportError> {
            self.ws
                .send(WsMessage::text(text))
                .await
                .map_err(|e| TransportError(e.to_string()))
        }

        async fn recv(&mut self) -> Result<WsEvent, TransportError> {
            loop {
                match self.ws.next().await {
                    Some(Ok(WsMessage::Text(t))) => {
                        return Ok(WsEvent::Text(t.as_str().to_owned()));
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        return Ok(WsEvent::Closed(frame.map(|f| u16::from(f.code))));
                    }
                    None => return Ok(WsEvent::Closed(None)),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(TransportError(e.to_string())),
                }
            }
        }

        async fn close(&mut self) {
            let _ = self.ws.close(None).await;
        }
    }

    #[async_trait::async_trait]
    impl Transport for NativeTransport {
        async fn http(&self, request: Request) -> Result<Response, TransportError> {
            let method = match request.method {
                Method::Get => reqwest::Method::GET,
                Method::Post => reqwest::Method::POST,
                Method::Put => reqwest::Method::PUT,
                Method::Patch => reqwest::Method::PATCH,
                Method::Delete => reqwest::Method::DELETE,
                Method::Head => reqwest::Method::HEAD,
            };
            let mut req = self.http.request(method, &request.url);
            if let Some(token) = &request.bearer {
                req = req.bearer_auth(token);
            }
            for (name, value) in &request.headers {
                req = req.header(name, value);
            }
            req = match request.body {
                Body::Empty => req,
                Body::Json(bytes) => req.header("content-type", "application/json").body(bytes),
                Body::Bytes {
                    content_type,
                    bytes,
                } => req.header("content-type", content_type).body(bytes),
                Body::Form(parts) => {
                    let mut form = reqwest::multipart::Form::new();
                    for part in parts {
                        form = match part {
                            FormPart::Text { name, value } => form.text(name, value),
                            FormPart::File {
                                name,
                                file_name,
                                bytes,
                            } => form.part(
                                name,
                                reqwest::multipart::Part::bytes(bytes).file_name(file_name),
                            ),
                        };
                    }
                    req.multipart(form)
                }
            };
            let res = req
                .send()
                .await
                .map_err(|e| TransportError(e.to_string()))?;
            let status = res.status().as_u16();
            let headers = res
                .headers()
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            let body = res
                .bytes()
                .await
                .map_err(|e| TransportError(e.to_string()))?
                .to_vec();
            Ok(Response {
                status,
                headers,
                body,
            })
        }

        async fn connect(&self, url: &str) -> Result<Box<dyn WebSocket>, TransportError> {
            let mut config = WebSocketConfig::default();
            config.max_message_size = Some(MAX_MESSAGE_BYTES);
            config.max_frame_size = Some(MAX_MESSAGE_BYTES);
            let connect = tokio_tungstenite::connect_async_tls_with_config(
                url,
                Some(config),
                true,
                Some(tokio_tungstenite::Connector::Rustls(Arc::clone(&self.tls))),
            );
            let (ws, _) = tokio::time::timeout(self.timeout, connect)
                .await
                .map_err(|_| TransportError("timed out connecting the WebSocket".to_owned()))?
                .map_err(|e| TransportError(e.to_string()))?;
            Ok(Box::new(NativeSocket { ws }))
        }

        async fn sleep(&self, duration: Duration) {
            tokio::time::sleep(duration).await;
        }
    }
}
