//! Subscription secrets: `whsec_` and 32 random bytes in base64, the Standard Webhooks form.

use base64::Engine;

pub fn new_secret() -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(saga_runtime::random_256_bits()))
}

/// Why `secret` cannot sign deliveries, if it cannot (it must be `whsec_<base64>`).
pub fn secret_error(secret: &str) -> Option<String> {
    if !secret.starts_with("whsec_") {
        return Some("must look like whsec_<base64>".into());
    }
    standardwebhooks::Webhook::new(secret).err().map(|e| format!("is not a signing secret: {e}"))
}
