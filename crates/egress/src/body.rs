//! Answers from outside — receivers, participants, collectors — are read through here, so that
//! none can make Sagaplane hold more than a fixed number of bytes, however much it sends or
//! claims to send.

use reqwest::Response;

/// Why an answer's body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {max} bytes; it was not read")]
    TooLarge { max: usize },
    #[error("reading the answer failed: {0}")]
    Read(String),
}

/// The whole body, if it is at most `max` bytes; else [`BodyError::TooLarge`] without reading
/// the rest (a `Content-Length` over `max` is refused before anything is read).
pub async fn read_capped(mut response: Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|length| length > max as u64) {
        return Err(BodyError::TooLarge { max });
    }
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() > max => return Err(BodyError::TooLarge { max }),
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => return Ok(bytes),
            Err(e) => return Err(BodyError::Read(crate::client::describe(e))),
        }
    }
}

/// At most the first `max` bytes of the body, and whether it may have had more; the rest is
/// never read (the connection is dropped with the response). An error while reading ends the
/// prefix.
pub async fn read_prefix(mut response: Response, max: usize) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    while bytes.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = max - bytes.len();
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    return (bytes, true);
                }
            }
            Ok(None) | Err(_) => return (bytes, false),
        }
    }
    // Exactly `max` read: whatever follows is left unread.
    (bytes, true)
}
