//! The control API under hostile clients.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::harness::*;

#[test]
fn hostile_clients_do_not_disturb_the_vm() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("hostile");
    rt.start("h", "probe.action=tick", &[]);
    let sock = rt.path("h", "api.sock");

    let answer = raw(&sock, b"\x16\x03\x01garbage\r\n\r\n");
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
    let mut huge = b"GET /v1/vm HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(64 * 1024, b'a');
    assert_eq!(status_of(&raw(&sock, &huge)), 431);
    let mut many = b"GET /v1/vm HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(status_of(&raw(&sock, &many)), 431);
    let answer = raw(&sock, b"GET /v1/nothing HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&answer), 404, "{answer}");
    let answer = raw(&sock, b"DELETE /v1/vm HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&answer), 405, "{answer}");
    assert!(answer.contains("Allow: GET"), "{answer}");
    let answer = raw(
        &sock,
        b"POST /v1/vm/stop HTTP/1.1\r\nContent-Length: 9\r\n\r\nnot json!",
    );
    assert_eq!(status_of(&answer), 400, "{answer}");
    let answer = raw(
        &sock,
        b"POST /v1/vm/stop HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 413, "{answer}");

    // Half a request, then the client hangs up its side: no answer needed,
    // nothing disturbed.
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(b"GET /v1/vm HTT").unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = String::new();
    let _ = half.read_to_string(&mut rest);
    assert!(rest.is_empty(), "answered a half request: {rest}");
    // A client that sends nothing gets 408 after the request timeout, and
    // a crowd of them gets 503s, while real requests still go through.
    let idle: Vec<UnixStream> = (0..12)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let answer = raw(&sock, b"GET /v1/vm HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&answer), 503, "{answer}");
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut a = String::new();
        let _ = c.read_to_string(&mut a);
        let status = status_of(&a);
        assert!(status == 408 || status == 503, "{a}");
    }
    let before = last_tick(&rt.console("h"));
    let vm = rt.json(&["inspect", "h"]);
    assert_eq!(vm["vm"]["state"], "running", "{vm}");
    rt.wait_console("h", "ticks after the abuse", |c| last_tick(c) > before);
    let answer = raw(&sock, b"GET /v1/vm HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&answer), 200, "{answer}");
}
