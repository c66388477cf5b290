// SPDX-License-Identifier: Apache-2.0

import ArgumentParser
import FUSE
import Logging
import Passthrough
import Sandbox
import VFSSystem

/// The command line, in virtiofsd's spelling (and the C virtiofsd's `-o` compat form).
struct DaemonOptions: ParsableArguments {
    @Option(name: [.customLong("socket-path"), .customLong("socket")], help: "Listen for the vhost-user front-end on this Unix socket.")
    var socketPath: String?

    @Option(name: .customLong("fd"), help: "Use this already-listening socket instead of --socket-path.")
    var fd: Int32?

    @Option(name: .customLong("socket-group"), help: "Make the socket 0770 and owned by this group (it is 0700 otherwise).")
    var socketGroup: String?

    @Option(name: .customLong("shared-dir"), help: "The directory to share with the guest.")
    var sharedDir: String?

    @Option(name: .customLong("cache"), help: "never | metadata | auto | always (default auto).")
    var cache: String?

    @Option(name: .customLong("thread-pool-size"), help: "Worker threads besides the queue threads (0: requests run on their queue's thread).")
    var threadPoolSize: Int = 0

    @Option(name: .customLong("log-level"), help: "error | warn | info | debug | trace | off, in any case (default info; the C daemon's err too).")
    var logLevel: String = "info"

    @Flag(name: .customLong("xattr"), help: "Serve extended attributes (off by default, as virtiofsd).")
    var xattr = false

    @Flag(name: .customLong("no-readdirplus"), help: "Do not offer READDIRPLUS (always off with --cache never).")
    var noReaddirplus = false

    @Flag(name: .customLong("readonly"), help: "Refuse every change with EROFS.")
    var readOnly = false

    @Flag(name: .customLong("writeback"), help: "Let the guest cache writes (FUSE_WRITEBACK_CACHE).")
    var writeback = false

    @Flag(name: .customLong("allow-direct-io"), help: "Honour the guest's O_DIRECT on the host.")
    var allowDirectIO = false

    @Flag(name: .customLong("preserve-noatime"), help: "Keep the guest's O_NOATIME (stripped by default).")
    var preserveNoatime = false

    @Flag(name: [.customLong("killpriv-v2")], inversion: .prefixedNo, help: "FUSE_HANDLE_KILLPRIV_V2: the daemon clears set-id bits on write, truncate and chown, by the rule a local file system keeps, and the guest no longer asks for a file's attributes before each chown (default on, except on NFS or SMB, whose server may refuse it; virtiofsd's default is off).")
    var killprivV2: Bool? = nil

    @Flag(name: [.customLong("announce-submounts")], inversion: .prefixedNo, help: "Give each host submount its own device in the guest (default on).")
    var announceSubmounts = true

    @Flag(name: .customLong("posix-acl"), help: "POSIX ACLs, applied by the guest kernel (implies --xattr; the guest must offer POSIX_ACL, DONT_MASK and SETXATTR_EXT).")
    var posixACL = false

    @Flag(name: .customLong("security-label"), help: "Label new files with the security context the guest sends (FUSE_SECURITY_CTX; implies --xattr).")
    var securityLabel = false

    @Option(name: .customLong("inode-file-handles"), help: "never | prefer | mandatory: hold the guest's inodes as kernel file handles instead of open descriptors (default never).")
    var inodeFileHandles: String = "never"

    @Option(name: .customLong("rlimit-nofile"), help: "Set the open-file limit to this (0: leave it; default: up to 1,000,000).")
    var rlimitNofile: UInt64?

    @Option(name: .customLong("sandbox"), help: "namespace | chroot | none: how the daemon shuts itself in with the shared directory (default namespace).")
    var sandbox: String?

    @Option(name: .customLong("seccomp"), help: "kill | log | trap | none: what a system call outside the daemon's allowlist does (default kill).")
    var seccomp: String = "kill"

    @Option(name: .customLong("modcaps"), help: "Edit the capabilities kept when running as root: +cap:-cap (e.g. -mknod:+sys_admin).")
    var modcaps: String?

    @Option(name: .customLong("uid-map"), help: ArgumentHelp("Started as a normal user with --sandbox namespace: map uids of the user namespace, :namespace_id:host_id:count: (newuidmap, /etc/subuid). Repeatable.", valueName: ":ns:host:count:"))
    var uidMap: [String] = []

