//! A scoring answer before it is HTTP: status, content type, a few headers and the body.
//!
//! Why not axum's `Response`: a scoring request reaches its handler one of two ways, through
//! axum's router or through the serving lanes' HTTP/1.1 fast path (`fast`), and the fast path
//! writes the answer to the socket itself. Handlers build a [`Reply`]; the router turns it
//! into a `Response`, the fast path into bytes, so both paths answer alike by construction.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What a scoring handler answers.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    /// Headers besides the content type and length (`retry-after`, the binary extension's
    /// header length); empty for most answers, so nothing is allocated for them.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON body already written.
    pub fn json(status: StatusCode, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }

    /// `{"KEY": message}`: Azure ML writes its errors under `message`, the Open Inference
    /// Protocol under `error`.
    pub fn error(status: StatusCode, key: &str, message: &str) -> Self {
        let mut body = Vec::with_capacity(message.len() + key.len() + 8);
        body.extend_from_slice(b"{");
        write_json_str(key, &mut body);
        body.extend_from_slice(b":");
        write_json_str(message, &mut body);
        body.extend_from_slice(b"}");
        Self::json(status, body)
    }

    /// The same answer with `Retry-After` (a 503 that callers should retry).
    pub fn retry_later(mut self) -> Self {
        self.headers.push((
            header::RETRY_AFTER,
            HeaderValue::from_static(super::RETRY_AFTER_SECONDS),
        ));
        self
    }
}

/// A header value as text when it is visible ASCII (and tabs), as `HeaderValue::to_str`
/// reads it, so both request paths accept the same values.
pub fn header_text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// `text` as a JSON string, quoted and escaped.
pub fn write_json_str(text: &str, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail, nor can serializing a str.
    let _ = serde_json::to_writer(&mut *out, text);
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            )],
            self.body,
        )
            .into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_escaped_field() {
        let reply = Reply::error(StatusCode::BAD_REQUEST, "message", "a \"quoted\"\nline");
        let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
        assert_eq!(body, serde_json::json!({"message": "a \"quoted\"\nline"}));
        let later = Reply::error(StatusCode::SERVICE_UNAVAILABLE, "error", "full").retry_later();
        let response = later.into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}
