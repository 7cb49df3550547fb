//! Subscription secrets: `whsec_` and 32 random bytes in base64, the Standard Webhooks form.

use base64::Engine;

pub fn new_secret() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}
