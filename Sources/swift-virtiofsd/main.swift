// SPDX-License-Identifier: Apache-2.0

import ArgumentParser
import FUSE
import Logging
import Passthrough
import Sandbox
import VFSSystem
import VhostUser
import VirtioFSDevice

let version = "0.1.0"

struct SwiftVirtiofsd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swift-virtiofsd",
        abstract: "A vhost-user virtio-fs back-end: shares a host directory with a virtual machine.",
        discussion: """
            Start it, then point QEMU at the socket:
              swift-virtiofsd --socket-path /tmp/vfsd.sock --shared-dir /srv/share
              qemu-system-x86_64 ... -chardev socket,id=char0,path=/tmp/vfsd.sock \\
                -device vhost-user-fs-pci,chardev=char0,tag=myfs,queue-size=1024 \\
                -object memory-backend-memfd,id=mem,size=4G,share=on -numa node,memdev=mem
            and in the guest: mount -t virtiofs myfs /mnt
            The daemon serves one front-end connection and exits when it closes.
            """)

    @OptionGroup var options: DaemonOptions

    func run() throws {
        if options.version {
            print("swift-virtiofsd \(version)")
            return
        }
        if options.printCapabilities {
            // vhost-user.json's back-end capabilities: the long options work as libvirt passes them. Not
            // migrate-precopy: there is no migration here.
            print(#"{"type": "fs", "features": ["migrate-precopy", "separate-options"]}"#)
            return
        }
        let config: Configuration
        do {
            config = try Configuration(options)
        } catch let error as Configuration.Invalid {
            throw ValidationError(error.description)
        }
        let level = config.logLevel
        var systemLog: SystemLogSocket? = nil
        var unreachableLog: String? = nil
        if options.syslog {
            // A missing system log is no reason not to serve (virtiofsd starts too): one line, on standard error,
            // where the rest goes as well.
            do {
                systemLog = try SystemLogSocket(path: options.syslogSocket)
            } catch {
                unreachableLog = "--syslog: cannot reach the system log at \(options.syslogSocket) (\(error)); logging to standard error"
            }
        }
        LoggingSystem.bootstrap { label in
            guard let level else { return SwiftLogNoOpLogHandler() }
            if let systemLog { return SystemLogHandler(label: label, socket: systemLog, logLevel: level) }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "swift-virtiofsd")
        if let unreachableLog { logger.warning("\(unreachableLog)") }
        let status = Daemon(config: config, logger: logger).run()
        if status != 0 { throw ExitCode(status) }
    }
}

/// Wiring: the file system, the FUSE server, the device, the socket.
struct Daemon {
    let config: Configuration
    let logger: Logger

