//! The sandbox: a compiled module ([`Module`]) and its one running instance ([`Instance`]),
//! with the limits every call runs under. The module imports nothing, so it can reach nothing
//! of the host but the bytes it is handed; each call gets [`FUEL_PER_CALL`] fuel (one unit is
//! about one Wasm instruction) and the instance at most [`MAX_MEMORY`] bytes of memory.

use wasmi::errors::ErrorKind;
use wasmi::{
    CompilationMode, Config, Engine, Linker, Memory, Store, StoreLimits, StoreLimitsBuilder,
    TrapCode, TypedFunc,
};

use super::abi::{self, Malformed, ParseResult};

/// Largest module accepted, bytes (the `.wasm`, or the `.wat` text).
pub const MAX_MODULE_BYTES: usize = 1024 * 1024;
/// Memory one instance may have, bytes.
pub const MAX_MEMORY: usize = 16 * 1024 * 1024;
/// Fuel of one call (`clovisor_parse`, `clovisor_detect`, and instantiation with its start
/// function): about as many Wasm instructions, a few milliseconds at most.
pub const FUEL_PER_CALL: u64 = 2_000_000;
/// Most bytes of a message handed to one call (a message is at most the probe's snaplen).
pub const MAX_INPUT: usize = 64 * 1024;

/// Why a module is not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Larger than [`MAX_MODULE_BYTES`].
    #[error("module of {len} bytes exceeds the {MAX_MODULE_BYTES}-byte limit")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// Not a valid Wasm module (binary or text).
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    /// The module imports something: analyzers get nothing from the host.
    #[error("module imports {0}: analyzers may import nothing")]
    Imports(String),
    /// A required export is missing or has the wrong type.
    #[error("export `{name}` missing or not {ty}")]
    Export {
        /// The export.
        name: &'static str,
        /// Its ABI type.
        ty: &'static str,
    },
    /// Instantiating (its memory, its start function) failed.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
}

/// Why a call failed; the label of `clovisor_analyzer_errors_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The module trapped (unreachable, out-of-bounds access, division by zero, …).
    #[error("trap: {0}")]
    Trap(String),
    /// The call used up its fuel.
    #[error("ran out of fuel ({FUEL_PER_CALL} per call)")]
    Timeout,
    /// The module asked for more memory than [`MAX_MEMORY`].
    #[error("memory limit ({MAX_MEMORY} bytes) reached: {0}")]
    Memory(String),
    /// The result does not follow the ABI.
    #[error("malformed result: {0}")]
    Malformed(#[from] Malformed),
}

impl CallError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Trap(_) => "trap",
            Self::Timeout => "timeout",
            Self::Memory(_) => "memory",
            Self::Malformed(_) => "malformed",
        }
    }

    fn of(e: &wasmi::Error) -> Self {
        match e.kind() {
            ErrorKind::Memory(m) => Self::Memory(m.to_string()),
            _ => match e.as_trap_code() {
                Some(TrapCode::OutOfFuel) => Self::Timeout,
                Some(TrapCode::GrowthOperationLimited | TrapCode::OutOfSystemMemory) => {
                    Self::Memory(e.to_string())
                }
                _ => Self::Trap(e.to_string()),
            },
        }
    }
}

/// A compiled, checked module; instantiate it with [`Module::instantiate`].
#[derive(Debug, Clone)]
pub struct Module {
    engine: Engine,
    module: wasmi::Module,
}

impl Module {
    /// Compiles `bytes` (a `.wasm` binary or `.wat` text) and checks it against the ABI:
    /// no imports, `memory`, `clovisor_alloc` and `clovisor_parse` exported with their types.
    pub fn compile(bytes: &[u8]) -> Result<Self, LoadError> {
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(LoadError::TooLarge { len: bytes.len() });
        }
        let mut config = Config::default();
        config.consume_fuel(true);
        // Every function checked and translated now: a module that cannot run is refused at
        // load, not on its first call.
        config.compilation_mode(CompilationMode::Eager);
        let engine = Engine::new(&config);
        let module =
            wasmi::Module::new(&engine, bytes).map_err(|e| LoadError::Invalid(e.to_string()))?;
        if let Some(import) = module.imports().next() {
            return Err(LoadError::Imports(format!(
                "{}.{}",
                import.module(),
                import.name()
            )));
        }
        let this = Self { engine, module };
        // Types are checked on a throw-away instance: the same checks every instance passes.
        this.instantiate()?;
        Ok(this)
    }

    /// A fresh instance, its start function run.
    pub fn instantiate(&self) -> Result<Instance, LoadError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(MAX_MEMORY)
            .memories(1)
            .tables(4)
            .table_elements(65_536)
            .instances(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&self.engine, limits);
        store.limiter(|l| l);
        store
            .set_fuel(FUEL_PER_CALL)
            .map_err(|e| LoadError::Instantiate(e.to_string()))?;
        let linker = Linker::<StoreLimits>::new(&self.engine);
        let instance = linker
            .instantiate_and_start(&mut store, &self.module)
            .map_err(|e| LoadError::Instantiate(e.to_string()))?;
        let memory = instance
            .get_memory(&store, abi::MEMORY)
            .ok_or(LoadError::Export {
                name: abi::MEMORY,
                ty: "a memory",
            })?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&store, abi::ALLOC)
            .map_err(|_| LoadError::Export {
                name: abi::ALLOC,
                ty: "(i32) -> i32",
            })?;
        let parse = instance
            .get_typed_func::<(i32, i32, i32, i32, i32), i64>(&store, abi::PARSE)
            .map_err(|_| LoadError::Export {
                name: abi::PARSE,
                ty: "(i32, i32, i32, i32, i32) -> i64",
            })?;
        // Optional exports: absent is fine, present with another type is not.
        let optional = |name: &'static str, ty: &'static str| {
            if instance.get_export(&store, name).is_some() {
                Err(LoadError::Export { name, ty })
            } else {
                Ok(())
            }
        };
        let port = match instance.get_typed_func::<(), i32>(&store, abi::PORT) {
            Ok(f) => Some(f),
            Err(_) => {
                optional(abi::PORT, "() -> i32")?;
                None
            }
        };
        let detect = match instance.get_typed_func::<(i32, i32, i32), i32>(&store, abi::DETECT) {
            Ok(f) => Some(f),
            Err(_) => {
                optional(abi::DETECT, "(i32, i32, i32) -> i32")?;
                None
            }
        };
        Ok(Instance {
            store,
            memory,
            alloc,
            parse,
            port,
            detect,
        })
    }
}

