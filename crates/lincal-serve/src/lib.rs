//! lincal-serve: an OpenAI- and Anthropic-compatible HTTP server over lincal's local engine.
//!
//! One engine thread owns the model and a fixed set of decode rows; concurrent requests share
//! its decode steps (continuous batching: a sequence joins a free row between steps and leaves
//! when it ends). The HTTP side (axum) parses and checks requests, renders prompts with the
//! model's chat template, and turns the engine's per-token events into JSON or server-sent
//! events in each API's own shape.

mod anthropic;
pub mod engine;
mod http;
pub mod load;
pub mod metrics;
mod openai;

pub use engine::{Engine, EngineConfig, EngineHandle};

use lincal_model::{CausalLm, Tokenizer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Model(#[from] lincal_model::ModelError),
}

/// Everything `lincal serve` takes besides the model.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// `host:port`; port 0 picks a free one.
    pub address: String,
    /// The model name clients ask for.
    pub model_name: String,
    /// Required of every `/v1` request when set.
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// How long in-flight requests may run on after a shutdown signal.
    pub shutdown_timeout: Duration,
    pub engine: EngineConfig,
}

/// Serves `model` until `shutdown` resolves, then stops taking connections, lets in-flight
/// requests finish for up to `shutdown_timeout` and ends the rest with an error.
/// `on_listening` gets the bound address (useful with port 0).
pub fn serve(
    model: CausalLm,
    tokenizer: Tokenizer,
    config: ServeConfig,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let max_context = config.engine.max_context;
    // The engine is made on its own thread: its CUDA graphs must not move between threads.
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let engine_tokenizer = tokenizer.clone();
    let engine_config = config.engine.clone();
    let engine_thread = std::thread::Builder::new()
        .name("lincal-engine".into())
        .spawn(move || {
            // Nothing changes the served model: its passes may join projections and keep LoRA
            // factors cast for as long as it serves.
            lincal_model::lora::with_frozen_adapters(|| {
                let (engine, handle) = Engine::new(model, engine_tokenizer, engine_config);
                let _ = handle_tx.send(handle);
                engine.run();
            })
        })?;
    let handle = handle_rx
        .recv()
        .map_err(|_| std::io::Error::other("the engine thread ended at start"))?;
    let state = Arc::new(http::AppState::new(
        handle.clone(),
        tokenizer,
        config.model_name.clone(),
        max_context,
        config.api_key.clone(),
        config.max_body_bytes,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&config.address)
            .await
            .map_err(|source| ServeError::Bind {
                address: config.address.clone(),
                source,
            })?;
        on_listening(listener.local_addr()?);
        let timeout = config.shutdown_timeout;
        let engine = handle.clone();
        axum::serve(listener, http::router(state))
            .with_graceful_shutdown(async move {
                shutdown.await;
                engine.shutdown(Instant::now() + timeout);
            })
            .await?;
        Ok(())
    });
    // The engine thread ends once the last handle is gone and its work is done.
    drop(handle);
    runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = engine_thread.join();
    result
}

/// A server on a thread of this process (benchmarks, tests), stopped when dropped.
pub struct BackgroundServer {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

impl BackgroundServer {
    /// Starts serving and returns once the server listens.
    pub fn start(
        model: CausalLm,
        tokenizer: Tokenizer,
        config: ServeConfig,
    ) -> Result<BackgroundServer, ServeError> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            serve(
                model,
                tokenizer,
                config,
                move |address| {
                    let _ = address_tx.send(address);
                },
                async move {
                    let _ = stopped.await;
                },
            )
        });
        match address_rx.recv() {
            Ok(address) => Ok(BackgroundServer {
                address,
                stop: Some(stop),
                thread: Some(thread),
            }),
            // The server ended before it listened: its error says why.
            Err(_) => Err(thread
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the server panicked").into()))
                .err()
                .unwrap_or_else(|| std::io::Error::other("the server ended at start").into())),
        }
    }

    /// `http://HOST:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Starts the shutdown: no new connections, answers in flight go on.
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits for the server to end.
    pub fn stop(&mut self) -> Result<(), ServeError> {
        self.signal_shutdown();
        match self.thread.take().map(std::thread::JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the server panicked").into()),
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Resolves at SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
