// SPDX-License-Identifier: Apache-2.0

import Synchronization
import VFSSystem

/// Why a device's state could not be saved or taken up.
public struct DeviceStateError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A device whose internal state moves with the guest in a live migration (VHOST_USER_PROTOCOL_F_DEVICE_STATE).
public protocol DeviceStateTransfer: AnyObject, Sendable {
    /// The device's state, with every queue stopped (the source, at switch-over).
    func saveState() throws(DeviceStateError) -> [UInt8]
    /// Takes up a state `saveState` made elsewhere (the destination, before its queues start). The bytes come
    /// from the front-end, from another host: they are checked like any input.
    func loadState(_ state: [UInt8]) throws(DeviceStateError)
    /// The most bytes of state taken in: a longer stream is refused, not read to its end.
    var maxStateSize: Int { get }
}

/// VHOST_USER_TRANSFER_STATE_DIRECTION_*.
public enum DeviceStateDirection: UInt32, Sendable {
    case save = 0
    case load = 1
}

/// One transfer of device state over the descriptor of SET_DEVICE_STATE_FD, on a thread of its own: the
/// front-end reads (or writes) the other end only after the reply, so the control thread cannot do it. A
/// front-end that stops reading or writing for `stallMilliseconds` ends the transfer with an error, so that
/// CHECK_DEVICE_STATE, which waits for it, never waits for ever.
final class DeviceStateJob: Sendable {
    static var stallMilliseconds: CInt { VhostUserHandler.deviceStateStallMilliseconds }

    let direction: DeviceStateDirection
    private let thread: SystemThread
    private let outcome = Outcome()

    private final class Outcome: Sendable {
        let value = Mutex<Result<[UInt8], DeviceStateError>?>(nil)
    }

    private final class Channel: Sendable {
        let fd: OwnedFD
        init(_ fd: consuming OwnedFD) { self.fd = fd }
    }

    /// Writes `state` to `fd`, then closes it (the end of the stream).
    init(writing state: [UInt8], to fd: consuming OwnedFD) throws(Errno) {
        direction = .save
        let channel = Channel(fd)
        let outcome = self.outcome
        thread = try SystemThread(name: "state-save") {
            outcome.value.withLock { $0 = Self.write(state, to: channel.fd.borrowed) }
        }
    }

    /// Reads `fd` to its end, at most `limit` bytes.
    init(readingFrom fd: consuming OwnedFD, limit: Int) throws(Errno) {
        direction = .load
        let channel = Channel(fd)
        let outcome = self.outcome
        thread = try SystemThread(name: "state-load") {
            outcome.value.withLock { $0 = Self.read(channel.fd.borrowed, limit: limit) }
        }
    }

    /// Waits for the transfer to end; the bytes read (loading), or an empty array (saving).
    func finish() -> Result<[UInt8], DeviceStateError> {
        thread.join()
        return outcome.value.withLock { $0 ?? .failure(DeviceStateError("the transfer did not end")) }
    }

    private static func write(_ state: [UInt8], to fd: FileDescriptor) -> Result<[UInt8], DeviceStateError> {
        // SAFETY: each write reads bytes inside `state`, from `done` to its end.
        var done = 0
        while done < state.count {
            guard fd.wait(writable: true, milliseconds: stallMilliseconds) else {
                return .failure(DeviceStateError("the front-end read nothing for \(stallMilliseconds / 1000) s"))
            }
            let written = unsafe state.withUnsafeBytes { (raw) -> Result<Int, Errno> in
                unsafe Result { () throws(Errno) -> Int in try unsafe fd.write(UnsafeRawBufferPointer(rebasing: raw[done...])) }
            }
            switch written {
            case .success(let n): done += n
            case .failure(let error) where error == .interrupted || error == .wouldBlock: continue
            case .failure(let error): return .failure(DeviceStateError("writing the state: \(error)"))
            }
        }
        return .success([])
    }

    private static func read(_ fd: FileDescriptor, limit: Int) -> Result<[UInt8], DeviceStateError> {
        // SAFETY: each read writes into the unused capacity of the local chunk.
        var state: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            guard fd.wait(writable: false, milliseconds: stallMilliseconds) else {
                return .failure(DeviceStateError("the front-end sent nothing for \(stallMilliseconds / 1000) s"))
            }
            let read = unsafe chunk.withUnsafeMutableBytes { (raw) -> Result<Int, Errno> in
                unsafe Result { () throws(Errno) -> Int in try unsafe fd.read(into: raw) }
            }
            let n: Int
            switch read {
            case .success(let count): n = count
            case .failure(let error) where error == .interrupted || error == .wouldBlock: continue
            case .failure(let error): return .failure(DeviceStateError("reading the state: \(error)"))
            }
            if n == 0 { return .success(state) }
            guard state.count + n <= limit else {
                return .failure(DeviceStateError("the state is longer than \(limit) bytes"))
            }
            state.append(contentsOf: chunk[0..<n])
        }
    }
}
