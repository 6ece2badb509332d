//! Minimal HTTP/1.1 over a real socket, one request per connection: what tests send when they
//! must control every header (or send what a browser would).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer: status, headers (names in lower case) and body text.
pub type Answer = (u16, Vec<(String, String)>, String);

/// Sends `method path` with `headers` and `body` (and `Content-Length`, `Connection: close`,
/// and `Host: localhost:<port>` unless `headers` has one), reads the whole answer.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        extra = format!("Host: localhost:{port}\r\n{extra}");
    }
    let req = format!(
        "{method} {path} HTTP/1.1\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = raw.get(split + 4..).unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked =
        header(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    (status, headers, String::from_utf8_lossy(&body).to_string())
}

/// The body of a `Transfer-Encoding: chunked` answer (as far as it arrived).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rest.len());
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            return out;
        };
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        let Some(chunk) = rest.get(start..start + size) else {
            out.extend_from_slice(&rest[start.min(rest.len())..]);
            return out;
        };
        out.extend_from_slice(chunk);
        rest = rest.get(start + size + 2..).unwrap_or_default();
    }
}

/// The first value of header `name` (lower case).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// One server-sent event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    /// When it arrived.
    pub at: Option<std::time::Instant>,
}

/// A `text/event-stream` answer read as it arrives (HTTP/1.1, chunked).
pub struct EventStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: tokio::io::BufReader<tokio::net::TcpStream>,
    text: String,
    /// Comment lines seen (keep-alives).
    pub comments: usize,
    ended: bool,
}

/// Opens `GET path` and reads the head; the events are read with [`EventStream::next`].
pub async fn event_stream(port: u16, path: &str, headers: &[(&str, &str)]) -> EventStream {
    use tokio::io::AsyncBufReadExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nAccept: text/event-stream\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut reader = tokio::io::BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let chunked = header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length = header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    let mut stream = EventStream {
        status,
        headers,
        reader,
        text: String::new(),
        comments: 0,
        ended: false,
    };
    if !chunked {
        // A problem or an empty answer: read what there is.
        let mut body = vec![0; length.unwrap_or(0)];
        let _ = stream.reader.read_exact(&mut body).await;
        stream.text = String::from_utf8_lossy(&body).to_string();
        stream.ended = true;
    }
    stream
}

impl EventStream {
    /// The body read so far when the answer was not a stream.
    pub fn body(&self) -> &str {
        &self.text
    }

    /// The next event, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        use tokio::io::AsyncBufReadExt;
        loop {
            if let Some(at) = self.text.find("\n\n") {
                let block: String = self.text.drain(..at + 2).collect();
                let mut event = SseEvent {
                    at: Some(std::time::Instant::now()),
                    ..SseEvent::default()
                };
                let mut fields = 0;
                for l in block.lines() {
                    if l.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (k, v) = l.split_once(':').unwrap_or((l, ""));
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    fields += 1;
                    match k {
                        "id" => event.id = Some(v.to_string()),
                        "event" => event.event = Some(v.to_string()),
                        "data" => {
                            if !event.data.is_empty() {
                                event.data.push('\n');
                            }
                            event.data.push_str(v);
                        }
                        _ => {}
                    }
                }
                if fields > 0 && (event.event.is_some() || !event.data.is_empty()) {
                    return Some(event);
                }
                continue;
            }
            if self.ended {
                return None;
            }
            // One chunk: its size in hex, its bytes, CRLF; size 0 ends the body.
            let mut size = String::new();
            if self.reader.read_line(&mut size).await.unwrap_or(0) == 0 {
                self.ended = true;
                continue;
            }
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                self.ended = true;
                continue;
            }
            let mut chunk = vec![0; n + 2];
            self.reader.read_exact(&mut chunk).await.expect("chunk");
            self.text
                .push_str(&String::from_utf8_lossy(&chunk[..n]).replace("\r\n", "\n"));
        }
    }
}

/// One keep-alive HTTP/1.1 connection, for load generators: a request written whole, its answer
/// read (bodies with `Content-Length`, as the gateway and uvicorn send them).
pub struct KeepAlive {
    conn: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl KeepAlive {
    pub async fn connect(port: u16) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            conn: tokio::io::BufReader::new(stream),
        })
    }

    /// Sends `request` (a whole HTTP/1.1 request) and reads the answer: status and body.
    pub async fn call(&mut self, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        use tokio::io::AsyncBufReadExt;
        self.conn.get_mut().write_all(request).await?;
        let mut line = String::new();
        self.conn.read_line(&mut line).await?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            if self.conn.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        self.conn.read_exact(&mut body).await?;
        Ok((status, body))
    }
}
