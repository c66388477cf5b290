// SPDX-License-Identifier: Apache-2.0

import VFSSystem

/// Transport and protocol failures. Each ends the connection with one log line; none reaches the guest.
public enum VhostUserError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The socket failed.
    case io(Errno)
    /// The front-end closed the connection in the middle of a message.
    case truncatedMessage
    /// A request number this back-end does not know or does not serve.
    case unknownRequest(UInt32)
    /// A header whose version bits are not 1.
    case badVersion(flags: UInt32)
    /// A payload too large to be any request's.
    case payloadTooLarge(UInt32)
    /// A payload of the wrong size for its request.
    case badPayloadSize(VhostUserRequest, UInt32)
    /// The wrong number of descriptors for the request.
    case badDescriptorCount(VhostUserRequest, Int)
    /// A queue index past the queues this back-end offers.
    case badQueueIndex(VhostUserRequest, UInt32)
    /// A request the current state does not allow, or with values it cannot use.
    case invalid(VhostUserRequest, String)

    public var description: String {
        switch self {
        case .io(let errno): "socket error: \(errno)"
        case .truncatedMessage: "the front-end closed the connection in the middle of a message"
        case .unknownRequest(let n): "unknown or unsupported request \(n)"
        case .badVersion(let flags): "bad protocol version in flags 0x\(String(flags, radix: 16))"
        case .payloadTooLarge(let size): "payload of \(size) bytes is too large"
        case .badPayloadSize(let request, let size): "\(request): payload of \(size) bytes has the wrong size"
        case .badDescriptorCount(let request, let count): "\(request): \(count) descriptors attached"
        case .badQueueIndex(let request, let index): "\(request): no queue \(index)"
        case .invalid(let request, let why): "\(request): \(why)"
        }
    }
}
