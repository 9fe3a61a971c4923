//! `hyperlight-wasm serve`: each module's exports over HTTP, every call in
//! a micro-VM from the module's pool.
//!
//! - [`http`]: routes, JSON bodies, the request metrics;
//! - [`pool`]: a module's sandboxes on worker threads behind a bounded
//!   queue, and the [`pool::Backend`] that makes them;
//! - [`error`]: error kinds and their HTTP statuses;
//! - this file: the hyperlight-wasm backend, starting and stopping.

pub mod error;
pub mod http;
pub mod pool;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyperlight_wasm::component::{ComponentFunction, Val};
use hyperlight_wasm::{
    ExportedFunction, LoadedComponentSandbox, LoadedWasmSandbox, ParameterValue, ReturnType,
    ReturnValue, SandboxBuilder, SandboxPool,
};
use prometheus::Registry;
use tokio::sync::oneshot;

use self::error::{CallError, ErrorKind, chain};
use self::http::{AppState, HttpMetrics};
use self::pool::{Backend, Instance, ModulePool};
use crate::cli::{LogFormat, ServeOptions, Strategy};
use crate::{CliError, read_file};

/// The hyperlight-wasm backend: a sandbox per instance, all from one
/// builder and one module (after the first, sandboxes map the module's
/// shared image instead of loading it).
pub struct SandboxBackend {
    builder: SandboxBuilder,
    module: Vec<u8>,
    exports: Vec<ExportedFunction>,
    /// A component's exports, read by loading it once (`None`: a module).
    component_exports: Option<Vec<ComponentFunction>>,
    /// Sandboxes made ahead on a thread of their own, for `renew` (a new
    /// sandbox per request): a request takes a ready one.
    warm: Option<SandboxPool>,
}

impl std::fmt::Debug for SandboxBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxBackend")
            .field("exports", &self.exports.len())
            .finish_non_exhaustive()
    }
}

impl SandboxBackend {
    /// A backend for `module` (a module or component, binary or text), its
    /// sandboxes built by `builder`.
    pub fn new(
        builder: SandboxBuilder,
        module: Vec<u8>,
    ) -> Result<SandboxBackend, hyperlight_wasm::Error> {
        if hyperlight_wasm::is_component(&module) {
            // A component's WIT types come with its load.
            let loaded = builder
                .clone()
                .build()?
                .load_runtime()?
                .load_component_from_buffer(&module)?;
            return Ok(SandboxBackend {
                builder,
                module,
                exports: Vec::new(),
                component_exports: Some(loaded.exports().to_vec()),
                warm: None,
            });
        }
        let exports = hyperlight_wasm::inspect(&module)?.exports().to_vec();
        Ok(SandboxBackend {
            builder,
            module,
            exports,
            component_exports: None,
            warm: None,
        })
    }

    /// Makes fresh sandboxes of a module ahead of need, `size` at a time,
    /// on a thread of their own (for the `renew` strategy). Components are
    /// made when needed, as before.
    pub fn with_warm_pool(mut self, size: usize) -> Result<SandboxBackend, hyperlight_wasm::Error> {
        if self.component_exports.is_none() {
            self.warm = Some(SandboxPool::new(
                self.builder.clone(),
                self.module.clone(),
                size,
            )?);
        }
        Ok(self)
    }
}

impl Backend for SandboxBackend {
    fn exports(&self) -> &[ExportedFunction] {
        &self.exports
    }

    fn component_exports(&self) -> Option<&[ComponentFunction]> {
        self.component_exports.as_deref()
    }

