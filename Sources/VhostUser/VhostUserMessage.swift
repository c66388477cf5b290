// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import VFSSystem

/// One message as read from the socket: header, payload and the descriptors that came with it.
public struct VhostUserMessage: Sendable {
    public var request: UInt32
    public var flags: UInt32
    public var payload: [UInt8]
    public var fds: ReceivedFDs

    public init(request: UInt32, flags: UInt32, payload: [UInt8], fds: ReceivedFDs = ReceivedFDs([])) {
        self.request = request
        self.flags = flags
        self.payload = payload
        self.fds = fds
    }

    /// Reads a C struct from the payload, which must be exactly its size.
    func decode<T>(_ type: T.Type, for request: VhostUserRequest) throws(VhostUserError) -> T {
        // SAFETY: loads only when the payload is exactly the struct's size.
        guard payload.count == MemoryLayout<T>.size else {
            throw .badPayloadSize(request, UInt32(payload.count))
        }
        return unsafe payload.withUnsafeBytes { unsafe $0.loadUnaligned(as: T.self) }
    }

    /// Reads the payload as one u64.
    func decodeU64(for request: VhostUserRequest) throws(VhostUserError) -> UInt64 {
        UInt64(littleEndian: try decode(UInt64.self, for: request))
    }
}

/// The socket to the front-end.
public struct VhostUserConnection: ~Copyable, Sendable {
    /// Largest payload accepted: SET_MEM_TABLE with 8 regions is 264 bytes; config space is at most 256.
    public static let maxPayload: UInt32 = 4096

    public let socket: OwnedFD

    public init(socket: consuming OwnedFD) { self.socket = socket }

    /// Reads the next message; nil when the front-end closed the connection between messages.
    public func receive() throws(VhostUserError) -> VhostUserMessage? {
        // SAFETY: receives into the local header, never past its size, then into a payload array of exactly `size`
        // bytes.
        var header = cvfs_vhost_user_header()
        let headerSize = MemoryLayout<cvfs_vhost_user_header>.size
        var received = 0
        var fds = ReceivedFDs([])
        // The descriptors arrive with the first byte of the header.
        try unsafe withUnsafeMutableBytes(of: &header) { (raw) throws(VhostUserError) in
            while received < headerSize {
                let result: (count: Int, fds: ReceivedFDs, truncated: Bool)
                do throws(Errno) {
                    result = try unsafe UnixSocket.receive(socket.borrowed, into: UnsafeMutableRawBufferPointer(rebasing: raw[received...]))
                } catch {
                    throw .io(error)
                }
                if result.count == 0 {
                    if received == 0 { return }
                    throw .truncatedMessage
                }
                if !result.fds.isEmpty {
                    if received > 0 || !fds.isEmpty { throw .badDescriptorCount(.setMemTable, result.fds.count) }
                    fds = result.fds
                }
                received += result.count
            }
        }
        if received == 0 { return nil }
        let request = UInt32(littleEndian: header.request)
        let flags = UInt32(littleEndian: header.flags)
        let size = UInt32(littleEndian: header.size)
        guard flags & VhostUserFlags.versionMask == VhostUserFlags.version else { throw .badVersion(flags: flags) }
        guard size <= Self.maxPayload else { throw .payloadTooLarge(size) }
        var payload = [UInt8](repeating: 0, count: Int(size))
        if size > 0 {
            let fd = socket.borrowed
            let result = unsafe payload.withUnsafeMutableBytes { raw in
                Result { () throws(Errno) -> Bool in try unsafe UnixSocket.receiveExactly(fd, into: raw) }
            }
            switch result {
            case .success(true): break
            case .success(false): throw .truncatedMessage
            case .failure(let error): throw error == .protocolError ? .truncatedMessage : .io(error)
            }
        }
        return VhostUserMessage(request: request, flags: flags, payload: payload, fds: fds)
    }

    /// Sends a reply to `request` carrying `payload`.
    public func reply(to request: UInt32, payload: [UInt8]) throws(VhostUserError) {
        try send(request: request, flags: VhostUserFlags.version | VhostUserFlags.reply, payload: payload)
    }

    /// Sends a message (a reply, or a request when we play the front-end in tests and the load generator).
    public func send(request: UInt32, flags: UInt32, payload: [UInt8], fds: [CInt] = []) throws(VhostUserError) {
        // SAFETY: copies the local header into an array sized for header and payload; the shim reads that array during
        // the call.
        var header = cvfs_vhost_user_header(
            request: request.littleEndian, flags: flags.littleEndian, size: UInt32(payload.count).littleEndian)
        var bytes = [UInt8](repeating: 0, count: MemoryLayout<cvfs_vhost_user_header>.size + payload.count)
        unsafe withUnsafeBytes(of: &header) { header in
            unsafe bytes.withUnsafeMutableBytes { unsafe $0.copyMemory(from: header) }
        }
        bytes.replaceSubrange(MemoryLayout<cvfs_vhost_user_header>.size..., with: payload)
        let fd = socket.borrowed
        let result = unsafe bytes.withUnsafeBytes { raw in
            Result { () throws(Errno) in try unsafe UnixSocket.send(fd, raw, fds: fds) }
        }
        if case .failure(let error) = result { throw .io(error) }
    }
}

/// Encodes a C struct or integer as payload bytes.
public func payloadBytes<T>(of value: T) -> [UInt8] {
    // SAFETY: copies the value's bytes into a new array.
    unsafe withUnsafeBytes(of: value) { unsafe Array($0) }
}
