//! HTTP/1.1 framing for the control socket: reading one bounded request
//! (httparse does the parsing) and writing one JSON response. Nothing here
//! knows about VMs.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Request line plus headers.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
pub const MAX_HEADERS: usize = 32;
pub const MAX_BODY_BYTES: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without any query string.
    pub path: String,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error(
        "request head larger than {MAX_HEAD_BYTES} bytes or with more than {MAX_HEADERS} headers"
    )]
    HeadTooLarge,
    #[error("request body larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("chunked request bodies are not supported; send Content-Length")]
    Chunked,
    #[error("the client sent no complete request in time")]
    Timeout,
    /// The client hung up before sending a whole request: nobody to answer.
    #[error("the client closed the connection mid-request")]
    Closed,
    #[error("socket error: {0}")]
    Io(std::io::Error),
}

impl HttpError {
    /// The status to answer with, or None when nobody is listening.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Malformed(_) => Some(400),
            HttpError::Timeout => Some(408),
            HttpError::BodyTooLarge => Some(413),
            HttpError::Chunked => Some(411),
            HttpError::HeadTooLarge => Some(431),
            HttpError::Closed | HttpError::Io(_) => None,
        }
    }
}

fn read_some(
    stream: &mut (impl Read + ?Sized),
    buf: &mut Vec<u8>,
    deadline: Instant,
    set_timeout: &mut dyn FnMut(Duration),
) -> Result<(), HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HttpError::Timeout);
    }
    set_timeout(left);
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) => Err(HttpError::Closed),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            Err(HttpError::Timeout)
        }
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
        Err(e) => Err(HttpError::Io(e)),
    }
}

/// Reads one request, which must arrive completely before `deadline`.
/// `set_timeout` is given the time left before each read (for a socket:
/// its read timeout).
pub fn read_request(
    stream: &mut (impl Read + ?Sized),
    deadline: Instant,
    mut set_timeout: impl FnMut(Duration),
) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let (head_len, method, path, content_length) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let mut length = 0usize;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(HttpError::Chunked);
                    }
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or_else(|| {
                                HttpError::Malformed("Content-Length is not a number".into())
                            })?;
                    }
                }
                let path = req.path.unwrap_or("/");
                let path = path.split_once('?').map_or(path, |(p, _)| p);
                break (
                    n,
                    req.method.unwrap_or("").to_owned(),
                    path.to_owned(),
                    length,
                );
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD_BYTES {
                    return Err(HttpError::HeadTooLarge);
                }
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        }
        read_some(stream, &mut buf, deadline, &mut set_timeout)?;
    };
    if content_length > MAX_BODY_BYTES {
        return Err(HttpError::BodyTooLarge);
    }
    while buf.len() < head_len + content_length {
        read_some(stream, &mut buf, deadline, &mut set_timeout)?;
    }
    let body = buf[head_len..head_len + content_length].to_vec();
    Ok(Request { method, path, body })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: serde_json::Value,
    /// For 405: the methods the path takes.
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Response {
            status,
            body,
            allow: None,
        }
    }

    pub fn error(status: u16, message: impl std::fmt::Display) -> Self {
        Response::json(status, serde_json::json!({ "error": message.to_string() }))
    }

    /// The whole response: every connection carries one request, so it
    /// always says `Connection: close`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = self.body.to_string() + "\n";
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n",
            self.status,
            reason(self.status),
            body.len()
        );
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }

    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(&self.to_bytes())?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Request, HttpError> {
        read_request(
            &mut &bytes[..],
            Instant::now() + Duration::from_secs(1),
            |_| {},
        )
    }

    #[test]
    fn reads_a_request_with_a_body() {
        let r = parse(b"POST /v1/vm/stop?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/vm/stop")
        );
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn bad_input_gets_the_right_status() {
        let status = |b: &[u8]| parse(b).unwrap_err().status();
        assert_eq!(status(b"\x00\x01garbage\r\n\r\n"), Some(400));
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            None,
            "EOF mid-head"
        );
        let body = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(status(body.as_bytes()), Some(413));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(chunked), Some(411));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), Some(431));
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(status(&huge), Some(431));
    }

    #[test]
    fn responses_are_framed() {
        let r = Response::error(404, "no such path");
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.ends_with("{\"error\":\"no such path\"}\n"), "{text}");
    }
}