/// One running instance of a module.
#[derive(Debug)]
pub struct Instance {
    store: Store<StoreLimits>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    parse: TypedFunc<(i32, i32, i32, i32, i32), i64>,
    port: Option<TypedFunc<(), i32>>,
    detect: Option<TypedFunc<(i32, i32, i32), i32>>,
}

impl Instance {
    fn refuel(&mut self) -> Result<(), CallError> {
        self.store
            .set_fuel(FUEL_PER_CALL)
            .map_err(|e| CallError::Trap(e.to_string()))
    }

    /// Fuel the last call used (its instructions, roughly).
    pub fn fuel_used(&self) -> u64 {
        FUEL_PER_CALL.saturating_sub(self.store.get_fuel().unwrap_or(FUEL_PER_CALL))
    }

    /// Whether the module exports `clovisor_detect`.
    pub fn has_detect(&self) -> bool {
        self.detect.is_some()
    }

    /// The port the module claims (`clovisor_port`), if any.
    pub fn port(&mut self) -> Result<Option<u16>, CallError> {
        let Some(f) = self.port else {
            return Ok(None);
        };
        self.refuel()?;
        let p = f.call(&mut self.store, ()).map_err(|e| CallError::of(&e))?;
        match u16::try_from(p) {
            Ok(0) => Ok(None),
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(CallError::Malformed(Malformed::Port(p))),
        }
    }

    /// Copies `parts` into the module's memory, one after the other, at a place it allocated;
    /// their offsets.
    fn write(&mut self, parts: &[&[u8]]) -> Result<Vec<(i32, i32)>, CallError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let len = i32::try_from(total).map_err(|_| CallError::Trap("input too large".into()))?;
        let ptr = self
            .alloc
            .call(&mut self.store, len)
            .map_err(|e| CallError::of(&e))?;
        let base = u32::try_from(ptr).map_err(|_| {
            CallError::Malformed(Malformed::OutOfBounds {
                ptr: ptr as u32,
                len: len as u32,
                memory: self.memory.data(&self.store).len(),
            })
        })?;
        let mut at = base as usize;
        let mut out = Vec::with_capacity(parts.len());
        for part in parts {
            self.memory.write(&mut self.store, at, part).map_err(|_| {
                CallError::Malformed(Malformed::OutOfBounds {
                    ptr: base,
                    len: len as u32,
                    memory: self.memory.data(&self.store).len(),
                })
            })?;
            // Both fit in i32: their sum is `len`, itself an i32, and `at` is in memory.
            out.push((at as i32, part.len() as i32));
            at = at.saturating_add(part.len());
        }
        Ok(out)
    }

    /// `clovisor_detect(server_port, data)`: whether the module claims the flow.
    pub fn detect(&mut self, server_port: u16, data: &[u8]) -> Result<bool, CallError> {
        let Some(f) = self.detect else {
            return Ok(false);
        };
        self.refuel()?;
        let data = &data[..data.len().min(MAX_INPUT)];
        let offsets = self.write(&[data])?;
        let (ptr, len) = offsets.first().copied().unwrap_or((0, 0));
        let claim = f
            .call(&mut self.store, (i32::from(server_port), ptr, len))
            .map_err(|e| CallError::of(&e))?;
        Ok(claim == 1)
    }

    /// `clovisor_parse(flow, direction, data)`: one request or response at the start of
    /// `data`, checked against the ABI.
    pub fn parse(
        &mut self,
        flow: &[u8],
        direction: i32,
        data: &[u8],
    ) -> Result<ParseResult, CallError> {
        self.refuel()?;
        let data = &data[..data.len().min(MAX_INPUT)];
        let offsets = self.write(&[flow, data])?;
        let ((fp, fl), (dp, dl)) = match offsets.as_slice() {
            [f, d] => (*f, *d),
            _ => return Err(CallError::Trap("input not written".into())),
        };
        let ret = self
            .parse
            .call(&mut self.store, (fp, fl, direction, dp, dl))
            .map_err(|e| CallError::of(&e))?;
        let (ptr, len) = abi::unpack(ret);
        let record = abi::slice(self.memory.data(&self.store), ptr, len)?;
        Ok(abi::parse_result(record, data.len())?)
    }
}
