//! One HTTP/1.1 exchange over any byte stream: a TCP connection to `zeroscale dev` or
//! `--url`, or a port-forward to an activator pod through the API server.

use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Error, Result};

/// Sends `request` on `stream` and reads the whole response.
pub async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Response<Bytes>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let url = request.uri().to_string();
    let http_error = |source| Error::Http {
        url: url.clone(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    let connection = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(http_error)?;
    let (head, body) = response.into_parts();
    let body = body.collect().await.map_err(http_error)?.to_bytes();
    drop(sender);
    connection.abort();
    Ok(Response::from_parts(head, body))
}

/// Opens a TCP connection to the host and port of `uri` (port 80 by default).
pub async fn connect(uri: &Uri) -> Result<tokio::net::TcpStream> {
    let host = uri.host().unwrap_or("127.0.0.1");
    let port = uri.port_u16().unwrap_or(80);
    tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|source| Error::Io {
            what: format!("connecting to {host}:{port}"),
            source,
        })
}

/// GETs `url` over plain HTTP and returns its body as text; a non-2xx answer is an error.
pub async fn get_text(url: &str) -> Result<String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| Error::Usage(format!("{url} is not a URL: {e}")))?;
    let stream = connect(&uri).await?;
    let request = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            uri.authority().map_or("", |a| a.as_str()),
        )
        .body(Full::new(Bytes::new()))
        .map_err(|e| Error::Usage(format!("{url}: {e}")))?;
    let response = exchange(stream, request).await?;
    let body = String::from_utf8_lossy(response.body()).into_owned();
    if !response.status().is_success() {
        return Err(Error::HttpStatus {
            url: url.to_owned(),
            status: response.status(),
            body,
        });
    }
    Ok(body)
}
