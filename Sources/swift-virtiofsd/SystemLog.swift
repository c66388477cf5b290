// SPDX-License-Identifier: Apache-2.0

import Logging
import VFSSystem

/// `--syslog`: each log line is one datagram to the system log's socket, `<PRI>swift-virtiofsd[PID]: ...` with
/// facility LOG_USER, as syslog(3) sends it. The socket is connected at start-up, before the sandbox hides
/// /dev/log, and is never reconnected (that would need calls the seccomp filter refuses): a line the system log
/// does not take goes to standard error instead.
final class SystemLogSocket: Sendable {
    let fd: OwnedFD
    let processID: Int32

    init(path: String) throws(Errno) {
        fd = try UnixSocket.connectDatagram(path: path)
        processID = ProcessControl.processID
    }

    func send(_ line: String) -> Bool {
        var line = line
        return line.withUTF8 { bytes in
            (try? UnixSocket.send(fd.borrowed, UnsafeRawBufferPointer(bytes))) != nil
        }
    }
}

struct SystemLogHandler: LogHandler {
    let label: String
    let socket: SystemLogSocket
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// syslog's severity for a level (LOG_USER is facility 1).
    static func priority(_ level: Logger.Level) -> Int {
        let severity = switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
        return 8 + severity
    }

    func log(event: LogEvent) {
        let text = "[\(label)] \(event.message)"
        if !socket.send("<\(Self.priority(event.level))>swift-virtiofsd[\(socket.processID)]: \(text)") {
            var fallback = StreamLogHandler.standardError(label: label)
            fallback.logLevel = logLevel
            fallback.log(event: event)
        }
    }
}