    fn instantiate(&self, persistent: bool) -> Result<Box<dyn Instance>, CallError> {
        let cannot = |e: hyperlight_wasm::Error| {
            CallError::new(
                ErrorKind::Internal,
                format!("cannot create a sandbox: {}", chain(&e)),
            )
        };
        if let Some(warm) = self.warm.as_ref().filter(|_| !persistent) {
            let sandbox = warm.get().map_err(cannot)?.detach();
            return Ok(Box::new(SandboxInstance(sandbox)));
        }
        let runtime = self
            .builder
            .clone()
            .with_persistent_state(persistent)
            .build()
            .and_then(|sandbox| sandbox.load_runtime())
            .map_err(cannot)?;
        if self.component_exports.is_some() {
            let component = runtime
                .load_component_from_buffer(&self.module)
                .map_err(cannot)?;
            return Ok(Box::new(ComponentInstance(component)));
        }
        let sandbox = runtime
            .load_module_from_buffer(&self.module)
            .map_err(cannot)?;
        Ok(Box::new(SandboxInstance(sandbox)))
    }
}

struct ComponentInstance(LoadedComponentSandbox);

impl Instance for ComponentInstance {
    fn call(
        &mut self,
        function: &str,
        _: &[ParameterValue],
        _: ReturnType,
    ) -> Result<ReturnValue, CallError> {
        Err(CallError::new(
            ErrorKind::Internal,
            format!("a core module call of `{function}` on a component"),
        ))
    }

    fn call_component(&mut self, function: &str, args: &[Val]) -> Result<Vec<Val>, CallError> {
        Ok(self.0.call(function, args)?)
    }

    fn is_broken(&self) -> bool {
        self.0.is_poisoned()
    }
}

struct SandboxInstance(LoadedWasmSandbox);

impl Instance for SandboxInstance {
    fn call(
        &mut self,
        function: &str,
        args: &[ParameterValue],
        result: ReturnType,
    ) -> Result<ReturnValue, CallError> {
        Ok(self.0.call_guest_function_dynamic(function, args, result)?)
    }

    fn is_broken(&self) -> bool {
        self.0.is_poisoned()
    }
}

/// How a server runs its pools.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// How sandboxes are kept between requests.
    pub strategy: Strategy,
    /// Sandboxes per module.
    pub size: usize,
    /// Calls per module admitted at once.
    pub max_concurrency: usize,
}

/// A server that is running.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    state: Arc<AppState>,
}

impl Server {
    /// Starts the pools of `modules` (failing if any cannot make its
    /// sandboxes), binds `listen` and serves. Call from a tokio runtime.
    pub async fn start(
        listen: SocketAddr,
        modules: Vec<(String, Arc<dyn Backend>)>,
        pools: PoolConfig,
        max_body_size: usize,
        registry: Registry,
    ) -> Result<Server, CliError> {
        let metrics = HttpMetrics::register(&registry).map_err(|e| CliError::Other {
            context: String::from("cannot register the HTTP metrics"),
            source: Box::new(e),
        })?;
        let started = tokio::task::spawn_blocking(move || {
            let mut started = HashMap::new();
            for (name, backend) in modules {
                let pool = ModulePool::start(
                    &name,
                    backend,
                    pools.strategy,
                    pools.size,
                    pools.max_concurrency,
                )
                .map_err(|e| CliError::Other {
                    context: format!("cannot start module `{name}`"),
                    source: Box::new(e),
                })?;
                started.insert(name, pool);
            }
            Ok::<_, CliError>(started)
        })
        .await
        .map_err(|e| CliError::Other {
            context: String::from("starting the pools failed"),
            source: Box::new(e),
        })??;
        let state = Arc::new(AppState {
            modules: started,
            registry,
            metrics,
        });
        let listener =
            tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| CliError::Other {
                    context: format!("cannot listen on {listen}"),
                    source: Box::new(e),
                })?;
        let addr = listener.local_addr().map_err(|e| CliError::Other {
            context: String::from("cannot read the listening address"),
            source: Box::new(e),
        })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = http::router(Arc::clone(&state), max_body_size);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Server {
            addr,
            stop: Some(stop),
            task,
            state,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish for up to
    /// `deadline`, then stops the pools. Whether everything finished in
    /// time.
    pub async fn shutdown(mut self, deadline: Duration) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let finished = matches!(
            tokio::time::timeout(deadline, &mut self.task).await,
            Ok(Ok(Ok(())))
        );
        if !finished {
            self.task.abort();
        }
        let state = self.state;
        let _ = tokio::task::spawn_blocking(move || {
            // The connections' tasks hold the state until they end.
            if let Ok(state) = Arc::try_unwrap(state) {
                for (_, pool) in state.modules {
                    pool.close();
                }
            }
        })
        .await;
        finished
    }
}

