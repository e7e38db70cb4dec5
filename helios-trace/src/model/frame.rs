//! A call site's frames (ARCHITECTURE.md, "Data flow" 4): one frame of a stack (function,
//! inlined functions, file and line, or module and offset), the site id that hashes a stack,
//! and the labels people read (the one most telling frame of a site). resolve/ makes frames
//! from captured stacks; the outputs show them.
//!
//! A site id hashes what stays the same across processes, ASLR and restarts: each frame's
//! module (file name), function and offset in the function — or the module and file offset
//! where there is no symbol (stripped code) — never absolute addresses (except for frames in
//! no file, which have nothing better).
use std::{hash::Hasher, sync::Arc};

use fnv::FnvHasher;
use serde::{Serialize, Serializer};

use crate::model::fd::SiteId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Language {
    Native,
    Python,
    /// Go code, named from the binary's own table (resolve/modules/gopclntab.rs).
    Go,
    /// Code a JIT compiled at run time (Node.js, the JVM), named from the process's perf map.
    Jit,
}

/// One frame of a site's stack, innermost first; the report's `frames` entries. Unknown values
/// are `None` (JSON null), never invented.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Frame {
    /// Text shared with the symbol and code-object caches and with every other site through
    /// the same function: a site's frames are mostly the same few hundred functions, and a
    /// copy of their names per site was most of the daemon's memory under process churn.
    pub(crate) symbol: Option<Arc<str>>,
    pub(crate) file: Option<Arc<str>>,
    pub(crate) line: Option<u32>,
    pub(crate) module: Option<Arc<str>>,
    #[serde(serialize_with = "hex")]
    pub(crate) address: Option<u64>,
    /// Offset of the address in the module's file.
    #[serde(serialize_with = "hex")]
    pub(crate) offset: Option<u64>,
    /// Offset of the address from the start of `symbol` (none for an inlined function).
    #[serde(serialize_with = "hex")]
    pub(crate) symbol_offset: Option<u64>,
    /// Code of `symbol` inlined into the next frame's function: both are at the same address.
    pub(crate) inlined: bool,
    pub(crate) language: Language,
    /// A native frame of the process's CPython itself (its executable or libpython), as
    /// opposed to the extension modules and libraries it calls: the interpreter's glue between
    /// Python frames, which differs from call to call of one Python line (see `site_id`) and
    /// which the text report and the live view fold.
    pub(crate) interpreter: bool,
}

fn hex<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.serialize_str(&format!("{v:#x}")),
        None => s.serialize_none(),
    }
}

impl Frame {
    /// A frame of Python code: qualified function name, file and line (no address or module:
    /// code objects live on the interpreter's heap).
    pub(crate) fn python(symbol: Arc<str>, file: Arc<str>, line: Option<u32>) -> Frame {
        Frame {
            symbol: Some(symbol),
            file: Some(file),
            line,
            module: None,
            address: None,
            offset: None,
            symbol_offset: None,
            inlined: false,
            language: Language::Python,
            interpreter: false,
        }
    }

    /// A native frame of a module, not symbolized yet.
    pub(crate) fn native(address: u64, module: Option<Arc<str>>, offset: Option<u64>) -> Frame {
        Frame {
            symbol: None,
            file: None,
            line: None,
            module,
            address: Some(address),
            offset,
            symbol_offset: None,
            inlined: false,
            language: Language::Native,
            interpreter: false,
        }
    }

    /// Long human form for the text report: `symbol (file:line)`, `symbol in module`,
    /// `module+0xoffset`, or the bare address.
    pub(crate) fn describe(&self) -> String {
        let text = match (&self.symbol, &self.file, self.line, &self.module, self.offset, self.address) {
            (Some(symbol), Some(file), Some(line), ..) => format!("{symbol} ({file}:{line})"),
            (Some(symbol), _, _, Some(module), ..) => format!("{symbol} in {}", basename(module)),
            (Some(symbol), ..) => symbol.to_string(),
            (None, _, _, Some(module), Some(offset), _) => format!("{module}+{offset:#x}"),
            (.., Some(address)) => format!("{address:#x}"),
            _ => "?".to_string(),
        };
        if self.inlined { format!("{text} [inlined]") } else { text }
    }
}

pub(crate) fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Libraries whose frames are plumbing between the application and the kernel: the C
/// library and dynamic loader, language runtimes.
const RUNTIME_MODULES: &[&str] = &[
    "libc.so",
    "libc-",
    "libc.musl",
    "ld-linux",
    "ld64.so",
    "ld-musl",
    "libpthread",
    "libdl.",
    "librt.",
    "libstdc++",
    "libc++",
    "libgcc_s",
    "libpython",
    "python",
    "libjvm",
    "libnode",
    "libuv",
    "libhelios",
];

/// The JDK's own native libraries (its `lib/` and `lib/server/`, the same names in OpenJDK 17 and
/// 25 and every vendor's build of them: Debian's, Temurin's), whose JNI code opens what the
/// Java class library asks for (libnio's `Java_sun_nio_ch_Net_socket0`, libjava's `fileOpen`):
/// the telling frame is the Java method that called the class library. Matched whole: the JDK
/// names them without a version (`libnet.so`, not the packet library's `libnet.so.9`).
const JDK_LIBRARIES: &[&str] = &[
    "libattach.so",
    "libawt.so",
    "libawt_headless.so",
    "libawt_xawt.so",
    "libdt_socket.so",
    "libextnet.so",
    "libfontmanager.so",
    "libinstrument.so",
    "libj2gss.so",
    "libj2pcsc.so",
    "libj2pkcs11.so",
    "libjaas.so",
    "libjava.so",
    "libjavajpeg.so",
    "libjawt.so",
    "libjdwp.so",
    "libjimage.so",
    "libjli.so",
    "libjsig.so",
    "libjsound.so",
    "libjsvml.so",
    "libjvm.so",
    "liblcms.so",
    "libmanagement.so",
    "libmanagement_agent.so",
    "libmanagement_ext.so",
    "libmlib_image.so",
    "libnet.so",
    "libnio.so",
    "libprefs.so",
    "librmi.so",
    "libsaproc.so",
    "libsctp.so",
    "libsimdsort.so",
    "libsplashscreen.so",
    "libsyslookup.so",
    "libverify.so",
    "libzip.so",
];

