//! SMS delivery of verification codes: a webhook to the operator's gateway
//! (`sms_webhook_url`), or, with none configured, the server log.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::phone::Phone;
use crate::secret::VerificationCode;

/// Why a code could not be handed to the gateway.
#[derive(Debug, thiserror::Error)]
#[error("the SMS gateway did not accept the code: {0}")]
pub struct SmsError(String);

/// Something that sends verification codes to phones.
#[async_trait]
pub trait SmsGateway: Send + Sync + fmt::Debug + 'static {
    /// Sends `code` to `phone`.
    ///
    /// # Errors
    /// [`SmsError`] when the gateway refuses or cannot be reached.
    async fn send_code(&self, phone: &Phone, code: &VerificationCode) -> Result<(), SmsError>;
}

/// POSTs `{"phone": "+1234567890", "code": "123456"}` to the operator's gateway.
#[derive(Debug)]
pub struct WebhookSms {
    /// HTTP client with the configured timeout.
    client: reqwest::Client,
    /// The gateway.
    url: reqwest::Url,
}

impl WebhookSms {
    /// A gateway at `url`, allowed `timeout` per code.
    ///
    /// # Errors
    /// When the URL does not parse or the HTTP client cannot be built.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, SmsError> {
        let url = reqwest::Url::parse(url).map_err(|e| SmsError(e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("natter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SmsError(e.to_string()))?;
        Ok(Self { client, url })
    }

    /// The gateway's host, for the start-up log (the URL's path and query
    /// may carry a credential, so they are not logged).
    #[must_use]
    pub fn host(&self) -> String {
        self.url.host_str().unwrap_or("").to_owned()
    }
}

#[async_trait]
impl SmsGateway for WebhookSms {
    async fn send_code(&self, phone: &Phone, code: &VerificationCode) -> Result<(), SmsError> {
        let body = serde_json::json!({ "phone": phone.as_str(), "code": code.expose() });
        let response = self
            .client
            .post(self.url.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| SmsError(e.without_url().to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(SmsError(format!(
                "the gateway answered {}",
                response.status()
            )))
        }
    }
}

/// Sign-up mode `invite`: no gateway. The service never asks it to send
/// (verification requests are refused first); if it did, it would fail.
#[derive(Debug, Default)]
pub struct NoSms;

#[async_trait]
impl SmsGateway for NoSms {
    async fn send_code(&self, _: &Phone, _: &VerificationCode) -> Result<(), SmsError> {
        Err(SmsError(
            "this server sends no SMS (signup.mode = \"invite\")".to_owned(),
        ))
    }
}

/// Development sink (`signup.mode = "open"`): prints codes instead of
/// sending them. The one place a code is ever written anywhere.
///
/// The line goes straight to the process's stderr, not through `tracing`, so
/// no log filter (`NATTER_LOG=error`, `natter_server=info`) can hide it while
/// the request answers 202: an operator who runs an open server must be able
/// to read the codes. It is marked `DEVELOPMENT SMS SINK` and, with
/// `log_format = "json"`, is one JSON object like the other log lines.
#[derive(Debug, Default)]
pub struct LogSms {
    /// Write the line as a JSON object (`log_format = "json"`).
    json: bool,
}

impl LogSms {
    /// A sink printing in the log's format.
    #[must_use]
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// The line for one code, without the newline.
    fn line(&self, phone: &Phone, code: &VerificationCode) -> String {
        let message = "DEVELOPMENT SMS SINK: verification code printed instead of sent \
                       (signup.mode = \"open\"); never run like this in production";
        if self.json {
            serde_json::json!({
                "timestamp": now_rfc3339(),
                "level": "WARN",
                "target": "natter::sms",
                "fields": {
                    "message": message,
                    "phone": phone.as_str(),
                    "code": code.expose(),
                },
            })
            .to_string()
        } else {
            format!(
                "{} WARN natter::sms: {message} phone={} code={}",
                now_rfc3339(),
                phone.as_str(),
                code.expose()
            )
        }
    }
}

/// Now as RFC 3339, like the log's own timestamps.
pub(crate) fn now_rfc3339() -> String {
    crate::clock::Timestamp::now()
        .to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[async_trait]
impl SmsGateway for LogSms {
    async fn send_code(&self, phone: &Phone, code: &VerificationCode) -> Result<(), SmsError> {
        use std::io::Write as _;
        let mut line = self.line(phone, code);
        line.push('\n');
        // One write of the whole line, so it does not interleave with log lines.
        std::io::stderr()
            .lock()
            .write_all(line.as_bytes())
            .map_err(|e| SmsError(format!("cannot print the code to stderr: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::PhoneValidation;

    #[test]
    fn the_development_line_carries_phone_and_code_in_either_format() {
        let phone = Phone::parse("+14155550123", PhoneValidation::Parse).unwrap();
        let code = VerificationCode::from_client("123456").unwrap();
        let text = LogSms::new(false).line(&phone, &code);
        assert!(text.contains("DEVELOPMENT SMS SINK"), "{text}");
        assert!(text.contains("phone=+14155550123 code=123456"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&LogSms::new(true).line(&phone, &code)).unwrap();
        assert_eq!(json["fields"]["code"], "123456");
        assert_eq!(json["fields"]["phone"], "+14155550123");
        assert!(
            json["fields"]["message"]
                .as_str()
                .unwrap()
                .contains("DEVELOPMENT SMS SINK")
        );
    }
}
