//! A tiny HTTP/1.1 client over `hyper::client::conn::http1`: one keep-alive TCP
//! connection per [`HttpConn`], no pooling, no redirects, no TLS.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::BenchError;

/// A fully received HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names are lower case (as hyper gives them); values are decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Fields sent after a chunked body (the server sends them to a request with
    /// `TE: trailers`), like `headers`.
    pub trailers: Vec<(String, String)>,
}

/// Trailers of a response whose body was read, kept in its extensions.
#[derive(Clone)]
struct ReceivedTrailers(HeaderMap);

fn lossy(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

impl Response {
    /// The first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first trailer called `name` (ASCII case-insensitive).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn from_hyper(resp: hyper::Response<Bytes>) -> Self {
        let (parts, body) = resp.into_parts();
        Response {
            status: parts.status.as_u16(),
            headers: lossy(&parts.headers),
            body,
            trailers: parts
                .extensions
                .get::<ReceivedTrailers>()
                .map(|t| lossy(&t.0))
                .unwrap_or_default(),
        }
    }
}

/// A request target parsed once and sent many times (used by the load generator).
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    has_host: bool,
}

impl Prepared {
    pub(crate) fn new(
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, BenchError> {
        if !path_and_query.starts_with('/') {
            return Err(BenchError::InvalidRequest(format!(
                "path must start with '/': {path_and_query:?}"
            )));
        }
        let uri: Uri = path_and_query
            .parse()
            .map_err(|e| BenchError::InvalidRequest(format!("bad path {path_and_query:?}: {e}")))?;
        let mut map = HeaderMap::with_capacity(headers.len() + 1);
        for (name, value) in headers {
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                BenchError::InvalidRequest(format!("bad header name {name:?}: {e}"))
            })?;
            let v = HeaderValue::from_str(value).map_err(|e| {
                BenchError::InvalidRequest(format!("bad value for header {name:?}: {e}"))
            })?;
            map.append(n, v);
        }
        let has_host = map.contains_key(HOST);
        Ok(Prepared {
            method,
            uri,
            headers: map,
            has_host,
        })
    }
}

/// One keep-alive HTTP/1.1 connection. Requests on it are sequential (`&mut self`).
///
/// Dropping it closes the connection.
pub struct HttpConn {
    host: HeaderValue,
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl std::fmt::Debug for HttpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConn")
            .field("host", &self.host)
            .field("closed", &self.sender.is_closed())
            .finish()
    }
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        // Close the socket now rather than whenever hyper notices the sender is gone.
        self.driver.abort();
    }
}

impl HttpConn {
    /// Open a TCP connection to `addr` (with `TCP_NODELAY`) and do the HTTP/1 handshake.
    ///
    /// Running out of file descriptors gives [`BenchError::TooManyOpenFiles`].
    pub async fn connect(addr: SocketAddr) -> Result<HttpConn, BenchError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| BenchError::from_connect_error(addr, 0, e))?;
        // Latency numbers are meaningless with Nagle's algorithm on; failure is harmless.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| BenchError::Handshake { addr, source })?;
        let driver = tokio::spawn(async move {
            // Errors surface on the next `send_request`; nothing to do with them here.
            let _ = conn.await;
        });
        let host = HeaderValue::from_str(&addr.to_string())
            .expect("a socket address is always a valid header value");
        Ok(HttpConn {
            host,
            sender,
            driver,
        })
    }

    /// True once the connection is known to be closed (by the peer or after an error).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Send one request and read the whole response body.
    ///
    /// `path_and_query` must be in origin form (`/path?query`). A `Host` header is added
    /// unless `headers` has one. Non-2xx statuses are *not* errors.
    pub async fn request(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, BenchError> {
        let prepared = Prepared::new(method, path_and_query, headers)?;
        self.send(&prepared, body).await.map(Response::from_hyper)
    }

    /// The hot-path variant: no re-parsing, no header copying of the response.
    pub(crate) async fn send(
        &mut self,
        p: &Prepared,
        body: Bytes,
    ) -> Result<hyper::Response<Bytes>, BenchError> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = p.method.clone();
        *req.uri_mut() = p.uri.clone();
        *req.headers_mut() = p.headers.clone();
        if !p.has_host {
            req.headers_mut().insert(HOST, self.host.clone());
        }
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let (mut parts, incoming) = resp.into_parts();
        let collected = incoming.collect().await?;
        if let Some(trailers) = collected.trailers() {
            parts.extensions.insert(ReceivedTrailers(trailers.clone()));
        }
        Ok(hyper::Response::from_parts(parts, collected.to_bytes()))
    }
}

/// One-shot convenience (used by the CLI): connect, send one request, read the response,
/// close the connection.
pub async fn request_once(
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Response, BenchError> {
    let prepared = Prepared::new(method, path_and_query, headers)?;
    let mut conn = HttpConn::connect(addr).await?;
    conn.send(&prepared, body).await.map(Response::from_hyper)
}
