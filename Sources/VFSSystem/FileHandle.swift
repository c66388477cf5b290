// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// A kernel file handle (`name_to_handle_at`): names a file on its mount without holding a descriptor.
///
/// Kept compact, as a node held by handle keeps one for as long as the guest knows the file (a million of
/// them for a large tree): up to 16 bytes inline, which holds every ext4, XFS and tmpfs handle, and larger
/// ones (btrfs, overlayfs) in an array of their own. `struct file_handle` has room for MAX_HANDLE_SZ (128).
public struct KernelFileHandle: @unchecked Sendable {
    /// `handle_type`.
    let type: Int32
    /// The id of the mount the file is on.
    public let mountID: Int32
    /// The first 16 bytes of `f_handle` (zero past `byteCount`), when it has no more.
    let inline: (UInt64, UInt64)
    /// All of `f_handle`, when it is longer than 16 bytes.
    let spill: [UInt8]?
    /// `handle_bytes`.
    let byteCount: UInt8

    static let inlineCapacity = 16

    /// Compacts a handle the kernel filled in.
    init(_ full: borrowing cvfs_file_handle, mountID: Int32) {
        // SAFETY: reads the header and at most handle_bytes (clamped to the 128 bytes after it) of the local struct.
        let (count, type, inline, spill) = unsafe withUnsafeBytes(of: full) { (raw) -> (Int, Int32, (UInt64, UInt64), [UInt8]?) in
            let count = unsafe min(Int(raw.loadUnaligned(fromByteOffset: 0, as: UInt32.self)), raw.count - 8)
            let type = unsafe raw.loadUnaligned(fromByteOffset: 4, as: Int32.self)
            let bytes = unsafe UnsafeRawBufferPointer(rebasing: raw[8..<(8 + count)])
            guard count <= Self.inlineCapacity else { return unsafe (count, type, (0, 0), Array(bytes)) }
            var words: (UInt64, UInt64) = (0, 0)
            unsafe withUnsafeMutableBytes(of: &words) { unsafe $0.copyMemory(from: bytes) }
            return (count, type, words, nil)
        }
        self.type = type
        self.mountID = mountID
        self.inline = inline
        self.spill = spill
        self.byteCount = UInt8(count)
    }

    /// The handle as `struct file_handle`, for open_by_handle_at.
    func expanded() -> cvfs_file_handle {
        // SAFETY: writes the header and byteCount (at most 128) bytes into the local struct's 136.
        var full = cvfs_file_handle()
        unsafe withUnsafeMutableBytes(of: &full) { (raw) in
            unsafe raw.storeBytes(of: UInt32(byteCount), toByteOffset: 0, as: UInt32.self)
            unsafe raw.storeBytes(of: type, toByteOffset: 4, as: Int32.self)
            let target = unsafe UnsafeMutableRawBufferPointer(rebasing: raw[8...])
            if let spill {
                unsafe spill.withUnsafeBytes { unsafe target.copyMemory(from: $0) }
            } else {
                unsafe withUnsafeBytes(of: inline) { unsafe target.copyMemory(from: $0) }
            }
        }
        return full
    }
}

extension FileDescriptor {
    /// The file handle of the file this descriptor names. The corresponding C function is
    /// `name_to_handle_at(fd, "", AT_EMPTY_PATH)`.
    /// - Throws: EOPNOTSUPP where the file system has no handles.
    public func fileHandle() throws(Errno) -> KernelFileHandle {
        // SAFETY: the shim writes into this local handle (room for MAX_HANDLE_SZ bytes) and mount id during the call.
        var storage = cvfs_file_handle()
        var mountID: Int32 = 0
        try nothingOrErrno { unsafe cvfs_name_to_handle_at(rawValue, "", &storage, &mountID, CVFS_AT_EMPTY_PATH) }
        return KernelFileHandle(storage, mountID: mountID)
    }

    /// Opens the file `handle` names; this descriptor is any file on the same mount.
    /// The corresponding C function is `open_by_handle_at`.
    public func open(handle: KernelFileHandle, flags: OpenFlags) throws(Errno) -> OwnedFD {
        // SAFETY: the kernel reads the handle from this local copy during the call.
        var storage = handle.expanded()
        return OwnedFD(taking: try valueOrErrno { unsafe cvfs_open_by_handle_at(rawValue, &storage, flags.union(.closeOnExec).rawValue) })
    }
}
