//! Subscription secrets: `whsec_` and 32 random bytes in base64, the Standard Webhooks form.

use base64::Engine;

pub fn new_secret() -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(saga_runtime::random_256_bits()))
}
