// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// The few file operations the fuzz driver needs, without Foundation.
public enum FileManagerless {
    /// A line to standard error, unbuffered (it must be out before a crash).
    public static func log(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }

    public static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buffer, buffer.count) != nil else { return "." }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }

    public static func makeDirectory(_ path: String) { mkdir(path, 0o755) }

    /// `path` itself if it is a file, else the files in it (not recursively), sorted.
    public static func files(at path: String) -> [String] {
        guard isDirectory(path) else { return [path] }
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append("\(path)/\(name)") }
        }
        return names.sorted()
    }

    public static func write(_ data: [UInt8], to path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    public static func contents(of path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            data += buffer[0..<n]
        }
        return data
    }
}

/// Shuts the process into a mount namespace where only the named directories are writable.
public enum FuzzConfinement {
    /// - Parameter scratch: becomes a 64 MiB tmpfs of this process's own, so that a fallocate of a terabyte
    ///   fills that, not the host's disk (which other tests, and guests, share).
    public static func confine(writable: [String], scratch: String) -> Bool {
        let pointers = writable.map { strdup($0) }
        defer { pointers.forEach { free($0) } }
        let constPointers = pointers.map { UnsafePointer($0) }
        return constPointers.withUnsafeBufferPointer { cvfs_fuzz_confine($0.baseAddress, $0.count, scratch, 64) } == 0
    }
}
