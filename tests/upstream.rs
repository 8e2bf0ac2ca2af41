//! Upstream keep-alive connections (`src/proxy/upstream.rs`) against raw-socket backends whose
//! connection behaviour the test controls: sequential requests share one connection, a
//! connection the backend closed while idle is never reused, a request lost on a reused
//! connection the backend closed is sent again on a fresh one, and a response cut short is not
//! pooled.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::{config_for, post, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STREAM: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

const REQUEST: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false}}"#;

/// What a backend connection does after answering its `n`-th request (0-based).
#[derive(Clone, Copy)]
enum AfterAnswer {
    /// Keep the connection open for more requests.
    KeepAlive,
    /// Close the connection (without saying `Connection: close`).
    Close,
    /// Read the next request on this connection, then close without answering it.
    DropNext,
}

/// A backend on a raw socket: counts connections and answered requests.
struct RawBackend {
    url: String,
    connections: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

impl RawBackend {
    async fn spawn(after: AfterAnswer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let connections = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (conns, done) = (connections.clone(), answered.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, after, done.clone()));
            }
        });
        Self {
            url,
            connections,
            answered,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

async fn serve(mut socket: TcpStream, after: AfterAnswer, answered: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        if !read_request(&mut socket, &mut buf).await {
            return;
        }
        let mut response = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for event in STREAM
            .split_inclusive(|&b| b == b'\n')
            .collect::<Vec<_>>()
            .chunks(2)
        {
            let piece: Vec<u8> = event.concat();
            response.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            response.extend_from_slice(&piece);
            response.extend_from_slice(b"\r\n");
        }
        response.extend_from_slice(b"0\r\n\r\n");
        if socket.write_all(&response).await.is_err() {
            return;
        }
        answered.fetch_add(1, Ordering::SeqCst);
        match after {
            AfterAnswer::KeepAlive => {}
            AfterAnswer::Close => return,
            AfterAnswer::DropNext => {
                let _ = read_request(&mut socket, &mut buf).await;
                return;
            }
        }
    }
}

/// Reads one request (head and `content-length` body) into `buf`, consuming it; false at EOF.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                buf.drain(..end + 4 + length);
                return true;
            }
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn gateway(backend: &RawBackend) -> TestGateway {
    let mut config = config_for(std::slice::from_ref(&backend.url));
    for pool in config.pools.values_mut() {
        // Only the requests under test reach the backend: no probes, no `/metrics` scrapes.
        pool.health.enabled = false;
        pool.scrape_interval = Some(std::time::Duration::ZERO);
    }
    TestGateway::start(config).await
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let backend = RawBackend::spawn(AfterAnswer::KeepAlive).await;
    let gw = gateway(&backend).await;
    for _ in 0..5 {
        let (status, _, body) = post(&gw.url("/v1/chat/completions"), REQUEST).await;
        assert_eq!(status, 200);
        assert_eq!(&body[..], STREAM, "the stream passes through whole");
    }
    assert_eq!(backend.answered(), 5);
    assert_eq!(
        backend.connections(),
        1,
        "one keep-alive connection for all five"
    );
}

/// Three requests through a gateway to a backend that behaves as `after` says: each must
/// succeed whole, and each must have needed a connection of its own.
async fn three_requests_on_three_connections(after: AfterAnswer) {
    let backend = RawBackend::spawn(after).await;
    let gw = gateway(&backend).await;
    for i in 1..=3 {
        let (status, _, body) = post(&gw.url("/v1/chat/completions"), REQUEST).await;
        assert_eq!(status, 200, "request {i}");
        assert_eq!(&body[..], STREAM);
    }
    assert_eq!(backend.answered(), 3);
    assert_eq!(backend.connections(), 3);
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_not_reused() {
    three_requests_on_three_connections(AfterAnswer::Close).await;
}

#[tokio::test]
async fn a_request_lost_on_a_reused_connection_is_sent_again_on_a_fresh_one() {
    // Request 1 opens connection 1; requests 2 and 3 are each read and dropped on the reused
    // connection, then answered on a new one.
    three_requests_on_three_connections(AfterAnswer::DropNext).await;
}

#[tokio::test]
async fn a_response_cut_short_leaves_no_connection_behind() {
    // The backend promises more than it sends, then closes: the client gets an error event,
    // and the next request needs (and gets) a connection of its own.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_request(&mut socket, &mut buf).await {
                    let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                    let piece = &STREAM[..40];
                    out.extend_from_slice(format!("{:x}\r\n", piece.len() + 100).as_bytes());
                    out.extend_from_slice(piece);
                    let _ = socket.write_all(&out).await;
                }
            });
        }
    });
    let backend = RawBackend {
        url,
        connections: connections.clone(),
        answered: Arc::new(AtomicUsize::new(0)),
    };
    let gw = gateway(&backend).await;
    for _ in 0..2 {
        let (status, _, body) = post(&gw.url("/v1/chat/completions"), REQUEST).await;
        assert_eq!(status, 200, "the head had been forwarded");
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains(r#"{"error""#),
            "an error event ends it: {text}"
        );
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}
