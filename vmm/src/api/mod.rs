//! The control API: HTTP/1.1 + JSON on a Unix socket, as Firecracker and
//! Cloud Hypervisor serve theirs (`curl --unix-socket`). One accept thread;
//! each connection gets a short-lived thread of its own (at most
//! [`MAX_CONNECTIONS`] at once) that reads one bounded request, acts on the
//! VM through [`VmControl`] and answers. vCPUs never wait for any of it.

mod http;
mod info;
mod routes;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use http::{MAX_BODY_BYTES, MAX_HEADERS, MAX_HEAD_BYTES};
pub use info::VmDescription;
pub use routes::ApiRequest;
// The pure parsing half, for the fuzz targets in tests/fuzz.
pub use http::{read_request, HttpError, Request as HttpRequest, Response};
pub use routes::route;

use crate::control::VmControl;
use crate::metrics::MetricsSources;
use crate::seccomp::{SeccompFilters, ThreadKind};

pub const API_VERSION: &str = "v1";
/// A client gets this long to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
pub const MAX_CONNECTIONS: usize = 8;
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an over-the-limit client holds up the accept thread.
const BUSY_TIMEOUT: Duration = Duration::from_millis(20);
const CONNECTION_STACK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot create the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the control API thread: {0}")]
    Thread(std::io::Error),
}

/// Everything a request handler may touch.
pub struct ApiContext {
    pub control: Arc<VmControl>,
    pub description: VmDescription,
    pub metrics: MetricsSources,
}

/// Binds `path` (mode 0600, replacing a stale socket) and serves it on a
/// thread of its own for the rest of the process. With `filters`, that
/// thread (and every connection thread it starts) runs under the API
/// seccomp filter, installed before it accepts anything.
pub fn start(
    path: &Path,
    ctx: ApiContext,
    filters: Option<Arc<SeccompFilters>>,
) -> Result<(), ApiError> {
    let bind_err = |source| ApiError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => log::debug!("removed stale control socket {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    let ctx = Arc::new(ctx);
    std::thread::Builder::new()
        .name("herd-api".into())
        .spawn(move || {
            if let Some(Err(e)) = filters.map(|f| f.install(ThreadKind::Api)) {
                // Never serve unconfined when confinement was asked for.
                log::error!("control API off: {e}");
                return;
            }
            serve(&listener, &ctx);
        })
        .map_err(ApiError::Thread)?;
    log::debug!("control API on {}", path.display());
    Ok(())
}

fn serve(listener: &UnixListener, ctx: &Arc<ApiContext>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("control API: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            turn_away(stream);
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (ctx, active_conn) = (Arc::clone(ctx), Arc::clone(&active));
        let spawned = std::thread::Builder::new()
            .name("herd-api-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                crate::seccomp::note_inherited(ThreadKind::Api);
                connection(stream, &ctx);
                active_conn.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            log::warn!("control API: cannot start a connection thread: {e}");
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Answers 503 to a connection over the limit. What the client already
/// sent is read first (briefly): closing a Unix socket with unread data
/// would reset the connection before the client could read the answer.
fn turn_away(mut stream: UnixStream) {
    use std::io::Read;
    let _ = stream.set_write_timeout(Some(BUSY_TIMEOUT));
    let _ = stream.set_read_timeout(Some(BUSY_TIMEOUT));
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_HEAD_BYTES + MAX_BODY_BYTES {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let busy = http::Response::error(503, "too many control connections; retry");
    let _ = busy.write_to(&mut stream);
}

/// One request, one response; any client misbehaviour ends here.
fn connection(stream: UnixStream, ctx: &ApiContext) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    // Reads go through a shared reference, so the read timeout is set on
    // the same socket without duplicating its descriptor.
    let request = http::read_request(&mut &stream, deadline, |left| {
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
    });
    let response = match request {
        Ok(req) => match routes::route(&req.method, &req.path, &req.body) {
            Ok(api_request) => {
                log::debug!("control API: {api_request:?}");
                routes::handle(api_request, ctx)
            }
            Err(response) => response,
        },
        Err(e) => {
            log::debug!("control API: {e}");
            match e.status() {
                Some(status) => http::Response::error(status, e),
                None => return,
            }
        }
    };
    if let Err(e) = response.write_to(&mut &stream) {
        log::debug!("control API: client went away before the answer: {e}");
    }
}
