//! The probe library's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the probe's data plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work (bad snaplen, ring buffer size, …).
    #[error("invalid capture configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The kernel refused the BPF object (verifier, map creation, permissions).
    #[error("loading the BPF object failed")]
    Load {
        /// Why.
        #[source]
        source: aya::EbpfError,
    },
    /// A program is missing from the object or cannot be loaded.
    #[error("BPF program {program}: {what}")]
    Program {
        /// Program name.
        program: &'static str,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The pin or the private BPF filesystem through which the capture objects share the tc
    /// object's connection map could not be made.
    #[error("sharing the connection map between the capture objects: {what} {}", path.display())]
    SharedMap {
        /// The pin path or mount point.
        path: std::path::PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The object has no map of that name (object and loader out of step).
    #[error("BPF map {map} is missing from the object or already taken")]
    MissingMap {
        /// Map name.
        map: &'static str,
    },
    /// A map operation failed.
    #[error("BPF map {map}: {what}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: aya::maps::MapError,
    },
    /// Attaching to or detaching from an interface failed.
    #[error("tc on {interface}: {what}")]
    Tc {
        /// Interface name.
        interface: String,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A netlink request failed.
    #[error("netlink {what}")]
    Netlink {
        /// The request.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A netlink answer could not be understood.
    #[error("malformed netlink answer to {what}: {reason}")]
    NetlinkMalformed {
        /// The request.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Entering a network namespace failed.
    #[error("network namespace {name}: {what}")]
    Netns {
        /// Namespace name.
        name: String,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A network namespace has no veth whose peer is in this namespace.
    #[error("network namespace {name} has no veth with a peer here")]
    NoHostVeth {
        /// Namespace name.
        name: String,
    },
    /// A file could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `/proc/net/tcp`-style table line could not be parsed.
    #[error("{}: bad line {line:?}", path.display())]
    ProcNetParse {
        /// Which file.
        path: PathBuf,
        /// The offending line.
        line: String,
    },
    /// A ring buffer record could not be decoded.
    #[error("bad ring buffer record: {reason}")]
    RawEvent {
        /// What was wrong.
        reason: String,
    },
    /// Registering the ring buffer with the async runtime failed.
    #[error("ring buffer wait")]
    RingWait {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The event loop was already taken.
    /// Every socket hook set failed to load or attach.
    #[error("no socket hook set could be attached: {attempts}")]
    NoSocketHooks {
        /// Each hook set tried and why it failed.
        attempts: String,
    },
    /// The kernel's BTF (`/sys/kernel/btf/vmlinux`) cannot be read.
    #[error("reading the kernel's BTF")]
    Btf {
        /// Why.
        #[source]
        source: aya::BtfError,
    },
    #[error("the event loop was already taken")]
    EventLoopTaken,
    /// The target follower (the Kubernetes watch or the namespace scan) ended while the probe
    /// was to keep running: the probe stops (non-zero exit) rather than trace a frozen picture.
    #[error("the target follower ended before shutdown")]
    TargetsEnded,
    /// No Kubernetes client could be configured (neither in-cluster nor from a kubeconfig).
    #[error("Kubernetes client configuration")]
    KubeConfig {
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The interface is not known to the kernel.
    #[error("no interface named {interface}")]
    NoSuchInterface {
        /// Interface name.
        interface: String,
    },
}

/// Result with the probe's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
