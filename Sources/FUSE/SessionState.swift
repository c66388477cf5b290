// SPDX-License-Identifier: Apache-2.0

/// Why a FUSE session's state could not be saved or taken up (live migration).
public struct MigrationError: Error, Sendable, CustomStringConvertible {
    public let description: String
    /// The file is gone from the host (no name left), rather than not found for another reason.
    public let deleted: Bool
    public init(_ description: String, deleted: Bool = false) {
        self.description = description
        self.deleted = deleted
    }
}

/// Appends the fields of a saved session, little-endian, lengths before bytes.
public struct StateWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init() {}

    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func i32(_ value: Int32) { u32(UInt32(bitPattern: value)) }
    /// A length (u32) and the bytes.
    public mutating func data(_ value: [UInt8]) {
        u32(UInt32(value.count))
        bytes.append(contentsOf: value)
    }
}

/// Reads the fields of a saved session from bytes that come from elsewhere (another host, through the
/// front-end): every read is checked against what is left, and a count is checked against the bytes it
/// needs before anything is made for it.
public struct StateReader: Sendable {
    let bytes: [UInt8]
    public private(set) var position = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remaining: Int { bytes.count - position }
    public var isAtEnd: Bool { position == bytes.count }

    mutating func take(_ count: Int) throws(MigrationError) -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else {
            throw MigrationError("the state ends early (\(count) bytes wanted at \(position), \(remaining) left)")
        }
        defer { position += count }
        return bytes[position..<position + count]
    }

    public mutating func u8() throws(MigrationError) -> UInt8 { try take(1).first! }

    public mutating func u32() throws(MigrationError) -> UInt32 {
        try take(4).reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    public mutating func u64() throws(MigrationError) -> UInt64 {
        try take(8).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    public mutating func i32() throws(MigrationError) -> Int32 { Int32(bitPattern: try u32()) }

    /// Bytes written by `StateWriter.data`, at most `limit` of them.
    public mutating func data(limit: Int) throws(MigrationError) -> [UInt8] {
        let count = Int(try u32())
        guard count <= limit else { throw MigrationError("a field of \(count) bytes where at most \(limit) fit") }
        return Array(try take(count))
    }

    /// A count of records, each at least `minimumSize` bytes: more than the bytes left can hold is an error.
    public mutating func count(minimumSize: Int) throws(MigrationError) -> Int {
        let count = try u64()
        guard count <= UInt64(remaining / max(minimumSize, 1)) else {
            throw MigrationError("\(count) records of at least \(minimumSize) bytes do not fit in the \(remaining) bytes left")
        }
        return Int(count)
    }
}

/// A file system whose session (the nodes and open files the guest holds) can move to another daemon.
public protocol MigratableFileSystem: FileSystem {
    /// Appends the session's state. Every queue is stopped: nothing changes meanwhile.
    func saveState(into writer: inout StateWriter) throws(MigrationError)
    /// Takes up a session another daemon saved; on error the caller drops whatever was taken up.
    func loadState(from reader: inout StateReader) throws(MigrationError)
}

extension FUSEServer where FS: MigratableFileSystem {
    /// "SVFS" then the format version.
    static var stateMagic: UInt32 { 0x5346_5653 }
    static var stateVersion: UInt32 { 1 }

    /// The session's state: the agreed protocol, then the file system's.
    public func saveState() throws(MigrationError) -> [UInt8] {
        var writer = StateWriter()
        writer.u32(Self.stateMagic)
        writer.u32(Self.stateVersion)
        writer.u32(negotiatedMinor.load(ordering: .acquiring))
        writer.u64(negotiatedFlags.load(ordering: .relaxed))
        if isInitialized { try fileSystem.saveState(into: &writer) }
        return writer.bytes
    }

    /// Takes up a session saved by `saveState` (the destination of a migration, before its queues start). A
    /// session open here already is dropped first; on error nothing of the new one stays.
    public func loadState(_ bytes: [UInt8]) throws(MigrationError) {
        var reader = StateReader(bytes)
        guard try reader.u32() == Self.stateMagic else { throw MigrationError("not a swift-virtiofsd session state") }
        let version = try reader.u32()
        guard version == Self.stateVersion else { throw MigrationError("state format \(version); this daemon reads \(Self.stateVersion)") }
        let minor = try reader.u32()
        let flags = try reader.u64()
        guard minor == 0 || (Self.minimumMinor...Self.kernelMinor).contains(minor) else {
            throw MigrationError("FUSE 7.\(minor) is not a version this daemon agrees")
        }
        reset()
        guard minor != 0 else {
            guard reader.isAtEnd else { throw MigrationError("\(reader.remaining) bytes after a session that had not started") }
            return
        }
        do throws(MigrationError) {
            try fileSystem.loadState(from: &reader)
            guard reader.isAtEnd else { throw MigrationError("\(reader.remaining) bytes left over at the end") }
        } catch {
            fileSystem.destroy()
            throw error
        }
        negotiatedFlags.store(flags, ordering: .relaxed)
        negotiatedMinor.store(minor, ordering: .releasing)
        logger.info("FUSE session taken up from a migration: 7.\(minor), flags 0x\(String(flags, radix: 16))\(fileSystem.census.map { "; \($0)" } ?? "")")
    }
}
