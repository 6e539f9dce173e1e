//! Turns a parsed HTTP request into an [`ApiRequest`] (pure, tested without
//! a VM) and carries it out against the VM's control handle.

use std::time::Duration;

use devices::StopReason;
use serde::Deserialize;
use serde_json::json;

use super::http::Response;
use super::ApiContext;
use crate::control::{ControlError, PowerOffMethod, DEFAULT_STOP_TIMEOUT};

#[derive(Debug, PartialEq)]
pub enum ApiRequest {
    GetVm,
    GetMetrics,
    Stop { timeout: Duration },
    Kill,
    Pause,
    Resume,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopBody {
    timeout_s: Option<f64>,
}

const ROUTES: &[(&str, &str)] = &[
    ("/v1/vm", "GET"),
    ("/v1/metrics", "GET"),
    ("/v1/vm/stop", "POST"),
    ("/v1/vm/kill", "POST"),
    ("/v1/vm/pause", "POST"),
    ("/v1/vm/resume", "POST"),
];

pub fn route(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, Response> {
    let path = path.trim_end_matches('/');
    let Some(&(_, allowed)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        let known: Vec<_> = ROUTES.iter().map(|(p, m)| format!("{m} {p}")).collect();
        return Err(Response::error(
            404,
            format!("no such path {path:?}; the API has: {}", known.join(", ")),
        ));
    };
    if method != allowed {
        return Err(Response {
            allow: Some(allowed),
            ..Response::error(405, format!("{path} takes {allowed}, not {method}"))
        });
    }
    Ok(match path {
        "/v1/vm" => ApiRequest::GetVm,
        "/v1/metrics" => ApiRequest::GetMetrics,
        "/v1/vm/stop" => ApiRequest::Stop {
            timeout: stop_timeout(body)?,
        },
        "/v1/vm/kill" => ApiRequest::Kill,
        "/v1/vm/pause" => ApiRequest::Pause,
        _ => ApiRequest::Resume,
    })
}

fn stop_timeout(body: &[u8]) -> Result<Duration, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DEFAULT_STOP_TIMEOUT);
    }
    let parsed: StopBody = serde_json::from_slice(body).map_err(|e| {
        Response::error(
            400,
            format!("bad stop request body ({e}); send {{\"timeout_s\": SECONDS}} or nothing"),
        )
    })?;
    match parsed.timeout_s {
        None => Ok(DEFAULT_STOP_TIMEOUT),
        Some(t) => crate::control::stop_timeout(t)
            .map_err(|e| Response::error(400, format!("timeout_s {e}"))),
    }
}

fn control_error(e: &ControlError) -> Response {
    let status = match e {
        ControlError::Stopping => 409,
        ControlError::PauseTimeout(_) => 503,
    };
    Response::error(status, e)
}

pub fn handle(request: ApiRequest, ctx: &ApiContext) -> Response {
    let control = &ctx.control;
    match request {
        ApiRequest::GetVm => {
            match serde_json::to_value(super::info::vm_info(&ctx.description, control)) {
                Ok(v) => Response::json(200, v),
                Err(e) => Response::error(500, e),
            }
        }
        ApiRequest::GetMetrics => match serde_json::to_value(ctx.metrics.snapshot()) {
            Ok(v) => Response::json(200, v),
            Err(e) => Response::error(500, e),
        },
        ApiRequest::Stop { timeout } => {
            let method = control.power_off(
                timeout,
                "stop requested through the API",
                StopReason::HostRequest("stopped at once through the API".into()),
            );
            let note = match method {
                PowerOffMethod::CtrlAltDel => "the guest was asked to power off",
                PowerOffMethod::Immediate => {
                    "the guest cannot be asked to power off (no keyboard driver); stopped at once"
                }
                PowerOffMethod::AlreadyStopping => "the VM was already stopping",
            };
            Response::json(
                202,
                json!({ "state": "stopping", "method": method, "timeout_s": timeout.as_secs_f64(), "message": note }),
            )
        }
        ApiRequest::Kill => {
            control.kill("killed through the API");
            Response::json(202, json!({ "state": "stopping", "method": "immediate" }))
        }
        ApiRequest::Pause => match control.pause() {
            Ok(()) => Response::json(200, json!({ "state": control.state() })),
            Err(e) => control_error(&e),
        },
        ApiRequest::Resume => match control.resume() {
            Ok(()) => Response::json(200, json!({ "state": control.state() })),
            Err(e) => control_error(&e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(method: &str, path: &str, body: &str) -> u16 {
        route(method, path, body.as_bytes()).unwrap_err().status
    }

    #[test]
    fn paths_and_methods() {
        assert_eq!(route("GET", "/v1/vm", b""), Ok(ApiRequest::GetVm));
        assert_eq!(
            route("GET", "/v1/metrics/", b""),
            Ok(ApiRequest::GetMetrics)
        );
        assert_eq!(route("POST", "/v1/vm/pause", b""), Ok(ApiRequest::Pause));
        assert_eq!(status("GET", "/v2/vm", ""), 404);
        assert_eq!(status("DELETE", "/v1/vm", ""), 405);
        let r = route("GET", "/v1/vm/stop", b"").unwrap_err();
        assert_eq!(r.allow, Some("POST"));
    }

    #[test]
    fn stop_bodies() {
        assert_eq!(
            route("POST", "/v1/vm/stop", b""),
            Ok(ApiRequest::Stop {
                timeout: DEFAULT_STOP_TIMEOUT
            })
        );
        assert_eq!(
            route("POST", "/v1/vm/stop", br#"{"timeout_s": 2.5}"#),
            Ok(ApiRequest::Stop {
                timeout: Duration::from_millis(2500)
            })
        );
        assert_eq!(status("POST", "/v1/vm/stop", "{\"timeout\": 1}"), 400);
        assert_eq!(status("POST", "/v1/vm/stop", "{\"timeout_s\": -1}"), 400);
        assert_eq!(status("POST", "/v1/vm/stop", "nonsense"), 400);
    }
}
