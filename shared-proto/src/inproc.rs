//! In-process gRPC transport: real gRPC (HTTP/2 framing, the same tonic services and delivery
//! protocol as between pods) over in-memory duplex pipes, so no port is opened and nothing leaves
//! the process. All-in-one mode connects its services this way, and the services' tests drive
//! them through it (as tonic's `examples/src/mock` does).

use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint};

/// Size of each pipe's buffer.
const PIPE_BYTES: usize = 1 << 20;

/// The server half: a stream of incoming connections for `serve_with_incoming_shutdown`.
pub type Incoming = ReceiverStream<Result<DuplexStream, std::io::Error>>;

/// A client channel and the incoming-connection stream its server serves (pass it to
/// `serve_with_incoming` or `serve_with_incoming_shutdown`). The channel connects lazily, on its
/// first call, and opens a fresh pipe on every (re)connect.
pub fn pair() -> (Channel, Incoming) {
    let (tx, rx) = mpsc::channel::<Result<DuplexStream, std::io::Error>>(4);
    let connector = tower::service_fn(move |_: http::Uri| {
        let tx = tx.clone();
        async move {
            let (client, server) = tokio::io::duplex(PIPE_BYTES);
            tx.send(Ok(server)).await.map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::NotConnected, "server gone")
            })?;
            Ok::<_, std::io::Error>(TokioIo::new(client))
        }
    });
    // The URI is never resolved: the connector above answers every connect.
    let channel =
        Endpoint::from_static("http://in-process.invalid").connect_with_connector_lazy(connector);
    (channel, ReceiverStream::new(rx))
}
