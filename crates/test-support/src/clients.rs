//! Clients that misbehave on purpose, over real sockets: one that asks and never reads its
//! answer, one that trickles its request head.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connects with a small receive buffer (4 KiB, so the server's writes stall as soon as its own
/// buffers are full) and sends `request` (whole requests, pipelined if several), then reads
/// nothing.
pub async fn never_reading(port: u16, request: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut s = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    s.write_all(request).await.expect("write the request");
    s
}

/// Whether the server has closed `s` within `within`: reads (and drops) whatever it had sent
/// until end of stream or reset (closed), or until `within` passes with the connection still
/// open.
pub async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Opens a connection and sends a request head one line every `every`, for at most `max`;
/// returns how long the server kept the connection open.
pub async fn trickle(port: u16, every: Duration, max: Duration) -> Duration {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let opened = Instant::now();
    if s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .is_err()
    {
        return opened.elapsed();
    }
    let mut i = 0;
    while opened.elapsed() < max {
        tokio::time::sleep(every).await;
        i += 1;
        if s.write_all(format!("x-slow-{i}: {}\r\n", "a".repeat(20)).as_bytes())
            .await
            .is_err()
        {
            return opened.elapsed();
        }
        // A closed connection shows as end of stream (or a reset) on the read side.
        let mut buf = [0u8; 1024];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
        {
            return opened.elapsed();
        }
    }
    opened.elapsed()
}
