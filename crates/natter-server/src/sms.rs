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

/// Development sink: prints codes to the log, loudly. The one place a code
/// is ever logged.
#[derive(Debug, Default)]
pub struct LogSms;

#[async_trait]
impl SmsGateway for LogSms {
    async fn send_code(&self, phone: &Phone, code: &VerificationCode) -> Result<(), SmsError> {
        tracing::warn!(
            target: "natter::sms",
            phone = %phone.as_str(),
            code = %code.expose(),
            "DEVELOPMENT SMS SINK: verification code printed instead of sent; \
             set NATTER_SMS_WEBHOOK_URL for real delivery"
        );
        Ok(())
    }
}
