//! A small HTTP/1.1 client for the control socket (one request per
//! connection, as the server answers), used by ps, stop, kill, inspect.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);
/// Answers are small JSON documents; more is a broken server.
const MAX_RESPONSE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the control socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path} answered something that is not HTTP/JSON: {why}")]
    Malformed { path: PathBuf, why: String },
    #[error("{method} {url}: herd answered {status}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
}

/// Sends one request; returns the JSON body of a 2xx answer.
pub fn request(
    socket: &Path,
    method: &str,
    url: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let body = body.map(ToString::to_string).unwrap_or_default();
    let head = format!(
        "{method} {url} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(io)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let malformed = |why: String| ClientError::Malformed {
        path: socket.to_owned(),
        why,
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(malformed("truncated answer".into())),
        Err(e) => return Err(malformed(e.to_string())),
    };
    let status = response.code.unwrap_or(0);
    let json: serde_json::Value = serde_json::from_slice(&raw[head_len..])
        .map_err(|e| malformed(format!("body is not JSON: {e}")))?;
    if !(200..300).contains(&status) {
        let message = json
            .get("error")
            .and_then(|m| m.as_str())
            .unwrap_or("(no message)")
            .to_owned();
        return Err(ClientError::Status {
            method: method.to_owned(),
            url: url.to_owned(),
            status,
            message,
        });
    }
    Ok(json)
}