/// Functions that are plumbing wherever they are linked (a static libc, Rust's, C++'s and
/// Go's standard libraries, helios-trace's own shims).
const RUNTIME_SYMBOL_PREFIXES: &[&str] = &[
    "__libc_",
    "__GI_",
    "__syscall",
    "__open",
    "__socket",
    "_IO_",
    "std::",
    "core::",
    "alloc::",
    "<std::",
    "<core::",
    "<alloc::",
    "__gnu_cxx::",
    "syscall.",
    "runtime.",
    "internal/",
    "os.",
    "net.",
    "helios_",
];

/// libc's descriptor-creating wrappers, for binaries that link libc statically.
const LIBC_WRAPPERS: &[&str] = &[
    "open",
    "open64",
    "openat",
    "openat64",
    "creat",
    "creat64",
    "socket",
    "socketpair",
    "accept",
    "accept4",
    "pipe",
    "pipe2",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "fcntl64",
    "eventfd",
    "epoll_create",
    "epoll_create1",
    "timerfd_create",
    "signalfd",
    "inotify_init",
    "inotify_init1",
    "memfd_create",
    "fopen",
    "fopen64",
    "fdopen",
    "freopen",
    "opendir",
    "fdopendir",
    "tmpfile",
    "mkstemp",
    "mkostemp",
    "syscall",
];

/// Whether a Python source file is a library's rather than the application's: the standard
/// library (frozen modules, the interpreter's lib/python3.X) and installed packages
/// (site-packages, Debian's dist-packages).
pub(crate) fn is_python_library(file: &str) -> bool {
    file.starts_with("<frozen ") || file.contains("/lib/python3") || file.contains("-packages/")
}

/// Whether a frame is plumbing rather than the application's own code.
fn is_runtime(frame: &Frame) -> bool {
    match frame.language {
        // Libraries: the telling frame is the application's call into them.
        Language::Python => frame.file.as_deref().is_some_and(is_python_library),
        Language::Go => frame.symbol.as_deref().is_none_or(is_go_runtime),
        // Perf maps name the runtime's own stubs and builtins too; the rest is the program's.
        Language::Jit => is_jit_runtime(frame),
        Language::Native => {
            let module = frame.module.as_deref().map(basename).unwrap_or("");
            let symbol = frame.symbol.as_deref().unwrap_or("");
            RUNTIME_MODULES.iter().any(|m| module.starts_with(m))
                // Node.js links V8, libuv and its bindings into its executable.
                || matches!(module, "node" | "nodejs")
                || JDK_LIBRARIES.contains(&module)
                // CPython's own extension modules (_socket, _io, ...).
                || frame.module.as_deref().is_some_and(|m| m.contains("/lib-dynload/"))
                || RUNTIME_SYMBOL_PREFIXES.iter().any(|p| symbol.starts_with(p))
                || LIBC_WRAPPERS.contains(&symbol)
        }
    }
}

/// Whether a Go function is the runtime's or the standard library's: its package path's first
/// element has no dot (Go's rule for standard packages: cmd/go's `search.IsStandardImportPath`),
/// `vendor/...` included, and it is not `main`; compiler-made functions (`type:.eq.…`,
/// `go:buildid`) too. Modules (`github.com/…`, `golang.org/x/…` outside the standard library)
/// are the program's code. The package is what comes before the first dot after the last
/// slash (debug/gosym's `PackageName`), generic instantiations' `[…]` left out.
fn is_go_runtime(symbol: &str) -> bool {
    let name = symbol.split('[').next().unwrap_or(symbol);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let package = match name[last_slash..].find('.') {
        Some(dot) => &name[..last_slash + dot],
        None => return true,
    };
    let first = package.split('/').next().unwrap_or(package);
    package != "main" && !first.contains('.')
}

/// The Go packages between any call and the kernel: the runtime, syscall, the poller and
/// net's and os's own descriptor code.
fn is_go_plumbing(symbol: &str) -> bool {
    ["runtime.", "runtime/", "syscall.", "internal/", "net.", "os.", "type:", "type."]
        .iter()
        .any(|p| symbol.starts_with(p))
}

/// A JIT runtime's own code rather than the program's: what its perf map names as its own (V8's
/// builtins, stubs, handlers and bytecode handlers: `Builtin:`, `Stub:`, `BytecodeHandler:`...;
/// HotSpot's interpreter and stub routines), JavaScript of Node's own library (`node:net`,
/// `node:internal/...`) and methods of the Java class library (`is_jvm_library`). Other names
/// without a file are the program's (another runtime's methods). In a Java stack, what is not
/// a method is HotSpot's own, whatever its name (`jvm_plumbing`).
fn is_jit_runtime(frame: &Frame) -> bool {
    const RUNTIME_PREFIXES: &[&str] =
        &["Builtin:", "Stub:", "BytecodeHandler:", "Handler:", "RegExp:", "Interpreter", "StubRoutines"];
    match (frame.file.as_deref(), frame.symbol.as_deref()) {
        (Some(file), _) => file.starts_with("node:"),
        (None, Some(symbol)) if is_jvm_method(symbol) => is_jvm_library(symbol),
        (None, Some(symbol)) => RUNTIME_PREFIXES.iter().any(|p| symbol.starts_with(p)),
        (None, None) => true,
    }
}

/// Whether a JIT frame's name is a JVM method as resolve/perfmap.rs keeps HotSpot's names:
/// `package.Class.method(parameters)`, no spaces before the parameters.
pub(crate) fn is_jvm_method(symbol: &str) -> bool {
    let Some(open) = symbol.find('(') else { return false };
    let method = &symbol[..open];
    symbol.ends_with(')') && method.contains('.') && !method.contains([' ', ':'])
}

/// A JIT frame named as a JVM method.
fn is_jvm_frame(frame: &Frame) -> bool {
    frame.language == Language::Jit && frame.symbol.as_deref().is_some_and(is_jvm_method)
}

/// Whether a JVM method is the Java class library's or made by the JVM: the packages the JDK's
/// own modules export and hide (`java.`, `javax.`, `jdk.`, `sun.`, `com.sun.`), its lambda forms
/// included, and hidden classes the JVM spins (a lambda's proxy `App$$Lambda$14/0x…`: compiled
/// or not, the lambda's own method `App.lambda$main$0` is the program's frame). Libraries a
/// program bundles (netty, okhttp) are the program's code, as Go modules are.
fn is_jvm_library(symbol: &str) -> bool {
    let class = symbol.split('(').next().unwrap_or(symbol);
    ["java.", "javax.", "jdk.", "sun.", "com.sun."].iter().any(|p| symbol.starts_with(p))
        || class.contains("$$Lambda")
        || class.contains("/0x")
}

