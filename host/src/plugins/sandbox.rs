//! The sandbox every plugin call runs in: one shared [`Engine`], a fresh
//! [`Store`] per call (a trap poisons a store), a fuel budget, a memory
//! limit, WASI with nothing granted (no files, no network, no environment,
//! no arguments) and stdout/stderr captured into capped in-memory pipes.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::PluginError;

/// Bytes of stdout and of stderr kept per call by default (`output_kib`);
/// the rest is dropped.
pub const OUTPUT_CAP: usize = crate::config::OUTPUT_KIB as usize * 1024;

/// How often the engine's epoch advances: the granularity of wall-clock
/// deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(50);

/// Largest linear memory any plugin may have (the per-plugin limit is lower).
pub const MAX_MEMORY_BYTES: u64 = 1 << 30;

/// Engine settings shared by every plugin: fuel bounds CPU, an epoch
/// deadline bounds wall-clock time, a pooling allocator keeps instantiation
/// cheap. The pool holds what `concurrent_calls` plugin calls at once need
/// (`worker.concurrency`: each worker makes one call at a time, its store
/// dropped before the next); a call beyond it fails to instantiate.
///
/// With a `cache` ([`plugin_cache`]), compiled components are kept on
/// disk, so a restart does not compile them again.
pub fn engine(
    concurrent_calls: u32,
    cache: Option<wasmtime::Cache>,
) -> Result<Engine, PluginError> {
    let calls = concurrent_calls.max(1);
    let mut config = wasmtime::Config::new();
    config.cache(cache);
    config.consume_fuel(true);
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_component_instances(2 * calls)
        .total_core_instances(8 * calls)
        .total_memories(2 * calls)
        .total_tables(4 * calls)
        .total_stacks(calls)
        .max_unused_warm_slots(calls)
        .max_memory_size(MAX_MEMORY_BYTES as usize);
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    start_epoch_ticker(&engine)?;
    Ok(engine)
}

/// wasmtime's cache of compiled code in `dir`: an entry is keyed by the
/// wasmtime version, every engine setting that changes the code and the
/// component's bytes, so an upgrade or a changed file compiles anew. The
/// directory is created for the service's user alone: what it holds is
/// native code.
pub fn plugin_cache(dir: &Path) -> Result<wasmtime::Cache, PluginError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PluginError::Engine(format!("creating {}: {e}", dir.display())))?;
    let mut config = wasmtime::CacheConfig::new();
    config.with_directory(dir);
    wasmtime::Cache::new(config)
        .map_err(|e| PluginError::Engine(format!("plugin cache {}: {e:#}", dir.display())))
}

/// One background thread per engine advances its epoch every tick.
fn start_epoch_ticker(engine: &Engine) -> Result<(), PluginError> {
    static TICKERS: OnceLock<Mutex<Vec<Engine>>> = OnceLock::new();
    let engines = TICKERS.get_or_init(|| {
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    if let Some(list) = TICKERS.get()
                        && let Ok(list) = list.lock()
                    {
                        for engine in list.iter() {
                            engine.increment_epoch();
                        }
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(
                |e| tracing::error!(error = %e, "cannot start the plugin epoch ticker"),
            );
        Mutex::new(Vec::new())
    });
    engines
        .lock()
        .map_err(|_| PluginError::Engine("epoch ticker lock poisoned".into()))?
        .push(engine.clone());
    Ok(())
}

/// Per-plugin limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Wasm instructions per call (fuel).
    pub fuel: u64,
    /// Linear memory per call.
    pub memory_bytes: usize,
    /// Wall-clock time per call, host work included; checked whenever the
    /// plugin runs wasm code.
    pub timeout: Duration,
    /// Bytes of stdout and of stderr kept per call.
    pub output_bytes: usize,
    /// The largest input a call is handed (the event as JSON, and the
    /// config): a larger one is refused before the plugin runs.
    pub input_bytes: usize,
}

impl Limits {
    /// A configured plugin's limits, its kind's defaults where unset.
    pub fn of(plugin: &crate::config::PluginConfig) -> Self {
        Limits {
            fuel: plugin.fuel(),
            memory_bytes: plugin.memory_bytes(),
            timeout: plugin.timeout(),
            output_bytes: plugin.output_bytes(),
            input_bytes: plugin.input_bytes(),
        }
    }
}

