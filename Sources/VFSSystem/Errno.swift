// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// A POSIX error number, as a typed error.
///
/// File-system failures travel as `Errno` all the way to the guest, which receives `-rawValue` in the FUSE reply.
public struct Errno: RawRepresentable, Error, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: CInt

    @inlinable public init(rawValue: CInt) { self.rawValue = rawValue }

    /// The calling thread's current `errno`.
    public static var current: Errno { Errno(rawValue: cvfs_errno()) }

    public var description: String {
        // SAFETY: strerror returns a static or thread-local C string, copied into a String at once.
        guard let text = unsafe strerror(rawValue) else { return "errno \(rawValue)" }
        return unsafe String(cString: text)
    }

    public static let notPermitted = Errno(rawValue: EPERM)
    public static let noEntry = Errno(rawValue: ENOENT)
    public static let interrupted = Errno(rawValue: EINTR)
    public static let ioError = Errno(rawValue: EIO)
    public static let notConnected = Errno(rawValue: ENOTCONN)
    public static let badFileDescriptor = Errno(rawValue: EBADF)
    public static let noLocksAvailable = Errno(rawValue: ENOLCK)
    public static let wouldBlock = Errno(rawValue: EAGAIN)
    public static let noMemory = Errno(rawValue: ENOMEM)
    public static let permissionDenied = Errno(rawValue: EACCES)
    public static let badAddress = Errno(rawValue: EFAULT)
    public static let busy = Errno(rawValue: EBUSY)
    public static let fileExists = Errno(rawValue: EEXIST)
    public static let crossDevice = Errno(rawValue: EXDEV)
    public static let notDirectory = Errno(rawValue: ENOTDIR)
    public static let isDirectory = Errno(rawValue: EISDIR)
    public static let invalidArgument = Errno(rawValue: EINVAL)
    public static let tooManyOpenFilesInSystem = Errno(rawValue: ENFILE)
    public static let tooManyOpenFiles = Errno(rawValue: EMFILE)
    public static let fileTooLarge = Errno(rawValue: EFBIG)
    public static let noSpace = Errno(rawValue: ENOSPC)
    public static let readOnlyFileSystem = Errno(rawValue: EROFS)
    public static let range = Errno(rawValue: ERANGE)
    public static let nameTooLong = Errno(rawValue: ENAMETOOLONG)
    public static let noFunction = Errno(rawValue: ENOSYS)
    public static let notEmpty = Errno(rawValue: ENOTEMPTY)
    public static let tooManySymbolicLinks = Errno(rawValue: ELOOP)
    public static let noData = Errno(rawValue: ENODATA)
    public static let protocolError = Errno(rawValue: EPROTO)
    public static let overflow = Errno(rawValue: EOVERFLOW)
    public static let notSupported = Errno(rawValue: EOPNOTSUPP)
    public static let notTTY = Errno(rawValue: ENOTTY)
    public static let stale = Errno(rawValue: ESTALE)
}

/// Runs a system call that returns -1 and sets `errno` on failure, retrying on `EINTR` when asked.
///
/// This is the only place, with `valueOrErrno(ssize:)`, that reads `errno`.
@inlinable
func valueOrErrno<T: FixedWidthInteger>(
    retryOnInterrupt: Bool = true, _ body: () -> T
) throws(Errno) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let error = Errno.current
        if retryOnInterrupt && error == .interrupted { continue }
        throw error
    }
}

/// As `valueOrErrno`, for calls that return nothing useful on success.
@inlinable
func nothingOrErrno<T: FixedWidthInteger>(retryOnInterrupt: Bool = true, _ body: () -> T) throws(Errno) {
    _ = try valueOrErrno(retryOnInterrupt: retryOnInterrupt, body)
}

extension Errno {
    /// The symbolic name of an errno value ("ENOENT"), or "E" and the number where glibc knows none.
    public static func symbolicName(_ value: Int32) -> String {
        // SAFETY: glibc returns a static string.
        let name = unsafe String(cString: cvfs_errno_name(value))
        return name.isEmpty ? "E\(value)" : name
    }
}