/// In a stack with JVM methods, a frame that is not one is HotSpot's own: its blobs and stubs
/// (`I2C/C2I adapters`, `SafepointBlob`, `... Runtime1 stub`), and code in no file the map does
/// not name (compiled after it was written): a bare address tells a person nothing.
fn jvm_plumbing(frame: &Frame) -> bool {
    match frame.language {
        Language::Jit => !is_jvm_frame(frame),
        _ => frame.module.is_none() && frame.symbol.is_none(),
    }
}

/// Whether Python code may have been running when a call made this native stack: unless the
/// stack shows that none was. It shows it by the dynamic loader's own frames (`_dl_*`, in
/// `ld-*.so`: mapping libraries before `main`), or by being whole — down to the process's
/// start (`_start`, `__libc_start_main`) — without the interpreter's eval loop
/// (`_PyEval_EvalFrameDefault`, CPython's Python/ceval.c: every Python frame runs inside one):
/// the interpreter's C start-up. A stack cut short (frame pointers through code built without
/// them), a frame in no known module or an interpreter frame without a name tells nothing.
pub(crate) fn python_may_run(frames: &[Frame]) -> bool {
    let symbol = |f: &Frame| f.symbol.as_deref().unwrap_or_default().to_string();
    let unknown = frames.iter().any(|f| f.module.is_none() || (f.interpreter && f.symbol.is_none()));
    if frames.is_empty() || unknown || frames.iter().any(|f| symbol(f).contains("PyEval_EvalFrame")) {
        return true;
    }
    let loader = frames.iter().any(|f| {
        symbol(f).starts_with("_dl_") || f.module.as_deref().is_some_and(|m| basename(m).starts_with("ld-"))
    });
    let whole = frames.iter().any(|f| {
        matches!(
            f.symbol.as_deref(),
            Some("_start" | "__libc_start_main" | "__libc_start_main_impl" | "__libc_start_call_main")
        )
    });
    !(loader || whole)
}

/// The one frame that tells where a site is: the innermost frame in the application's own
/// code, past the C library and loader, language runtimes and standard libraries.
/// In a stack with Python frames, the application's code is Python: the native frames innermost
/// of them are the C the Python code called (libsqlite3, libssl, an extension), never the
/// telling frame. When every frame is plumbing, the innermost Python frame, else the innermost
/// frame. None only without frames.
pub(crate) fn telling_frame(frames: &[Frame]) -> Option<&Frame> {
    program_frame(frames)
        // A Python stack entirely in libraries: its innermost Python frame says more than libc.
        .or_else(|| frames.iter().find(|f| f.language == Language::Python))
        // A JavaScript stack entirely in Node's own library (a TCP connection is made on a
        // later tick, by node:net's internalConnect): the innermost JavaScript frame.
        .or_else(|| frames.iter().find(|f| f.language == Language::Jit && f.file.is_some()))
        // A Java stack entirely in the class library (a thread of its own, a selector): the
        // innermost Java method.
        .or_else(|| frames.iter().find(|f| is_jvm_frame(f)))
        // A Go stack entirely in the standard library (a goroutine net/http started to dial):
        // the innermost call above the runtime, syscall and socket layers says what it was for.
        .or_else(|| {
            frames.iter().find(|f| {
                f.language == Language::Go && f.symbol.as_deref().is_some_and(|s| !is_go_plumbing(s))
            })
        })
        .or_else(|| frames.first())
}

/// The innermost frame in the application's own code (`telling_frame`'s first choice); None
/// for a stack entirely in the C library, loader, runtimes and standard libraries: a runtime's
/// own loop, as libuv's that accepts a Node.js server's connections (`uv__server_io`).
pub(crate) fn program_frame(frames: &[Frame]) -> Option<&Frame> {
    let python = frames.iter().any(|f| f.language == Language::Python);
    let jvm = frames.iter().any(is_jvm_frame);
    frames.iter().find(|f| {
        let plumbing = is_runtime(f) || (jvm && jvm_plumbing(f));
        !plumbing && (!python || f.language == Language::Python)
    })
}

/// What a site's own frames cannot say of where its descriptors came from, told beside them
/// (the report's and `/sites`' `created_by` and `accepted_on`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct SiteOrigin {
    /// Where the goroutines that opened them were created, when that is one place Go's own
    /// traceback would show (resolve/goroutines.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) created_by: Option<Frame>,
    /// For sockets a runtime's own loop accepted (no frame of the program's on the stack): the
    /// program's frame that opened the listener they came through (resolve/stacks.rs,
    /// `accepted_through`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) accepted_on: Option<Frame>,
}

/// A short, bounded label of a frame, for the `frame` metric label and the text report:
/// `leak_socket (app.c:14)`, `geo.py:UnitTrackingWSHandler.on_connect:27` (without `:27` when
/// the Python frame came from a perf map), `leak_fn (app)`,
/// `app+0x1234`.
pub(crate) fn frame_label(frame: &Frame) -> String {
    let module = frame.module.as_deref().map(basename);
    let file = frame.file.as_deref().map(basename);
    match (frame.language, &frame.symbol, file, frame.line, module) {
        (Language::Python, Some(symbol), Some(file), Some(line), _) => format!("{file}:{symbol}:{line}"),
        // Named by CPython's perf map (`-X perf`), which says no line.
        (Language::Python, Some(symbol), Some(file), None, _) => format!("{file}:{symbol}"),
        (_, Some(symbol), Some(file), Some(line), _) => format!("{symbol} ({file}:{line})"),
        (_, Some(symbol), _, _, Some(module)) => format!("{symbol} ({module})"),
        (_, Some(symbol), ..) => symbol.to_string(),
        (.., Some(module)) if frame.offset.is_some() => {
            format!("{module}+{:#x}", frame.offset.unwrap_or_default())
        }
        _ => frame.address.map(|a| format!("{a:#x}")).unwrap_or_else(|| "?".to_string()),
    }
}

/// The label of a site's telling frame; None for a site without frames.
pub(crate) fn site_label(frames: &[Frame]) -> Option<String> {
    telling_frame(frames).map(frame_label)
}

/// The site of sockets accepted at `accepted` on a listener opened at `listener`
/// (resolve/stacks.rs, `accepted_through`): FNV-1a over both, so the same code accepting on a
/// listener the same code opened is the same site in every process and run.
pub(crate) fn through_listener(accepted: SiteId, listener: SiteId) -> SiteId {
    let (SiteId::Stack(accepted), SiteId::Stack(listener)) = (accepted, listener) else { return accepted };
    let mut hasher = FnvHasher::default();
    hasher.write(b"accepted on");
    hasher.write_u64(accepted);
    hasher.write_u64(listener);
    SiteId::Stack(hasher.finish())
}