/// The size of `event` as JSON, counted without building it.
fn json_size(event: &crate::event::Event) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing plain data into a counter cannot fail; were it to, the
    // count so far is what is known.
    let _ = serde_json::to_writer(&mut count, event);
    count.0
}

/// stdout/stderr sink that keeps the first `cap` bytes and silently drops
/// the rest, so a flood never fails the plugin's writes.
#[derive(Clone)]
pub struct CappedPipe {
    cap: usize,
    buf: Arc<Mutex<Vec<u8>>>,
}

impl CappedPipe {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            buf: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn contents(&self) -> Vec<u8> {
        self.buf.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl wasmtime_wasi::cli::IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CappedPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }
}

impl wasmtime_wasi::p2::OutputStream for CappedPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        if let Ok(mut buf) = self.buf.lock() {
            let room = self.cap.saturating_sub(buf.len());
            buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

/// The state of one plugin call.
pub struct PluginState<X> {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    stdout: CappedPipe,
    stderr: CappedPipe,
    pub plugin: Arc<str>,
    pub config_json: Arc<str>,
    pub delivery_id: String,
    /// Log lines accepted during this call (capped at [`LOG_LINES_CAP`]).
    pub log_lines: u32,
    /// The accepted lines, kept when a trial (`plugin test`) asks for them.
    pub captured: Option<Vec<LogLine>>,
    /// The alerts this call raises (see `caps/alerts.rs`).
    pub alerts: super::caps::alerts::CallAlerts,
    /// What the host's calls cost, and the kind of the last that failed.
    pub host: super::caps::HostCalls,
    /// What this world's capabilities are served by (the vault and a
    /// fetch for a backup; nothing for a filter).
    pub extra: X,
}

/// What one call cost and said, for `plugin test`.
#[derive(Debug, Default)]
pub struct CallReport {
    /// Fuel (wasm instructions, roughly) the call used of its budget.
    pub fuel_used: u64,
    /// Instantiation and the call.
    pub elapsed: std::time::Duration,
    /// What the plugin wrote (capped as in `serve`).
    pub stdout: String,
    pub stderr: String,
    /// The lines it logged.
    pub logs: Vec<LogLine>,
    /// The alerts it raised (shown, not sent).
    pub alerts: Vec<crate::alerts::Alert>,
}

impl<X> PluginState<X> {
    /// Keep this call's log lines and alerts instead of sending them on.
    pub fn capture(&mut self) {
        self.captured = Some(Vec::new());
        self.alerts.captured = Some(Vec::new());
    }
}

impl Loaded {
    /// What the call in `store`, started at `started`, cost and said.
    pub fn report<X>(
        &self,
        store: &mut Store<PluginState<X>>,
        started: std::time::Instant,
    ) -> CallReport {
        let elapsed = started.elapsed();
        let fuel_used = self
            .limits
            .fuel
            .saturating_sub(store.get_fuel().unwrap_or(0));
        let (stdout, stderr) = store.data().output();
        let state = store.data_mut();
        CallReport {
            fuel_used,
            elapsed,
            stdout,
            stderr,
            logs: state.captured.take().unwrap_or_default(),
            alerts: state.alerts.captured.take().unwrap_or_default(),
        }
    }
}

/// A line a plugin logged, as `plugin test` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogLine {
    pub level: &'static str,
    pub message: String,
}

/// `text` cut to at most `max` bytes (at a character boundary), marked
/// with `…` when cut.
pub fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push('…');
    }
    text
}

/// Log lines a plugin may emit per call, and bytes per line.
pub const LOG_LINES_CAP: u32 = 1000;
pub const LOG_LINE_BYTES: usize = 4096;

impl<X: Send> WasiView for PluginState<X> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl<X> PluginState<X> {
    /// What the plugin printed, capped, for the log.
    pub fn output(&self) -> (String, String) {
        let text = |pipe: &CappedPipe| String::from_utf8_lossy(&pipe.contents()).into_owned();
        (text(&self.stdout), text(&self.stderr))
    }
}

