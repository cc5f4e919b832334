//! The SDK in the browser (wasm32 only): [`BrowserTransport`] (fetch,
//! WebSocket, timers) and [`BrowserStore`] (IndexedDB, every record
//! encrypted with a non-extractable WebCrypto AES-GCM key that never
//! leaves the browser).
//!
//! May depend on: the rest of the SDK, wasm-bindgen, js-sys, web-sys.

mod js;
mod store;
mod transport;

pub use store::BrowserStore;
pub use transport::BrowserTransport;