/// The stable id of a stack: FNV-1a over each frame's (module, function, offset in function),
/// or (module, file offset) without a function, or (function, file, line) for interpreted
/// frames, falling back to the address for frames in no file. Inlined frames add nothing:
/// they follow from the address of the frame they were inlined into. A stack with Python
/// frames is identified by fewer frames (`identity`).
pub(crate) fn site_id(frames: &[Frame]) -> SiteId {
    let mut hasher = FnvHasher::default();
    for frame in identity(frames).filter(|f| !f.inlined) {
        hasher.write_u8(frame.language as u8);
        let module = frame.module.as_deref().map(basename);
        match (&frame.symbol, frame.symbol_offset, module, frame.offset) {
            (Some(symbol), Some(offset), module, _) => {
                hasher.write(module.unwrap_or("").as_bytes());
                hasher.write_u8(0);
                hasher.write(symbol.as_bytes());
                hasher.write_u8(0);
                hasher.write_u64(offset);
            }
            (_, _, Some(module), Some(offset)) => {
                hasher.write(module.as_bytes());
                hasher.write_u8(0);
                hasher.write_u64(offset);
            }
            (Some(symbol), ..) => {
                hasher.write(symbol.as_bytes());
                hasher.write_u8(0);
                hasher.write(frame.file.as_deref().unwrap_or("").as_bytes());
                hasher.write_u32(frame.line.unwrap_or(0));
            }
            _ => hasher.write_u64(frame.address.unwrap_or(0)),
        }
        hasher.write_u8(0xff);
    }
    SiteId::Stack(hasher.finish())
}

/// The frames a site's identity comes from (ARCHITECTURE.md, "Data flow" 4). A native stack:
/// all of them. A stack with Python frames: the Python frames, and innermost of them the
/// native frames that are not the interpreter's own (the extension and
/// C library chain: `_socket`'s `sock_accept`, libc's `accept4`). Left out: the interpreter's
/// frames between and around the Python frames, which differ from call to call of one Python
/// line — CPython's adaptive interpreter (PEP 659, 3.11+) first runs the generic instruction,
/// whose call goes through `PyObject_Vectorcall` and the method wrappers, then, once the code
/// is warm (the counters of Include/internal/pycore_code.h, Python/specialize.c), a
/// specialized one (e.g. 3.13's `CALL_METHOD_DESCRIPTOR_NOARGS`) that calls the C function
/// itself from another offset of `_PyEval_EvalFrameDefault` — and every native frame outward
/// of the Python frames, which
/// the Python frames already name (and whose depth depends on how much stack that glue took,
/// so a cut stack window would cut them differently).
///
/// A stack with named JIT frames (JavaScript from a perf map) and no Python frames is
/// identified by the native frames innermost of its first JIT frame (the bindings and libuv
/// chain that made the descriptor), less V8's builtins (`is_v8_builtin`), and its named JIT frames up to the innermost one of the
/// program's own code, then only the program's own JIT frames outward: what lies between
/// them changes while V8 compiles the same code again — an interpreted function runs through
/// V8's one shared interpreter entry (a native frame of the executable) until it is compiled,
/// then has a named frame of its own (src/logging/log.cc, `--interpreted-frames-native-stack`
/// only copies the entry for functions compiled after start, not for Node's own library read
/// from its snapshot), and optimizing compilers inline calls away.
///
/// A stack with JVM methods (HotSpot's perf map) is identified by the native frames innermost
/// of its first JIT frame (the JDK's JNI code and libc), then the program's own methods; what
/// lies between changes as HotSpot compiles the class library (an interpreted method is one
/// shared `Interpreter` blob, then compiled code of its own, then inlined into its caller) and
/// as maps written later name code earlier ones did not. A stack with no method of the
/// program's keeps every frame outward of its first JIT frame: nothing better tells it apart.
fn identity(frames: &[Frame]) -> impl Iterator<Item = &Frame> {
    let first_python = frames.iter().position(|f| f.language == Language::Python);
    let named_jit = |f: &Frame| f.language == Language::Jit && f.file.is_some();
    let jvm = first_python.is_none() && frames.iter().any(is_jvm_frame);
    let first_jit = match (first_python, jvm) {
        (Some(_), _) => None,
        (None, true) => frames.iter().position(|f| f.language == Language::Jit),
        (None, false) => frames.iter().position(named_jit),
    };
    let program_jit = first_jit.and_then(|_| frames.iter().position(|f| named_jit(f) && !is_runtime(f)));
    let program_jvm = jvm && frames.iter().any(|f| is_jvm_frame(f) && !is_runtime(f));
    frames.iter().enumerate().filter_map(move |(i, frame)| {
        let kept = match (first_python, first_jit) {
            (Some(first), _) => frame.language == Language::Python || (i < first && !frame.interpreter),
            (None, Some(first)) if jvm => {
                i < first || !program_jvm || (is_jvm_frame(frame) && !is_runtime(frame))
            }
            (None, Some(first)) => {
                (i < first && !is_v8_builtin(frame))
                    || (named_jit(frame) && (program_jit.is_none_or(|p| i <= p) || !is_runtime(frame)))
            }
            (None, None) => true,
        };
        kept.then_some(frame)
    })
}

/// One of V8's builtins, the code its JIT frames enter the runtime through, named
/// `Builtins_<name>` in the executable (src/snapshot/embedded/embedded-file-writer.cc): which
/// of them lie between a JavaScript call and the C++ it reaches depends on the tier the caller
/// was compiled to (`Builtins_ConstructHandler` from baseline code, none from the
/// interpreter), not on the call.
fn is_v8_builtin(frame: &Frame) -> bool {
    frame.language != Language::Jit && frame.symbol.as_deref().is_some_and(|s| s.starts_with("Builtins_"))
}

/// What a person is shown of a stack: a frame (with its index in the stack), or a run of the
/// interpreter's own frames folded into one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shown<'a> {
    Frame(usize, &'a Frame),
    /// This many consecutive interpreter frames.
    Folded(usize),
}

/// Which frames the text report and the live view show (`--all-frames`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum FrameDisplay {
    /// A stack with Python frames shows them with the native frames of extensions and
    /// libraries, each run of interpreter frames folded into one line.
    #[default]
    Readable,
    /// Every frame.
    All,
}

