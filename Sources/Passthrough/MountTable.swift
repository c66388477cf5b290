// SPDX-License-Identifier: Apache-2.0

import Synchronization
import VFSSystem

/// One descriptor per host mount that file handles were taken on, for open_by_handle_at (which takes no
/// `O_PATH` descriptor: these are directories opened for reading). Kept for the life of the file system; each
/// node held by handle keeps a reference to its mount, so no request looks this table up.
public final class MountTable: Sendable {
    public final class Mount: Sendable {
        let fd: OwnedFD
        init(fd: consuming OwnedFD) { self.fd = fd }
    }

    private let mounts = Mutex<[Int32: Mount]>([:])

    /// The descriptor for `mountID`; the first time, `open` makes one (a directory on that mount, opened for
    /// reading), and may fail when the file at hand is not a directory.
    func descriptor(for mountID: Int32, open: () throws(Errno) -> OwnedFD) throws(Errno) -> Mount {
        if let known = mounts.withLock({ $0[mountID] }) { return known }
        let mount = Mount(fd: try open())
        return mounts.withLock { mounts in
            if let raced = mounts[mountID] { return raced }
            mounts[mountID] = mount
            return mount
        }
    }
}
