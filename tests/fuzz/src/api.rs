//! Control API target: the bytes a client sends on the control socket go
//! through herd's HTTP framing (httparse plus herd's limits on head, body,
//! headers and chunking) and then the router, as the API thread does. The
//! first byte splits the stream into the short reads a slow or hostile
//! client produces.

use std::io::Read;
use std::time::{Duration, Instant};

use vmm::api::{read_request, route, ApiRequest};

/// A reader that hands out the request in pieces of at most `chunk` bytes.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.chunk.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

pub fn api_http(data: &[u8]) {
    let _ = api_http_outcome(data);
}

/// The routed request, when the bytes were a request for a known route.
pub fn api_http_outcome(data: &[u8]) -> Option<ApiRequest> {
    let (&first, rest) = data.split_first()?;
    let mut stream = Trickle {
        data: rest,
        chunk: usize::from(first).max(1) * 16,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let request = read_request(&mut stream, deadline, |_| {}).ok()?;
    // Unknown paths and methods are answers (404/405), never panics.
    route(&request.method, &request.path, &request.body).ok()
}