    @Option(name: .customLong("gid-map"), help: ArgumentHelp("As --uid-map, for gids (newgidmap, /etc/subgid). Repeatable.", valueName: ":ns:host:count:"))
    var gidMap: [String] = []

    @Option(name: .customLong("translate-uid"), help: ArgumentHelp("Translate uids between guest and host in the daemon: map:GUEST:HOST:COUNT, guest:GUEST:HOST:COUNT, host:HOST:GUEST:COUNT, squash-guest:GUEST:HOST:COUNT, squash-host:HOST:GUEST:COUNT, forbid-guest:GUEST:COUNT. Repeatable.", valueName: "type:..."))
    var translateUID: [String] = []

    @Option(name: .customLong("translate-gid"), help: ArgumentHelp("As --translate-uid, for gids. Repeatable.", valueName: "type:..."))
    var translateGID: [String] = []

    @Flag(name: .customLong("seccomp-probe"), help: .hidden)
    var seccompProbe = false

    @Option(name: .customLong("debug-probe"), help: .hidden)
    var debugProbe: String?

    @Flag(name: .customLong("print-capabilities"), help: "Print the vhost-user back-end capabilities as JSON and exit.")
    var printCapabilities = false

    @Flag(name: .customLong("allow-mmap"), help: "Let the guest map files opened with DIRECT_IO (cache never and metadata): always so here, where the guest offers FUSE_DIRECT_IO_ALLOW_MMAP (Linux 6.6 and later).")
    var allowMmap = false

    @Option(name: .customLong("tag"), help: "The virtio-fs tag (at most 36 bytes) for front-ends that read the device's config from the back-end (VHOST_USER_PROTOCOL_F_CONFIG, offered only with a tag; virtiofsd warns that QEMU 7.1 to 8.0 crash on that feature, which Debian 12's QEMU 7.2 does not). QEMU takes the tag from -device vhost-user-fs-pci,tag=.")
    var tag: String?

    @Flag(name: .customLong("syslog"), help: "Log to the system log (/dev/log, facility user) instead of standard error.")
    var syslog = false

    @Option(name: .customLong("metrics-socket"), help: ArgumentHelp("Serve statistics in the Prometheus text format on this Unix socket (each connection gets one HTTP/1.0 answer: curl --unix-socket PATH http://localhost/metrics); SIGUSR1 logs them once. Off by default.", valueName: "PATH"))
    var metricsSocket: String?

    @Option(name: .customLong("syslog-socket"), help: .hidden)
    var syslogSocket: String = "/dev/log"

    @Option(name: .customLong("xattrmap"), help: ArgumentHelp("Rename, hide or refuse extended attribute names between guest and host, in virtiofsd's rule language: :type:scope:key:prepend: (prefix|ok|bad|unsupported, client|server|all) or :map:key:prepend:, any separator character (implies --xattr).", valueName: "rules"))
    var xattrmap: String?

    @Flag(name: .customLong("daemonize"), help: .hidden)
    var daemonize = false

    @Option(name: .customLong("migration-mode"), help: ArgumentHelp("How a live migration's destination finds the files the guest holds: find-paths (their paths under the shared directory, as the source sees them at switch-over) or file-handles (kernel file handles: the same file system on both sides, and CAP_DAC_READ_SEARCH).", valueName: "find-paths|file-handles"))
    var migrationMode: String?

    @Option(name: .customLong("migration-on-error"), help: ArgumentHelp("What a file that cannot be found again in a migration does: abort (the migration fails, the guest goes on at the source) or guest-error (the migration goes on; requests on that file fail with EIO).", valueName: "abort|guest-error"))
    var migrationOnError: String?

    @Flag(name: .customLong("migration-verify-handles"), help: "In a migration, the destination checks that every file it finds is the source's (device and inode number): only where both sides see the same file system.")
    var migrationVerifyHandles = false

    @Flag(name: .customLong("migration-confirm-paths"), help: "In a migration with find-paths, the source opens every path it found and checks it still names the file, against others renaming files meanwhile.")
    var migrationConfirmPaths = false

