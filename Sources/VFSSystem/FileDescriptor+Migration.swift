// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

extension ProcSelfDirectory {
    /// The path `/proc/self/fd/N` gives for descriptor N, as bytes (a path is not always UTF-8), up to
    /// PATH_MAX; nil when it cannot be read or is longer.
    public func path(of descriptor: FileDescriptor) -> [UInt8]? {
        // SAFETY: readlinkat reads the local NUL-terminated name and writes at most buffer.count bytes.
        var name = [CChar](repeating: 0, count: 16)
        var value = descriptor.rawValue
        guard value >= 0 else { return nil }
        var digits: [CChar] = []
        repeat {
            digits.append(CChar(UInt8(ascii: "0") + UInt8(value % 10)))
            value /= 10
        } while value > 0
        for (i, digit) in digits.reversed().enumerated() { name[i] = digit }
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = unsafe buffer.withUnsafeMutableBytes { raw in
            unsafe readlinkat(fd.rawValue, name, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
        }
        guard n > 0, n < buffer.count else { return nil }
        return Array(buffer[0..<n])
    }
}

extension FileDescriptor {
    /// The file status flags (access mode, O_APPEND, O_DIRECT, ...). The corresponding C function is
    /// `fcntl(F_GETFL)`.
    public func statusFlags() throws(Errno) -> CInt {
        try valueOrErrno { fcntl(rawValue, F_GETFL) }
    }

    /// Whether this is a pipe or a socket: what a stream of device state may be carried on.
    public var isPipeOrSocket: Bool {
        guard let info = try? stat() else { return false }
        let type = info.mode & 0o170000
        return type == 0o010000 || type == 0o140000
    }

    /// Waits up to `milliseconds` for the descriptor to become readable (`writable` false) or writable; whether it
    /// did (or has hung up, which the next read or write reports). The corresponding C function is `poll`.
    public func wait(writable: Bool, milliseconds: CInt) -> Bool {
        // SAFETY: poll reads and writes the one local pollfd during the call.
        var entry = pollfd(fd: rawValue, events: Int16(writable ? POLLOUT : POLLIN), revents: 0)
        while true {
            let n = unsafe poll(&entry, 1, milliseconds)
            if n < 0 && errno == EINTR { continue }
            return n > 0
        }
    }
}

extension KernelFileHandle {
    /// The largest handle the kernel makes (MAX_HANDLE_SZ).
    public static var maxByteCount: Int { 128 }

    /// `handle_type`, for carrying the handle elsewhere.
    public var handleType: Int32 { type }

    /// `f_handle`'s bytes.
    public var bytes: [UInt8] {
        if let spill { return spill }
        // SAFETY: reads byteCount (at most 16) bytes of the local inline words.
        return unsafe withUnsafeBytes(of: inline) { Array($0.prefix(Int(byteCount))) }
    }

    /// A handle carried from elsewhere (a migration's source); nil when it is longer than the kernel makes.
    public init?(type: Int32, mountID: Int32, bytes: [UInt8]) {
        guard bytes.count <= Self.maxByteCount else { return nil }
        var full = cvfs_file_handle()
        // SAFETY: writes the header and at most 128 bytes into the local struct's 136.
        unsafe withUnsafeMutableBytes(of: &full) { raw in
            unsafe raw.storeBytes(of: UInt32(bytes.count), toByteOffset: 0, as: UInt32.self)
            unsafe raw.storeBytes(of: type, toByteOffset: 4, as: Int32.self)
            for (i, byte) in bytes.enumerated() { unsafe raw[8 + i] = byte }
        }
        self.init(full, mountID: mountID)
    }
}

extension ProcessSettings {
    /// Sleeps the calling thread (control-path waits only). The corresponding C function is `usleep`.
    public static func sleep(microseconds: UInt32) { usleep(microseconds) }
}