pub fn new_store<X: Send>(
    engine: &Engine,
    plugin: Arc<str>,
    config_json: Arc<str>,
    delivery_id: String,
    limits: Limits,
    extra: X,
) -> Result<Store<PluginState<X>>, PluginError> {
    let stdout = CappedPipe::new(limits.output_bytes);
    let stderr = CappedPipe::new(limits.output_bytes);
    let wasi = WasiCtx::builder()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let state = PluginState {
        wasi,
        table: ResourceTable::new(),
        limits: StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .instances(16)
            .memories(8)
            .tables(16)
            .trap_on_grow_failure(true)
            .build(),
        stdout,
        stderr,
        plugin,
        config_json,
        delivery_id,
        log_lines: 0,
        captured: None,
        alerts: Default::default(),
        host: Default::default(),
        extra,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store
        .set_fuel(limits.fuel)
        .map_err(|e| PluginError::Engine(e.to_string()))?;
    let ticks = limits.timeout.as_millis() / EPOCH_TICK.as_millis();
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX).max(1));
    store.epoch_deadline_trap();
    Ok(store)
}

/// Turn a wasmtime error from a call into a plugin error that says what the
/// plugin did.
pub fn classify(plugin: &str, error: wasmtime::Error) -> PluginError {
    let trap = error.downcast_ref::<Trap>().copied();
    let text = format!("{error:#}");
    let reason = match trap {
        Some(Trap::OutOfFuel) => "exceeded its fuel (instruction) budget".to_string(),
        Some(Trap::Interrupt) => "exceeded its wall-clock time limit".to_string(),
        // Rust plugins abort through `unreachable` on a panic and on a failed
        // allocation (memory limit reached).
        Some(Trap::UnreachableCodeReached) => {
            "aborted: it panicked or ran out of memory (unreachable code reached)".to_string()
        }
        Some(Trap::AllocationTooLarge) => "exceeded its memory limit".to_string(),
        Some(Trap::StackOverflow) => "exhausted its call stack (recursion too deep)".to_string(),
        // A Rust plugin keeps its stack in linear memory: recursing too
        // deep runs it below address 0.
        Some(Trap::MemoryOutOfBounds) => {
            "accessed memory out of bounds: its stack overflowed (recursion too deep) or it followed a bad pointer".to_string()
        }
        Some(other) => format!("trapped: {other}"),
        None if text.contains("memory") && text.contains("limit") => {
            "exceeded its memory limit".to_string()
        }
        None => format!("failed: {text}"),
    };
    let backtrace = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(render_backtrace);
    PluginError::Trap {
        plugin: plugin.to_string(),
        reason,
        detail: text,
        context: backtrace.unwrap_or_default(),
    }
}

/// The innermost frames of a wasm backtrace, by name where the component
/// kept its names (release builds usually strip them) and else by index.
fn render_backtrace(backtrace: &wasmtime::WasmBacktrace) -> String {
    const SHOWN: usize = 4;
    let frames = backtrace.frames();
    if frames.is_empty() {
        return String::new();
    }
    let names: Vec<String> = frames
        .iter()
        .take(SHOWN)
        .map(|frame| match frame.func_name() {
            Some(name) => name.to_string(),
            None => format!("function #{}", frame.func_index()),
        })
        .collect();
    let more = frames.len().saturating_sub(SHOWN);
    format!(
        "; wasm backtrace (innermost first): {}{}",
        names.join(" ← "),
        if more > 0 {
            format!(" and {more} more frame{}", if more == 1 { "" } else { "s" })
        } else {
            String::new()
        }
    )
}

/// The message of a Rust panic the plugin printed on stderr (`panicked at
/// FILE:LINE:COL:` and the message's first line), if there is one.
fn panic_message(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines();
    let at = lines.by_ref().find(|line| line.contains("panicked at"))?;
    let at = at[at.find("panicked at")?..].trim_end_matches(':');
    let message = lines.next().unwrap_or("").trim();
    Some(if message.is_empty() {
        at.to_string()
    } else {
        format!("{at}: {message}")
    })
}

/// What every loaded plugin has, whatever its world.
#[derive(Clone)]
pub struct Loaded {
    pub name: Arc<str>,
    pub config_json: Arc<str>,
    pub limits: Limits,
    pub engine: Engine,
    /// Where the alerts it raises go.
    pub alerts: crate::alerts::Alerts,
    /// The first 12 hex digits of the component's sha256: which build of
    /// the plugin an error came from.
    pub version: Arc<str>,
}

impl Loaded {
    pub fn new(engine: &Engine, spec: &super::PluginSpec) -> Self {
        Self {
            name: spec.name.clone(),
            config_json: spec.config_json.clone(),
            limits: spec.limits,
            engine: engine.clone(),
            alerts: spec.alerts.clone(),
            version: {
                use sha2::Digest as _;
                let digest = hex::encode(sha2::Sha256::digest(&spec.bytes));
                digest[..12].into()
            },
        }
    }