    @Option(name: .customShort("o", allowingJoined: true), help: ArgumentHelp("""
        Compat options (the C virtiofsd's), comma-separated: source=DIR, cache=none|never|metadata|auto|always, \
        xattr|no_xattr, readdirplus|no_readdirplus, posix_lock|no_posix_lock, flock|no_flock, writeback|no_writeback, \
        allow_direct_io|no_allow_direct_io, posix_acl|no_posix_acl, security_label|no_security_label, \
        killpriv_v2|no_killpriv_v2, announce_submounts|no_announce_submounts, readonly, sandbox=namespace|chroot|none, \
        modcaps=+cap:-cap, log_level=debug|info|warn|err (or loglevel=), debug, xattrmap=RULES, timeout=SECONDS (with \
        cache=auto, the longest timeout the guest is given: the bound on how long another party's change stays \
        unseen, 10 by default); accepted with no effect here: norace (nothing here races a path), max_idle_threads=N, \
        allow_root (FUSE's, for a mount on the host).
        """, valueName: "opt[,opt...]"))
    var compat: [String] = []

    @Flag(name: .customShort("f"), help: "Compat: stay in the foreground (always so).")
    var foreground = false

    @Flag(name: .customShort("d"), help: "Compat: debug logging.")
    var debug = false

    @Flag(name: [.customLong("version"), .customShort("V")], help: "Print the version and exit.")
    var version = false
}

/// The options after the compat forms are folded in and checked.
struct Configuration {
    var listen: Listen
    /// `--metrics-socket`: where the statistics are served (nil: they are off).
    var metricsSocket: String?
    var sharedDirectory: String
    var cache: CachePolicy
    /// The timeouts of `--cache auto` (`-o timeout=` sets the long one).
    var autoTimeouts: AutoTimeouts
    var xattr: Bool
    var xattrMap: XattrMap?
    /// `--tag`: served from the device's config space (GET_CONFIG).
    var tag: String?
    var readdirplus: Bool
    var threadPoolSize: Int
    var logLevel: Logger.Level?
    var readOnly: Bool
    var locks: Bool
    var flockLocks: Bool
    var writeback: Bool
    var allowDirectIO: Bool
    var preserveNoatime: Bool
    /// nil: the file system decides (on, unless the shared directory is on a network file system).
    var killprivV2: Bool?
    var announceSubmounts: Bool
    var inodeFileHandles: InodeFileHandles
    var posixACL: Bool
    var securityLabel: Bool
    var openFileLimit: UInt64
    var sandbox: SandboxMode
    var seccomp: SeccompAction
    /// A test hook: make one system call outside the allowlist once the filter is in place.
    var seccompProbe: Bool
    /// A test hook: one call with given arguments, or a crash, once the filter is in place (`DebugProbe`).
    var debugProbe: String?
    /// The group that may connect to the socket.
    var socketGroup: UInt32?
    var capabilities: [String]
    var uidMaps: [NamespaceIDMap]
    var gidMaps: [NamespaceIDMap]
    var uidTranslation: UIDMap
    var gidTranslation: GIDMap
    /// Set the open-file limit to exactly `openFileLimit` (it was given), rather than only raise it.
    var exactOpenFileLimit: Bool
    /// `--migration-*`.
    var migration: MigrationOptions

    enum Listen {
        case path(String)
        case fd(Int32)
    }

    struct Invalid: Error, CustomStringConvertible {
        let description: String
    }