/// The frames of a stack as shown. Only a stack with Python frames folds: without them, the
/// interpreter's frames are all there is to tell where it was (a descriptor opened while the
/// interpreter was starting, or by one whose frames are not walked).
pub(crate) fn shown(frames: &[Frame], display: FrameDisplay) -> Vec<Shown<'_>> {
    let fold = display == FrameDisplay::Readable && frames.iter().any(|f| f.language == Language::Python);
    let mut out = Vec::with_capacity(frames.len());
    for (i, frame) in frames.iter().enumerate() {
        match out.last_mut() {
            _ if !(fold && frame.interpreter) => out.push(Shown::Frame(i, frame)),
            Some(Shown::Folded(n)) => *n += 1,
            _ => out.push(Shown::Folded(1)),
        }
    }
    out
}

impl Shown<'_> {
    /// One line of a stack: `#3  handle (/srv/app.py:10)`, or `… 12 interpreter frames`.
    pub(crate) fn line(&self) -> String {
        match self {
            Shown::Frame(i, frame) => format!("#{i:<2} {}", frame.describe()),
            Shown::Folded(1) => "… 1 interpreter frame".to_string(),
            Shown::Folded(n) => format!("… {n} interpreter frames"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn native(symbol: Option<&str>, module: &str, offset: u64) -> Frame {
        Frame {
            symbol: symbol.map(Arc::from),
            symbol_offset: symbol.map(|_| 0x10),
            ..Frame::native(0x7f00_0000_0000 + offset, Some(Arc::from(module)), Some(offset))
        }
    }

    fn located(symbol: &str, module: &str, file: &str, line: u32) -> Frame {
        Frame { file: Some(Arc::from(file)), line: Some(line), ..native(Some(symbol), module, 0x1234) }
    }

    #[test]
    fn the_telling_frame_is_past_libc_and_runtimes() {
        let frames = vec![
            native(Some("__libc_open64"), "/usr/lib/x86_64-linux-gnu/libc.so.6", 0x114f10),
            native(Some("std::fs::OpenOptions::_open"), "/srv/app/server", 0x4000),
            located("leak_socket", "/srv/app/server", "/src/app.c", 14),
            located("main", "/srv/app/server", "/src/app.c", 40),
        ];
        let telling = telling_frame(&frames).unwrap();
        assert_eq!(telling.symbol.as_deref(), Some("leak_socket"));
        assert_eq!(frame_label(telling), "leak_socket (app.c:14)");
        assert_eq!(site_label(&frames).as_deref(), Some("leak_socket (app.c:14)"));
        // A static binary's own copy of the wrapper is plumbing too.
        let static_libc = vec![
            native(Some("open64"), "/srv/app/static", 0x10),
            native(Some("handler"), "/srv/app/static", 0x20),
        ];
        assert_eq!(telling_frame(&static_libc).unwrap().symbol.as_deref(), Some("handler"));
        // Stripped application code: named by module and offset.
        let stripped =
            vec![native(Some("open64"), "/lib/libc.so.6", 0x10), native(None, "/srv/app/stripped", 0x1189)];
        assert_eq!(frame_label(telling_frame(&stripped).unwrap()), "stripped+0x1189");
        // Only plumbing: the innermost frame; no frames: nothing.
        let plumbing = vec![native(Some("__libc_open64"), "/lib/libc.so.6", 0x10)];
        assert_eq!(telling_frame(&plumbing).unwrap().symbol.as_deref(), Some("__libc_open64"));
        assert!(telling_frame(&[]).is_none());
    }

    fn go(symbol: &str, line: u32) -> Frame {
        Frame { language: Language::Go, ..located(symbol, "/srv/client", "/usr/lib/go-1.19/src/x.go", line) }
    }

    pub(crate) fn js(symbol: &str, file: &str, line: u32) -> Frame {
        Frame {
            symbol: Some(Arc::from(symbol)),
            file: Some(Arc::from(file)),
            line: Some(line),
            language: Language::Jit,
            ..Frame::native(0x7f00_dc06_4b1c + u64::from(line), None, None)
        }
    }

    #[test]
    fn a_javascript_line_is_one_site_whatever_v8_compiled_between() {
        let binding = |offset| native(Some("node::TCPWrap::Connect"), "/usr/bin/node", offset);
        let entry = native(Some("Builtins_InterpreterEntryTrampoline"), "/usr/bin/node", 0x18d0000);
        let interpreted = vec![
            native(Some("__GI_socket"), "/lib/libc.so.6", 0x10),
            binding(0xde4fe4),
            js("internalConnect", "node:net", 1038),
            js("connectUnixAndKeep", "/srv/client.js", 35),
            entry.clone(),
            js("(anonymous)", "/srv/client.js", 48),
            entry.clone(),
            js("ondata", "node:internal/readline/interface", 245),
        ];
        // Later: node:events' emit compiled (a named frame where the shared entry was), the
        // readline code inlined away, other addresses.
        let compiled = vec![
            native(Some("__GI_socket"), "/lib/libc.so.6", 0x10),
            binding(0xde4fe4),
            Frame { address: Some(1), ..js("internalConnect", "node:net", 1038) },
            Frame { address: Some(2), ..js("connectUnixAndKeep", "/srv/client.js", 35) },
            Frame { address: Some(3), ..js("(anonymous)", "/srv/client.js", 48) },
            js("emit", "node:events", 471),
        ];
        assert_eq!(site_id(&interpreted), site_id(&compiled));
        assert_eq!(site_label(&compiled).unwrap(), "connectUnixAndKeep (client.js:35)");
        // Another line of the program, or another binding, is another site.
        let mut other = compiled.clone();
        other[3] = js("connectUnixAndKeep", "/srv/client.js", 36);
        assert_ne!(site_id(&other), site_id(&compiled));
        let mut other = compiled.clone();
        other[1] = native(Some("node::PipeWrap::Connect"), "/usr/bin/node", 0xde5000);
        assert_ne!(site_id(&other), site_id(&compiled));
        // Only Node's own code (a TCP connection made on a later tick): its innermost frame.
        let tcp = vec![
            binding(0xde4fe4),
            js("internalConnect", "node:net", 1038),
            js("processTicksAndRejections", "node:internal/process/task_queues", 67),
        ];
        assert_eq!(site_label(&tcp).unwrap(), "internalConnect (node:net:1038)");
        // A TCP handle made by `new TCP()` (model/handles.rs): from interpreted code the
        // constructor is entered directly, from baseline code through another builtin.
        let construct = |builtins: &[&str]| {
            let mut frames = vec![
                native(Some("uv_tcp_init"), "/usr/bin/node", 0x18b9f80),
                native(Some("node::TCPWrap::New"), "/usr/bin/node", 0xde0000),
            ];
            frames.extend(builtins.iter().map(|b| native(Some(b), "/usr/bin/node", 0x1900000)));
            frames
                .extend([js("Socket.connect", "node:net", 1200), js("connectAndKeep", "/srv/client.js", 26)]);
            frames
        };
        let from_interpreted = construct(&["Builtins_JSBuiltinsConstructStub"]);
        let from_baseline = construct(&["Builtins_JSBuiltinsConstructStub", "Builtins_ConstructHandler"]);
        assert_eq!(site_id(&from_interpreted), site_id(&from_baseline));
        assert_eq!(site_label(&from_baseline).unwrap(), "connectAndKeep (client.js:26)");
        // Unnamed JIT code (no perf map) and V8's stubs are the runtime's.
        assert!(is_runtime(&Frame { file: None, ..js("Builtin:ArgumentsAdaptorTrampoline", "", 0) }));
        assert!(!is_runtime(&Frame { file: None, ..js("com.acme.Api.handle(int)", "", 0) }));
        // Another runtime's names (perf-map-agent's, .NET's) are the program's.
        assert!(!is_runtime(&Frame { file: None, ..js("com.acme.Api::handle", "", 0) }));
    }

    fn jvm(symbol: &str, address: u64) -> Frame {
        Frame {
            symbol: Some(Arc::from(symbol)),
            language: Language::Jit,
            ..Frame::native(address, None, None)
        }
    }

    #[test]
    fn a_java_method_is_one_site_whatever_hotspot_compiled_between() {
        let jdk = "/usr/lib/jvm/java-17-openjdk-amd64/lib";
        let interpreted = vec![
            native(Some("__GI_socket"), "/lib/libc.so.6", 0x10),
            native(Some("Java_sun_nio_ch_Net_socket0"), &format!("{jdk}/libnio.so"), 0x9a10),
            jvm("Interpreter", 0x7f00_0000_1000),
            jvm("Interpreter", 0x7f00_0000_1200),
            jvm("LeakClient.connectAndKeep(int, int)", 0x7f00_0010_0040),
            jvm("LeakClient.main(java.lang.String[])", 0x7f00_0010_2000),
            jvm("StubRoutines (1)", 0x7f00_0000_8000),
            native(Some("JavaCalls::call_helper"), &format!("{jdk}/server/libjvm.so"), 0x5000),
        ];
        assert_eq!(site_label(&interpreted).unwrap(), "LeakClient.connectAndKeep(int, int)");
        // Later: the class library compiled (a method where the interpreter was, a stub not in
        // the map), the program's method compiled again elsewhere: the same site.
        let mut compiled = interpreted.clone();
        compiled[2] = jvm("java.net.Socket.<init>(java.net.InetAddress, int)", 0x7f00_0020_0000);
        compiled[3] = Frame::native(0x7f00_0030_0000, None, None);
        compiled[4] = jvm("LeakClient.connectAndKeep(int, int)", 0x7f00_0040_0010);
        assert_eq!(site_id(&compiled), site_id(&interpreted));
        assert_eq!(
            site_label(&compiled).unwrap(),
            "LeakClient.connectAndKeep(int, int)",
            "not the bare address"
        );
        // HotSpot's blobs, a lambda's proxy class: not the program's frame.
        let mut blobs = interpreted.clone();
        blobs[2] = jvm("I2C/C2I adapters", 0x7f00_0000_2000);
        blobs[3] = jvm("LeakClient$$Lambda$14/0x0000000800c03000.run()", 0x7f00_0000_3000);
        assert_eq!(site_label(&blobs).unwrap(), "LeakClient.connectAndKeep(int, int)");
        assert_eq!(site_id(&blobs), site_id(&interpreted));
        // Another method of the program, or another JNI path: another site.
        let mut other = interpreted.clone();
        other[4] = jvm("LeakClient.openAndKeep(java.lang.String, int)", 0x7f00_0010_0040);
        assert_ne!(site_id(&other), site_id(&interpreted));
        let mut other = interpreted.clone();
        other[1] = native(Some("Java_sun_nio_ch_Net_accept"), &format!("{jdk}/libnio.so"), 0x9c00);
        assert_ne!(site_id(&other), site_id(&interpreted));
        // Only the class library (its own thread): the innermost method tells it, and every
        // frame tells the site apart.
        let library = vec![
            native(Some("__libc_accept"), "/lib/libc.so.6", 0x10),
            native(Some("Java_sun_nio_ch_Net_accept"), &format!("{jdk}/libnio.so"), 0x9c00),
            jvm("Interpreter", 0x7f00_0000_1000),
            jvm("sun.nio.ch.NioSocketImpl.accept(java.net.SocketImpl)", 0x7f00_0010_0040),
        ];
        assert_eq!(site_label(&library).unwrap(), "sun.nio.ch.NioSocketImpl.accept(java.net.SocketImpl)");
        let mut other = library.clone();
        other.push(jvm("sun.nio.ch.ServerSocketChannelImpl.accept()", 0x7f00_0010_3000));
        assert_ne!(site_id(&other), site_id(&library));
    }

    #[test]
    fn go_runtime_and_standard_library_are_library_code() {
        for library in [
            "runtime/internal/syscall.Syscall6",
            "runtime.goexit",
            "syscall.Socket",
            "internal/poll.(*FD).Init",
            "net.(*Dialer).DialContext",
            "net/http.(*Transport).dialConn",
            "vendor/golang.org/x/net/http/httpguts.ValidHeaderFieldName",
            "crypto/tls.(*Conn).Handshake",
            "sync/atomic.(*Pointer[go.shape.struct { a/b.c int }]).Load",
            "type:.eq.main.T",
            "go:buildid",
        ] {
            assert!(is_go_runtime(library), "{library}");
        }
        for program in [
            "main.leakBodies",
            "main.main.func1",
            "main.(*client).fetch",
            "github.com/acme/api.(*Client).Do",
            "golang.org/x/net/http2.(*Transport).RoundTrip",
            "example.com/m/v2/internal/db.Open[...]",
        ] {
            assert!(!is_go_runtime(program), "{program}");
        }
        // The program's function past the runtime and net's frames, inlined ones included.
        let frames = vec![
            go("runtime/internal/syscall.Syscall6", 35),
            go("net.socket", 19),
            Frame { inlined: true, ..go("net.(*Dialer).Dial", 355) },
            go("main.leakDial", 50),
            go("main.main", 70),
        ];
        assert_eq!(frame_label(telling_frame(&frames).unwrap()), "main.leakDial (x.go:50)");
        // A goroutine of the standard library's own (net/http dials in one): its first call
        // above the runtime, syscall and net layers.
        let dialer = vec![
            go("runtime/internal/syscall.Syscall6", 35),
            go("syscall.Socket", 497),
            go("net.(*Dialer).DialContext", 428),
            go("net/http.(*Transport).dial", 1170),
            go("net/http.(*Transport).dialConn", 1608),
            go("runtime.goexit", 1594),
        ];
        assert_eq!(telling_frame(&dialer).unwrap().symbol.as_deref(), Some("net/http.(*Transport).dial"));
    }

    #[test]
    fn python_frames_past_the_standard_library() {
        let py = |symbol: &str, file: &str, line| Frame {
            language: Language::Python,
            module: None,
            offset: None,
            address: None,
            symbol_offset: None,
            ..located(symbol, "", file, line)
        };
        let frames = vec![
            native(Some("__libc_accept4"), "/lib/libc.so.6", 1),
            native(Some("sock_accept"), "/usr/lib/python3.11/lib-dynload/_socket.so", 2),
            py("socket.accept", "/usr/lib/python3.11/socket.py", 294),
            py("UnitTrackingWSHandler.on_connect", "/srv/heliosops/geo.py", 27),
        ];
        assert_eq!(
            frame_label(telling_frame(&frames).unwrap()),
            "geo.py:UnitTrackingWSHandler.on_connect:27"
        );
        // Installed packages are libraries too: the application's call into them tells.
        let vendored = py("Client.connect", "/usr/lib/python3/dist-packages/redis/client.py", 5);
        assert!(is_runtime(&vendored));
        let mut through_package = frames.clone();
        through_package.insert(2, vendored.clone());
        assert_eq!(
            frame_label(telling_frame(&through_package).unwrap()),
            "geo.py:UnitTrackingWSHandler.on_connect:27"
        );
        // A library the Python code called (stripped libsqlite3: module and offset only) is not
        // the application's code: the Python caller tells.
        let mut through_library = frames.clone();
        through_library.insert(0, native(None, "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6", 0xa99c7));
        assert_eq!(
            frame_label(telling_frame(&through_library).unwrap()),
            "geo.py:UnitTrackingWSHandler.on_connect:27"
        );
        // All in libraries: the innermost Python frame, not libc.
        let libraries = vec![frames[0].clone(), frames[2].clone(), vendored];
        assert_eq!(frame_label(telling_frame(&libraries).unwrap()), "socket.py:socket.accept:294");
    }

    #[test]
    fn labels_of_every_kind_of_frame() {
        assert_eq!(frame_label(&native(Some("open64"), "/lib/libc.so.6", 1)), "open64 (libc.so.6)");
        assert_eq!(frame_label(&Frame::native(0x1234, None, None)), "0x1234");
        let from_perf_map = Frame::python(Arc::from("Handler.on_connect"), Arc::from("/srv/app.py"), None);
        assert_eq!(frame_label(&from_perf_map), "app.py:Handler.on_connect");
        let inlined = Frame { inlined: true, ..located("raw_openat", "/a/b", "/src/x.c", 3) };
        assert_eq!(inlined.describe(), "raw_openat (/src/x.c:3) [inlined]");
    }

    #[test]
    fn site_ids_hash_functions_and_offsets_not_addresses() {
        let a = vec![
            native(Some("open64"), "/usr/lib/x86_64-linux-gnu/libc.so.6", 0x100),
            located("leak_fn", "/opt/app", "a.c", 3),
        ];
        // The same code elsewhere in memory (ASLR), in a container's copy at another path,
        // even rebuilt with other code around it (other file offsets): the same site.
        let moved: Vec<Frame> = a
            .iter()
            .map(|f| Frame {
                address: f.address.map(|x| x + 0x5000_0000),
                offset: f.offset.map(|x| x + 0x40),
                module: f
                    .module
                    .as_deref()
                    .map(|m| Arc::from(m.replace("/usr/lib/x86_64-linux-gnu", "/lib"))),
                ..f.clone()
            })
            .collect();
        assert_eq!(site_id(&a), site_id(&moved));
        // Another place in the function is another site.
        let mut other = a.clone();
        other[1].symbol_offset = Some(0x18);
        assert_ne!(site_id(&a), site_id(&other));
        // Inlined frames follow from their address and change nothing.
        let mut with_inlined = a.clone();
        with_inlined.insert(
            1,
            Frame { inlined: true, symbol_offset: None, ..located("helper", "/opt/app", "a.c", 9) },
        );
        assert_eq!(site_id(&a), site_id(&with_inlined));
        // Without symbols, the module and file offset: stable too, different per offset.
        let stripped = vec![native(None, "/opt/app", 0x1189)];
        let stripped_moved = vec![Frame { address: Some(1), ..native(None, "/other/app", 0x1189) }];
        assert_eq!(site_id(&stripped), site_id(&stripped_moved));
        assert_ne!(site_id(&stripped), site_id(&[native(None, "/opt/app", 0x118a)]));
        // Every frame takes part (a site is its whole stack).
        let mut deeper = a.clone();
        deeper.insert(0, native(Some("__libc_open64"), "/lib/libc.so.6", 0x10));
        assert_ne!(site_id(&a), site_id(&deeper));
    }

    fn interp(symbol: &str, module: &str, offset: u64) -> Frame {
        Frame { interpreter: true, ..native(Some(symbol), module, offset) }
    }

    fn python(symbol: &str, file: &str, line: u32) -> Frame {
        Frame::python(Arc::from(symbol), Arc::from(file), Some(line))
    }

    /// One Python line's accept as the first calls and the specialized ones make it (the glue
    /// of pyenv's 3.12, seen in reports): the same Python frames and extension chain.
    pub(crate) fn accept_stack(glue: &[(&str, u64)], eval_offset: u64, outer: &[Frame]) -> Vec<Frame> {
        const LIBPYTHON: &str = "/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0";
        let mut frames = vec![
            native(Some("accept4"), "/usr/lib/x86_64-linux-gnu/libc.so.6", 0x10f0),
            native(Some("sock_accept"), "/x/lib-dynload/_socket.cpython-312-x86_64-linux-gnu.so", 0x5a0),
        ];
        frames.extend(glue.iter().map(|(symbol, offset)| interp(symbol, LIBPYTHON, *offset)));
        frames.push(python("socket.accept", "/x/lib/python3.12/socket.py", 295));
        frames.push(python("Handler.on_connect", "/srv/app.py", 21));
        frames.push(python("main", "/srv/app.py", 40));
        frames.push(interp("_PyEval_EvalFrameDefault", LIBPYTHON, eval_offset));
        frames.push(interp("PyEval_EvalCode", LIBPYTHON, 0x40));
        frames.extend_from_slice(outer);
        frames
    }

    #[test]
    fn python_may_run_under_the_eval_loop_or_where_the_stack_cannot_tell() {
        const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        const PYTHON: &str = "/usr/bin/python3.11";
        let loader = [
            native(Some("__open64_nocancel"), "/usr/lib64/ld-linux-x86-64.so.2", 0x10),
            native(Some("_dl_map_object"), "/usr/lib64/ld-linux-x86-64.so.2", 0x200),
        ];
        assert!(!python_may_run(&loader));
        let startup = [
            native(Some("open64"), LIBC, 0x40),
            interp("_Py_InitializeMain", PYTHON, 0x90),
            interp("main", PYTHON, 0x10),
            native(Some("__libc_start_call_main"), LIBC, 0x2d),
        ];
        assert!(!python_may_run(&startup));
        // Cut short (frame pointers through code without them): it may have run Python code.
        assert!(python_may_run(&startup[..1]));
        let running = [native(Some("open64"), LIBC, 0x40), interp("_PyEval_EvalFrameDefault", PYTHON, 0x900)];
        assert!(python_may_run(&running));
        // Cannot tell: nothing, an address in no module, an interpreter frame without a name.
        assert!(python_may_run(&[]));
        assert!(python_may_run(&[Frame::native(0x7f00_0000_1000, None, None)]));
        let mut unnamed = interp("x", PYTHON, 0x900);
        unnamed.symbol = None;
        assert!(python_may_run(&[native(Some("open64"), LIBC, 0x40), unnamed]));
    }

    #[test]
    fn one_site_per_python_call_path_whatever_the_interpreter_glue() {
        let libc_start =
            [native(Some("__libc_start_call_main"), "/usr/lib/x86_64-linux-gnu/libc.so.6", 0x2d)];
        let generic = accept_stack(
            &[
                ("cfunction_vectorcall_NOARGS", 0x30),
                ("PyObject_Vectorcall", 0x55),
                ("method_vectorcall", 0x12),
            ],
            0x1b3e,
            &libc_start,
        );
        // Specialized: the eval loop calls the C function itself, from elsewhere in it.
        let specialized = accept_stack(&[], 0x2c07, &libc_start);
        assert_eq!(site_id(&generic), site_id(&specialized));
        // Whatever lies outward of the Python frames (a stack window cut at another depth).
        let cut = accept_stack(&[("PyObject_Vectorcall", 0x55)], 0x2c07, &[]);
        assert_eq!(site_id(&generic), site_id(&cut));
        // Another line, another Python caller, another extension chain: other sites.
        let handler = generic.iter().position(|f| f.symbol.as_deref() == Some("Handler.on_connect")).unwrap();
        let mut other_line = generic.clone();
        other_line[handler].line = Some(22);
        assert_ne!(site_id(&generic), site_id(&other_line));
        let mut other_caller = generic.clone();
        other_caller[handler + 1] = python("serve", "/srv/app.py", 50);
        assert_ne!(site_id(&generic), site_id(&other_caller));
        let mut other_call = generic.clone();
        other_call[1].symbol_offset = Some(0x44);
        assert_ne!(site_id(&generic), site_id(&other_call));
        // The C library's frame innermost of the interpreter takes part, as in native stacks.
        assert_ne!(site_id(&generic), site_id(&generic[1..]));
        // Without Python frames (the interpreter not walked yet), every frame counts: the
        // interpreter's frames are all that tells such stacks apart.
        let native_only: Vec<Frame> =
            generic.iter().filter(|f| f.language != Language::Python).cloned().collect();
        let mut elsewhere = native_only.clone();
        let eval =
            elsewhere.iter().position(|f| f.symbol.as_deref() == Some("_PyEval_EvalFrameDefault")).unwrap();
        elsewhere[eval].symbol_offset = Some(0x99);
        assert_ne!(site_id(&native_only), site_id(&elsewhere));
        assert_ne!(site_id(&native_only), site_id(&generic));
    }

    #[test]
    fn interpreter_frames_fold_in_python_stacks_only() {
        let libc_start =
            [native(Some("__libc_start_call_main"), "/usr/lib/x86_64-linux-gnu/libc.so.6", 0x2d)];
        let frames = accept_stack(
            &[("cfunction_vectorcall_NOARGS", 0x30), ("PyObject_Vectorcall", 0x55)],
            0x1b3e,
            &libc_start,
        );
        let lines: Vec<String> = shown(&frames, FrameDisplay::Readable).iter().map(Shown::line).collect();
        assert_eq!(
            lines,
            [
                "#0  accept4 in libc.so.6",
                "#1  sock_accept in _socket.cpython-312-x86_64-linux-gnu.so",
                "… 2 interpreter frames",
                "#4  socket.accept (/x/lib/python3.12/socket.py:295)",
                "#5  Handler.on_connect (/srv/app.py:21)",
                "#6  main (/srv/app.py:40)",
                "… 2 interpreter frames",
                "#9  __libc_start_call_main in libc.so.6",
            ]
        );
        let one = accept_stack(&[("PyObject_Vectorcall", 0x55)], 0x1b3e, &[]);
        let lines: Vec<String> = shown(&one, FrameDisplay::Readable).iter().map(Shown::line).collect();
        assert_eq!(lines[2], "… 1 interpreter frame");
        // --all-frames: every frame, numbered as in JSON.
        let all = shown(&frames, FrameDisplay::All);
        assert_eq!(all.len(), frames.len());
        assert!(all.iter().enumerate().all(|(i, s)| *s == Shown::Frame(i, &frames[i])));
        // A stack without Python frames shows all of its frames.
        let native_only: Vec<Frame> =
            frames.iter().filter(|f| f.language != Language::Python).cloned().collect();
        assert_eq!(shown(&native_only, FrameDisplay::Readable).len(), native_only.len());
    }

    #[test]
    fn frames_serialize_as_the_report_contract() {
        let frame = located("leak_fn", "/opt/app", "/src/a.c", 3);
        let json = serde_json::to_value(&frame).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "symbol": "leak_fn", "file": "/src/a.c", "line": 3, "module": "/opt/app",
                "address": "0x7f0000001234", "offset": "0x1234", "symbol_offset": "0x10",
                "inlined": false, "language": "native", "interpreter": false
            })
        );
    }
}
