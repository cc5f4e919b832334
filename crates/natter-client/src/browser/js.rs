//! Small bridges from browser callbacks to Rust futures.

use js_sys::Promise;
use wasm_bindgen::{JsCast as _, JsValue};
use wasm_bindgen_futures::JsFuture;

/// A JavaScript exception as text.
pub(crate) fn describe(error: &JsValue) -> String {
    if let Some(e) = error.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    if let Some(s) = error.as_string() {
        return s;
    }
    if let Some(event) = error.dyn_ref::<web_sys::Event>() {
        return format!("{} event", event.type_());
    }
    format!("{error:?}")
}

/// The page's `window`.
pub(crate) fn window() -> Result<web_sys::Window, String> {
    web_sys::window().ok_or_else(|| "no window (not running in a page)".to_owned())
}

/// Waits `ms` milliseconds on the browser's timer.
pub(crate) async fn sleep_ms(ms: i32) {
    let Ok(window) = window() else { return };
    let promise = Promise::new(&mut |resolve, _reject| {
        let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = JsFuture::from(promise).await;
}

/// Waits for an IndexedDB request and returns its result.
pub(crate) async fn request(req: &web_sys::IdbRequest) -> Result<JsValue, String> {
    // IndexedDB fires its events in a later task: handlers set now see them.
    let promise = Promise::new(&mut |resolve, reject| {
        req.set_onsuccess(Some(&resolve));
        req.set_onerror(Some(&reject));
    });
    let outcome = JsFuture::from(promise).await;
    req.set_onsuccess(None);
    req.set_onerror(None);
    if let Err(e) = outcome {
        let detail = req.error().ok().flatten().map(|e| e.message());
        return Err(detail.unwrap_or_else(|| describe(&e)));
    }
    req.result().map_err(|e| describe(&e))
}

/// Waits for an IndexedDB transaction to commit.
pub(crate) async fn committed(tx: &web_sys::IdbTransaction) -> Result<(), String> {
    let promise = Promise::new(&mut |resolve, reject| {
        tx.set_oncomplete(Some(&resolve));
        tx.set_onerror(Some(&reject));
        tx.set_onabort(Some(&reject));
    });
    let outcome = JsFuture::from(promise).await;
    tx.set_oncomplete(None);
    tx.set_onerror(None);
    tx.set_onabort(None);
    outcome.map(|_| ()).map_err(|e| {
        tx.error()
            .map(|e| e.message())
            .unwrap_or_else(|| describe(&e))
    })
}

/// Awaits a promise, with the rejection as text.
pub(crate) async fn promise(p: Promise) -> Result<JsValue, String> {
    JsFuture::from(p).await.map_err(|e| describe(&e))
}