    init(_ options: DaemonOptions) throws {
        var sharedDirectory = options.sharedDir
        var cacheText = options.cache
        var autoTimeouts = AutoTimeouts()
        var xattr = options.xattr
        var readdirplus = !options.noReaddirplus
        var logLevelText = options.debug ? "debug" : options.logLevel
        var readOnly = options.readOnly
        var locks = true
        var flockLocks = true
        var writeback = options.writeback
        var killprivV2 = options.killprivV2
        var announceSubmounts = options.announceSubmounts
        var allowDirectIO = options.allowDirectIO
        var posixACL = options.posixACL
        var securityLabel = options.securityLabel
        var modcaps = options.modcaps
        var xattrmapText = options.xattrmap
        var sandboxText = options.sandbox ?? "namespace"
        for group in options.compat {
            for item in group.split(separator: ",").map(String.init) {
                let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
                let value = parts.count == 2 ? parts[1] : nil
                switch (parts[0], value) {
                case ("source", let dir?): sharedDirectory = dir
                case ("cache", let mode?): cacheText = mode
                case ("xattr", nil): xattr = true
                case ("no_xattr", nil): xattr = false
                case ("readdirplus", nil): readdirplus = true
                case ("no_readdirplus", nil): readdirplus = false
                case ("log_level", let level?), ("loglevel", let level?): logLevelText = level
                case ("debug", nil): logLevelText = "debug"
                case ("modcaps", let list?): modcaps = modcaps.map { $0 + ":" + list } ?? list
                case ("security_label", nil): securityLabel = true
                case ("no_security_label", nil): securityLabel = false
                case ("no_announce_submounts", nil): announceSubmounts = false
                case ("xattrmap", let rules?): xattrmapText = rules
                case ("readonly", nil): readOnly = true
                case ("posix_acl", nil): posixACL = true
                case ("no_posix_acl", nil): posixACL = false
                case ("writeback", nil): writeback = true
                case ("no_writeback", nil): writeback = false
                case ("killpriv_v2", nil): killprivV2 = true
                case ("no_killpriv_v2", nil): killprivV2 = false
                case ("announce_submounts", nil): announceSubmounts = true
                case ("allow_direct_io", nil): allowDirectIO = true
                case ("no_allow_direct_io", nil): allowDirectIO = false
                // The C virtiofsd's lock switches: both kinds are on by default here, each "no_" turns its own off.
                case ("posix_lock", nil): locks = true
                case ("no_posix_lock", nil): locks = false
                case ("flock", nil): flockLocks = true
                case ("no_flock", nil): flockLocks = false
                case ("sandbox", let mode?): sandboxText = mode
                // The C daemon's cache timeout: here the longest `auto` grants (1 keeps every timeout at 1 s, as
                // virtiofsd's auto); the other modes' timeouts are fixed.
                case ("timeout", let value?):
                    guard let seconds = Double(value), seconds >= 0, seconds <= 86400 else {
                        throw Invalid(description: "-o timeout takes seconds from 0 to 86400, not '\(value)'")
                    }
                    let long = Timeout(seconds: UInt64(seconds), nanoseconds: UInt32((seconds - seconds.rounded(.down)) * 1e9))
                    autoTimeouts = AutoTimeouts(short: min(AutoTimeouts().short, long), long: long)
                // Accepted for compatibility, with no effect here: the C daemon's racy path fallback (nothing here
                // resolves a path that could race), its idle worker cap, and FUSE's allow_root (for a FUSE mount on
                // the host, which there is none of).
                case ("norace", nil), ("max_idle_threads", _), ("allow_root", nil):
                    break
                default:
                    throw Invalid(description: "unknown -o option '\(item)'")
                }
            }
        }
        guard let sharedDirectory, !sharedDirectory.isEmpty else {
            throw Invalid(description: "--shared-dir (or -o source=DIR) is required")
        }
        let cache = try cacheText.map { (text: String) throws -> CachePolicy in
            guard let mode = CachePolicy(parsing: text) else {
                throw Invalid(description: "--cache takes never, metadata, auto or always, not '\(text)'")
            }
            return mode
        } ?? .auto
        switch (options.socketPath, options.fd) {
        case (let path?, nil): listen = .path(path)
        case (nil, let fd?): listen = .fd(fd)
        case (nil, nil): throw Invalid(description: "--socket-path or --fd is required")
        case (_?, _?): throw Invalid(description: "--socket-path and --fd cannot be used together")
        }
        if let group = options.socketGroup {
            guard options.fd == nil else { throw Invalid(description: "--socket-group cannot be used with --fd") }
            guard let id = ProcessControl.groupID(named: group) else { throw Invalid(description: "--socket-group: no group '\(group)'") }
            socketGroup = id
        } else {
            socketGroup = nil
        }
        if let probe = options.debugProbe, !DebugProbe.names.contains(probe) {
            throw Invalid(description: "--debug-probe takes one of \(DebugProbe.names.joined(separator: ", "))")
        }
        debugProbe = options.debugProbe
        if let tag = options.tag, tag.utf8.isEmpty || tag.utf8.count > 36 {
            throw Invalid(description: "--tag takes 1 to 36 bytes, not \(tag.utf8.count)")
        }
        self.tag = options.tag
        if options.daemonize {
            throw Invalid(description: "--daemonize: not supported; the daemon stays in the foreground for its supervisor (systemd, libvirt) to watch")
        }
        guard let migrationMode = MigrationOptions.Mode(rawValue: options.migrationMode ?? "find-paths") else {
            throw Invalid(description: "--migration-mode takes find-paths or file-handles, not '\(options.migrationMode ?? "")'")
        }
        guard let migrationOnError = MigrationOptions.OnError(rawValue: options.migrationOnError ?? "abort") else {
            throw Invalid(description: "--migration-on-error takes abort or guest-error, not '\(options.migrationOnError ?? "")'")
        }
        migration = MigrationOptions(
            mode: migrationMode, onError: migrationOnError, verifyHandles: options.migrationVerifyHandles,
            confirmPaths: options.migrationConfirmPaths)
        switch logLevelText.lowercased() {
        case "off": logLevel = nil
        case "error", "err": logLevel = .error
        case "warn", "warning": logLevel = .warning
        case "info": logLevel = .info
        case "debug": logLevel = .debug
        case "trace": logLevel = .trace
        default: throw Invalid(description: "--log-level takes error, warn, info, debug, trace or off")
        }
        guard options.threadPoolSize >= 0 else { throw Invalid(description: "--thread-pool-size must not be negative") }


        let inodeFileHandles: InodeFileHandles
        switch options.inodeFileHandles {
        case "never": inodeFileHandles = .never
        case "prefer", "fallback": inodeFileHandles = .prefer  // fallback: virtiofsd's older spelling
        case "mandatory": inodeFileHandles = .mandatory
        default: throw Invalid(description: "--inode-file-handles takes never, prefer or mandatory")
        }
        guard let sandbox = SandboxMode(rawValue: sandboxText) else {
            throw Invalid(description: "--sandbox takes namespace, chroot or none, not '\(sandboxText)'")
        }
        guard let seccomp = SeccompAction(rawValue: options.seccomp) else {
            throw Invalid(description: "--seccomp takes kill, log, trap or none, not '\(options.seccomp)'")
        }
        do {
            capabilities = try Capabilities.set(
                fileHandles: inodeFileHandles != .never || migration.mode == .fileHandles, modifications: modcaps)
            uidMaps = try options.uidMap.map { (text) throws(NamespaceIDMap.Invalid) in try NamespaceIDMap(parsing: text) }
            gidMaps = try options.gidMap.map { (text) throws(NamespaceIDMap.Invalid) in try NamespaceIDMap(parsing: text) }
        } catch let error as Capabilities.Invalid {
            throw Invalid(description: error.description)
        } catch let error as NamespaceIDMap.Invalid {
            throw Invalid(description: "--uid-map/--gid-map: \(error.description)")
        }
        do {
            uidTranslation = try UIDMap(options.translateUID.map { (text) throws(IDRule.Invalid) in try IDRule(parsing: text) })
        } catch {
            throw Invalid(description: "--translate-uid \(error.description)")
        }
        do {
            gidTranslation = try GIDMap(options.translateGID.map { (text) throws(IDRule.Invalid) in try IDRule(parsing: text) })
        } catch {
            throw Invalid(description: "--translate-gid \(error.description)")
        }
        if posixACL && !(uidTranslation.isIdentity && gidTranslation.isIdentity) {
            // ACL entries name host ids that the guest would see untranslated.
            throw Invalid(description: "--posix-acl cannot be used with --translate-uid or --translate-gid")
        }
        self.sandbox = sandbox
        self.seccomp = seccomp
        self.seccompProbe = options.seccompProbe
        self.readOnly = readOnly
        self.locks = locks
        self.flockLocks = flockLocks
        self.writeback = writeback
        self.allowDirectIO = allowDirectIO
        self.preserveNoatime = options.preserveNoatime
        self.killprivV2 = killprivV2
        self.announceSubmounts = announceSubmounts
        self.inodeFileHandles = inodeFileHandles
        self.posixACL = posixACL
        self.securityLabel = securityLabel
        self.sharedDirectory = sharedDirectory
        self.cache = cache
        self.autoTimeouts = autoTimeouts
        if let xattrmapText {
            do {
                xattrMap = try XattrMap(parsing: xattrmapText)
            } catch {
                throw Invalid(description: "--xattrmap: \(error.description)")
            }
        } else {
            xattrMap = nil
        }
        self.xattr = xattr || xattrMap != nil
        self.readdirplus = readdirplus && cache.allowsReaddirplus
        self.metricsSocket = options.metricsSocket
        self.threadPoolSize = options.threadPoolSize
        self.openFileLimit = options.rlimitNofile ?? 1_000_000
        self.exactOpenFileLimit = options.rlimitNofile != nil
    }
}
