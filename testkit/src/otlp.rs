//! An OTLP/gRPC logs receiver for end-to-end tests: records every export request (gzip
//! accepted) and answers success.

use std::{
    net::TcpListener,
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use anyhow::Result;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
    logs_service_server::{LogsService, LogsServiceServer},
};
use tonic::{Request, Response, Status, codec::CompressionEncoding};

/// The requests received so far (shared by every clone).
#[derive(Clone, Default)]
pub struct LogsReceiver(pub Arc<Mutex<Vec<ExportLogsServiceRequest>>>);

#[tonic::async_trait]
impl LogsService for LogsReceiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.0
            .lock()
            .map_err(|_| Status::internal("receiver lock poisoned"))?
            .push(request.into_inner());
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

impl LogsReceiver {
    /// Serves on `listener` (bound by the caller, e.g. inside a test namespace) on a thread of
    /// its own, until the returned server is stopped or dropped.
    pub fn serve(&self, listener: TcpListener) -> Result<OtlpServer> {
        listener.set_nonblocking(true)?;
        let recv = self.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let _ = tonic::transport::Server::builder()
                    .add_service(
                        LogsServiceServer::new(recv).accept_compressed(CompressionEncoding::Gzip),
                    )
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(l),
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await;
            });
        });
        Ok(OtlpServer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Log records received so far, over all requests.
    pub fn records(&self) -> usize {
        self.0
            .lock()
            .map(|reqs| {
                reqs.iter()
                    .flat_map(|r| &r.resource_logs)
                    .flat_map(|rl| &rl.scope_logs)
                    .map(|sl| sl.log_records.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// A running [`LogsReceiver::serve`]: stops serving (and closes its port) when dropped.
pub struct OtlpServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for OtlpServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