    /// A fresh store for one call about `event`, refused when the input
    /// is over the plugin's limit.
    pub fn store<X: Send>(
        &self,
        event: &crate::event::Event,
        extra: X,
    ) -> Result<Store<PluginState<X>>, PluginError> {
        let input = json_size(event).saturating_add(self.config_json.len());
        if input > self.limits.input_bytes {
            return Err(PluginError::InputTooLarge {
                plugin: self.name.to_string(),
                bytes: input,
                limit: self.limits.input_bytes,
            });
        }
        let mut store = new_store(
            &self.engine,
            self.name.clone(),
            self.config_json.clone(),
            event.delivery_id.clone(),
            self.limits,
            extra,
        )?;
        store.data_mut().alerts =
            super::caps::alerts::CallAlerts::new(self.alerts.clone(), event.repository.to_string());
        Ok(store)
    }

    /// Log what the call printed and turn a trap into a plugin error.
    pub fn finish<X, T>(
        &self,
        store: &Store<PluginState<X>>,
        result: wasmtime::Result<T>,
    ) -> Result<T, PluginError> {
        let (stdout, stderr) = store.data().output();
        if !stdout.is_empty() || !stderr.is_empty() {
            tracing::debug!(plugin = %self.name, stdout = %stdout, stderr = %stderr, "plugin output");
        }
        result.map_err(|e| match classify(&self.name, e) {
            PluginError::Trap {
                plugin,
                reason,
                detail,
                context,
            } => {
                let said = panic_message(&stderr)
                    .map(|m| format!("; it {m}"))
                    .unwrap_or_default();
                PluginError::Trap {
                    plugin,
                    reason,
                    detail,
                    context: format!(" (sha256 {}){said}{context}", self.version),
                }
            }
            other => other,
        })
    }

    /// An error the plugin itself returned, with the kind of the last
    /// host call that failed during the call in `store` (the error the
    /// plugin most likely passed on).
    pub fn reported<X, T>(
        &self,
        store: &Store<PluginState<X>>,
        result: Result<T, String>,
    ) -> Result<T, PluginError> {
        result.map_err(|message| PluginError::Reported {
            plugin: self.name.to_string(),
            message,
            host_failure: store.data().host.failure,
        })
    }
}

/// A load error for `plugin` in `world`.
pub fn load_error(plugin: &str, world: &'static str) -> impl Fn(wasmtime::Error) -> PluginError {
    let plugin = plugin.to_string();
    move |e| PluginError::Load {
        plugin: plugin.clone(),
        world,
        message: format!("{e:#}"),
    }
}

/// Compile a plugin's bytes.
pub fn compile(
    engine: &Engine,
    spec: &super::PluginSpec,
    world: &'static str,
) -> Result<wasmtime::component::Component, PluginError> {
    wasmtime::component::Component::from_binary(engine, &spec.bytes)
        .map_err(load_error(&spec.name, world))
}

/// Link WASI (nothing granted), the capabilities every world has
/// (`types`, `log`, `config`, `alerts`) and those `add_world` grants,
/// and pre-instantiate.
pub fn link<X: Send + 'static>(
    engine: &Engine,
    plugin: &str,
    world: &'static str,
    component: &wasmtime::component::Component,
    add_world: impl FnOnce(&mut wasmtime::component::Linker<PluginState<X>>) -> wasmtime::Result<()>,
) -> Result<wasmtime::component::InstancePre<PluginState<X>>, PluginError> {
    let err = load_error(plugin, world);
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(&err)?;
    let caps = |linker: &mut wasmtime::component::Linker<PluginState<X>>| {
        use super::caps;
        caps::types::add_to_linker(linker)?;
        caps::log::add_to_linker(linker)?;
        caps::config::add_to_linker(linker)?;
        caps::alerts::add_to_linker(linker)
    };
    caps(&mut linker).map_err(&err)?;
    add_world(&mut linker).map_err(&err)?;
    linker.instantiate_pre(component).map_err(&err)
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn a_rust_panic_is_read_from_stderr() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:57:24:\nhostile plugin panics on purpose\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("panicked at src/lib.rs:57:24: hostile plugin panics on purpose")
        );
        assert_eq!(panic_message("nothing to see"), None);
    }
}