/// Parses `NAME=PATH`.
fn parse_module(spec: &str) -> Result<(String, std::path::PathBuf), CliError> {
    let (name, path) = spec
        .split_once('=')
        .ok_or_else(|| CliError::Usage(format!("--module `{spec}`: expected NAME=PATH")))?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(CliError::Usage(format!(
            "--module `{spec}`: a module name is letters, digits, `-`, `_` and `.`"
        )));
    }
    Ok((name.to_owned(), path.into()))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Catches SIGTERM and SIGINT from now on; the future ends at the first.
fn terminated() -> Result<impl Future<Output = &'static str>, std::io::Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Runs the subcommand until SIGTERM or SIGINT.
pub fn serve(options: ServeOptions) -> Result<(), CliError> {
    init_logging(options.log_format);
    let os = |context: &str| {
        let context = context.to_owned();
        move |e: std::io::Error| CliError::Other {
            context,
            source: Box::new(e),
        }
    };
    // The library's metrics and ours in one registry, for /metrics.
    let registry: &'static Registry = Box::leak(Box::new(Registry::new()));
    hyperlight_wasm::set_metrics_registry(registry)
        .map_err(CliError::sandbox("cannot set the metrics registry"))?;
    let builder = crate::run::builder(&options.sandbox).with_max_execution_time(options.timeout);
    let mut specs: Vec<(String, std::path::PathBuf)> = Vec::new();
    for spec in &options.modules {
        let (name, path) = parse_module(spec)?;
        if specs.iter().any(|(other, _)| *other == name) {
            return Err(CliError::Usage(format!("--module `{name}` is given twice")));
        }
        specs.push((name, path));
    }
    let mut modules: Vec<(String, Arc<dyn Backend>)> = Vec::new();
    for (name, path) in specs {
        let bytes = read_file(&path)?;
        let cannot = || CliError::sandbox(format!("cannot serve `{}`", path.display()));
        let mut backend = SandboxBackend::new(builder.clone(), bytes).map_err(cannot())?;
        if options.strategy == Strategy::Renew {
            backend = backend
                .with_warm_pool(usize::from(options.pool_size))
                .map_err(cannot())?;
        }
        tracing::info!(
            module = name,
            path = %path.display(),
            exports = backend
                .component_exports()
                .map_or(backend.exports().len(), <[_]>::len),
            component = backend.component_exports().is_some(),
            "module"
        );
        modules.push((name, Arc::new(backend)));
    }
    let max_body_size = usize::try_from(options.max_body_size).unwrap_or(usize::MAX);
    let pools = PoolConfig {
        strategy: options.strategy,
        size: usize::from(options.pool_size),
        max_concurrency: usize::try_from(options.max_concurrency).unwrap_or(usize::MAX),
    };
    if pools.max_concurrency < pools.size {
        return Err(CliError::Usage(format!(
            "--max-concurrency {} is below --pool-size {}",
            pools.max_concurrency, pools.size
        )));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hyperlight-wasm-serve")
        .build()
        .map_err(os("cannot start the async runtime"))?;
    runtime.block_on(async {
        let server = Server::start(
            options.listen,
            modules,
            pools,
            max_body_size,
            registry.clone(),
        )
        .await?;
        let signal = terminated().map_err(os("cannot catch SIGTERM and SIGINT"))?;
        tracing::info!(
            address = %server.addr(),
            strategy = ?options.strategy,
            pool_size = options.pool_size,
            "listening"
        );
        // Tests and scripts read the address from this line.
        println!("listening on http://{}", server.addr());
        let signal = signal.await;
        tracing::info!(signal, deadline = ?options.shutdown_deadline, "shutting down");
        if server.shutdown(options.shutdown_deadline).await {
            tracing::info!("stopped");
        } else {
            tracing::warn!("requests were still in flight at the deadline");
        }
        Ok(())
    })
}
