// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// A shared mapping of a file (a guest memory region's memfd), unmapped when the last reference goes away.
// SAFETY: Owns the mapping: `base` is valid for `length` bytes until `deinit` unmaps it.
@safe
public final class MemoryMapping: @unchecked Sendable {
    /// The first mapped byte.
    public let base: UnsafeMutableRawPointer
    /// The mapped length in bytes.
    public let length: Int

    /// Maps `length` bytes of `fd` from `offset`, shared, readable and writable.
    /// The corresponding C function is `mmap`.
    public init(fd: FileDescriptor, length: Int, offset: Int64 = 0) throws(Errno) {
        // SAFETY: mmap either fails or returns `length` bytes that this object owns until deinit.
        guard length > 0 else { throw .invalidArgument }
        let address = unsafe mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, off_t(offset))
        guard let address = unsafe address, unsafe address != MAP_FAILED else { throw Errno.current }
        unsafe self.base = unsafe address
        self.length = length
    }

    /// An anonymous shared mapping of `length` bytes, zero-filled (test memory).
    public init(anonymous length: Int) throws(Errno) {
        // SAFETY: mmap either fails or returns `length` bytes that this object owns until deinit.
        guard length > 0 else { throw .invalidArgument }
        let address = unsafe mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        guard let address = unsafe address, unsafe address != MAP_FAILED else { throw Errno.current }
        unsafe self.base = unsafe address
        self.length = length
    }

    deinit {
        // SAFETY: unmaps what init mapped, once: whoever holds a pointer into it also holds this object.
        unsafe munmap(base, length)
    }
}

/// Creates an anonymous memory file, as a VMM backs guest RAM. The corresponding C function is `memfd_create`.
public func makeMemoryFile(name: String, size: Int) throws(Errno) -> OwnedFD {
    // SAFETY: the name's C string lives for the call.
    let fd = try valueOrErrno { unsafe cvfs_memfd_create(name, CVFS_MFD_CLOEXEC) }
    let owned = OwnedFD(taking: fd)
    try nothingOrErrno { ftruncate(owned.rawValue, off_t(size)) }
    return owned
}
