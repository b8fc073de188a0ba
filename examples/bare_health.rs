//! The benchmark's yardstick for `/health`: a bare tiny_http loop that answers `/health`
//! and does nothing else. Prints its port, then serves until killed.

fn main() {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
    let port = server.server_addr().to_ip().map(|a| a.port()).unwrap_or(0);
    println!("{port}");
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("header");
    for rq in server.incoming_requests() {
        let response = if rq.url() == "/health" {
            tiny_http::Response::from_string(r#"{"ok":true}"#).with_header(header.clone())
        } else {
            tiny_http::Response::from_string(r#"{"ok":false}"#).with_status_code(404)
        };
        let _ = rq.respond(response);
    }
}
