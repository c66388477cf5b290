// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// `<socket-path>.pid`, locked for as long as the daemon lives: a second daemon started on the same socket
/// path finds it locked and refuses to start, instead of silently taking the first one's socket (as virtiofsd).
public enum PidFile {
    public struct Busy: Error, CustomStringConvertible {
        public let description: String
    }

    /// Opens, locks and fills `path` with this process's pid. The lock lasts until the process (and a child it
    /// forks) exits: its descriptor is kept open on purpose, close-on-exec. A path that is a symlink, not a
    /// regular file, or someone else's is refused: the directory may be shared with other users (/tmp).
    public static func acquire(_ path: String) throws(Busy) {
        // SAFETY: pread and pwrite use local arrays of the counts given; the path's C string lives for open.
        let flags = O_RDWR | O_CREAT | CVFS_O_CLOEXEC | CVFS_O_NOFOLLOW
        let raw = unsafe open(path, flags, 0o600)
        guard raw >= 0 else { throw Busy(description: "cannot open \(path): \(Errno.current)") }
        let fd = OwnedFD(taking: raw)
        guard let info = try? fd.borrowed.stat(), info.fileType == .regular, info.uid == geteuid() else {
            throw Busy(description: "\(path) is not a regular file of this user's: refusing to use it")
        }
        guard cvfs_flock(fd.rawValue, LOCK_EX | LOCK_NB) == 0 else {
            let error = Errno.current
            var text = [UInt8](repeating: 0, count: 32)
            let n = unsafe pread(fd.rawValue, &text, text.count - 1, 0)
            let holder = n > 0 ? String(decoding: text[0..<n].filter { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self) : "?"
            if error == .wouldBlock {
                throw Busy(description: "another daemon (pid \(holder)) holds \(path): its socket is in use")
            }
            throw Busy(description: "cannot lock \(path): \(error)")
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd.rawValue, 0)
        _ = unsafe pwrite(fd.rawValue, text, text.count, 0)
        _ = fd.release()
    }
}