    func run() -> Int32 {
        // Before anything can crash: a crash is one log line naming the signal and the thread, whatever the
        // seccomp filter later allows.
        CrashReporting.install(program: "swift-virtiofsd")
        ProcessSettings.unblockAllSignals()
        ProcessSettings.ignoreBrokenPipe()
        // SIGTERM and SIGINT stop the daemon in order: blocked here, before any thread or fork (a sandbox's
        // working process inherits both the mask and the descriptor, and its parent passes them on).
        let stopSignals: StopSignals
        do {
            stopSignals = try StopSignals()
        } catch {
            logger.error("cannot watch for SIGTERM: \(error)")
            return 1
        }
        // The guest's mode bits arrive already masked by the guest's umask; the host's must not mask them again.
        ProcessSettings.setUmask(0)
        if ThreadCredentials.effectiveUID == 0 {
            // Requests run as their guest user; the daemon's own supplementary groups must not come along.
            try? ThreadCredentials.clearSupplementaryGroups()
        }
        if config.openFileLimit > 0 {
            let limit = config.exactOpenFileLimit
                ? ProcessSettings.setOpenFileLimit(config.openFileLimit)
                : ProcessSettings.raiseOpenFileLimit(to: config.openFileLimit)
            if limit < config.openFileLimit && !config.exactOpenFileLimit {
                logger.notice("open-file limit \(limit), not \(config.openFileLimit): the hard limit could not be raised; a guest that keeps more nodes than that gets ENFILE")
            } else {
                logger.debug("open-file limit: \(limit)")
            }
        }
        // The socket first: its path is out of reach once the shared directory is the root. Its pid file is
        // locked before anything else, so a second daemon on the same path stops here, and its socket is left
        // alone; the lock lasts as long as this process (and, with a namespace sandbox, its child).
        let listener: OwnedFD
        let place: String
        do {
            switch config.listen {
            case .path(let path):
                do {
                    try PidFile.acquire(path + ".pid")
                } catch {
                    logger.error("\(error)")
                    return 1
                }
                listener = try UnixSocket.listen(path: path, group: config.socketGroup)
                place = path
            case .fd(let fd):
                listener = OwnedFD(taking: fd)
                place = "fd \(fd)"
            }
        } catch {
            logger.error("cannot listen for the front-end: \(error)")
            return 1
        }
        var metricsListener: OwnedFD?
        if let path = config.metricsSocket {
            do {
                metricsListener = try UnixSocket.listen(path: path, backlog: 8)
            } catch {
                logger.error("--metrics-socket \(path): \(error)")
                return 1
            }
        }
        let sandbox: SandboxResult
        do {
            sandbox = try Sandbox.enter(
                config.sandbox, sharedDirectory: config.sharedDirectory, uidMaps: config.uidMaps,
                gidMaps: config.gidMaps, logger: logger)
        } catch {
            logger.error("\(error)")
            return 1
        }
        let fileSystem: PassthroughFileSystem
        do {
            var options = PassthroughOptions(
                sharedDirectory: sandbox.sharedDirectory, cache: config.cache, xattr: config.xattr,
                readOnly: config.readOnly, locks: config.locks, flockLocks: config.flockLocks, allowDirectIO: config.allowDirectIO,
                preserveNoatime: config.preserveNoatime, announceSubmounts: config.announceSubmounts,
                killprivV2: config.killprivV2, writeback: config.writeback,
                inodeFileHandles: config.inodeFileHandles, posixACL: config.posixACL,
                securityLabel: config.securityLabel, uidMap: config.uidTranslation, gidMap: config.gidTranslation,
                xattrMap: config.xattrMap,
                procSelf: sandbox.procSelf, switchCredentials: sandbox.canSwitchCredentials,
                migration: config.migration)
            options.autoTimeouts = config.autoTimeouts
            fileSystem = try PassthroughFileSystem(options: options, logger: logger)
        } catch {
            logger.error("cannot open shared directory \(config.sharedDirectory): \(error)")
            return 1
        }
        // Still one thread: what is set here holds for every thread started later.
        if ThreadCredentials.effectiveUID == 0 {
            do {
                try Capabilities.drop(keeping: config.capabilities)
            } catch {
                logger.error("capabilities: \(error)")
                return 1
            }
        }
        do {
            try Seccomp.install(config.seccomp)
        } catch {
            logger.error("\(error)")
            return 1
        }
        if config.seccompProbe {
            logger.info("seccomp probe: calling getppid, which is not on the allowlist")
            ProcessControl.callOutsideAllowlist()
        }
        if let probe = config.debugProbe {
            logger.info("probe \(probe): \(DebugProbe.run(probe))")
            return 0
        }
        let server = FUSEServer(
            fileSystem: fileSystem, options: FUSEServerOptions(readdirplus: config.readdirplus, statistics: metricsListener != nil),
            logger: logger)
        if let listener = metricsListener.take() {
            do {
                try MetricsServer.start(listener: listener, server: server, procSelf: fileSystem.procSelf, logger: logger)
            } catch {
                logger.error("--metrics-socket: \(error)")
                return 1
            }
        }
        let dump = { for line in MetricsServer.dumpLines(server: server, procSelf: fileSystem.procSelf) { logger.info("\(line)") } }
        let backend = VirtioFSBackend(
            server: server, threadPoolSize: config.threadPoolSize, tag: config.tag, deviceState: SessionTransfer(server: server),
            logger: logger)

        // Logged once sandbox, capabilities and filter are in place (a front-end may connect earlier: it waits).
        logger.info("waiting for the front-end on \(place) (sandbox \(config.sandbox.rawValue), seccomp \(config.seccomp.rawValue), cache \(config.cache.rawValue)\(config.cache == .auto ? ": timeouts \(config.autoTimeouts)" : ""))")
        let connection: VhostUserConnection
        do {
            guard try stopSignals.waitReadable(listener.borrowed, dump: dump) else {
                logger.info("\(stopSignals.take() ?? "a stop signal") before a front-end connected; exiting")
                return 0
            }
            connection = VhostUserConnection(socket: try UnixSocket.accept(listener.borrowed))
        } catch {
            logger.error("cannot accept a front-end connection: \(error)")
            return 1
        }
        logger.info("front-end connected; sharing \(config.sharedDirectory) with cache=\(config.cache.rawValue)")
        let handler = VhostUserHandler(backend: backend, logger: logger, procSelf: fileSystem.procSelf)
        let stopped: Bool
        do {
            stopped = try handler.serve(connection) { socket in (try? stopSignals.waitReadable(socket, dump: dump)) ?? false }
        } catch {
            logger.error("vhost-user: \(error); disconnecting")
            backend.reset()
            return 1
        }
        backend.reset()
        if stopped {
            logger.info("\(stopSignals.take() ?? "a stop signal"): the queues are stopped, the requests they were serving answered; exiting")
        } else {
            logger.info("front-end disconnected; exiting")
        }
        return 0
    }
}

/// The C daemon's `-oOPTS` (the value joined to the flag, `=` and all: `-osource=/srv`) as `-o OPTS`, which the
/// argument parser would otherwise read as an unknown option `-osource`.
func separatingJoinedCompatOptions(_ arguments: [String]) -> [String] {
    arguments.flatMap { argument -> [String] in
        guard argument.hasPrefix("-o"), argument.count > 2, !argument.hasPrefix("-o=") else { return [argument] }
        return ["-o", String(argument.dropFirst(2))]
    }
}

SwiftVirtiofsd.main(separatingJoinedCompatOptions(Array(CommandLine.arguments.dropFirst())))
