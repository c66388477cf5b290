// SPDX-License-Identifier: Apache-2.0

/// Front-end requests (QEMU docs/interop/vhost-user.rst, "Front-end message types").
public enum VhostUserRequest: UInt32, Sendable, CaseIterable {
    case getFeatures = 1
    case setFeatures = 2
    case setOwner = 3
    case resetOwner = 4
    case setMemTable = 5
    case setLogBase = 6
    case setLogFD = 7
    case setVringNum = 8
    case setVringAddr = 9
    case setVringBase = 10
    case getVringBase = 11
    case setVringKick = 12
    case setVringCall = 13
    case setVringErr = 14
    case getProtocolFeatures = 15
    case setProtocolFeatures = 16
    case getQueueNum = 17
    case setVringEnable = 18
    case sendRARP = 19
    case netSetMTU = 20
    case setBackendReqFD = 21
    case iotlbMessage = 22
    case setVringEndian = 23
    case getConfig = 24
    case setConfig = 25
    case createCryptoSession = 26
    case closeCryptoSession = 27
    case postcopyAdvise = 28
    case postcopyListen = 29
    case postcopyEnd = 30
    case getInflightFD = 31
    case setInflightFD = 32
    case gpuSetSocket = 33
    case resetDevice = 34
    case vringKick = 35
    case getMaxMemSlots = 36
    case addMemReg = 37
    case remMemReg = 38
    case setStatus = 39
    case getStatus = 40
    case getSharedObject = 41
    case setDeviceStateFD = 42
    case checkDeviceState = 43
}

/// Header flag bits.
public enum VhostUserFlags {
    /// The protocol version, in the low two bits: always 1.
    public static let version: UInt32 = 0x1
    public static let versionMask: UInt32 = 0x3
    /// Set on replies from the back-end.
    public static let reply: UInt32 = 0x4
    /// The front-end wants a REPLY_ACK for this request.
    public static let needReply: UInt32 = 0x8
}

/// Virtio and vhost-user feature bits this back-end deals with.
public enum VirtioFeatures {
    /// VHOST_F_LOG_ALL: the back-end logs every write into guest memory (live migration).
    public static let logAll: UInt64 = 1 << 26
    public static let ringIndirectDescriptors: UInt64 = 1 << 28
    public static let ringEventIndex: UInt64 = 1 << 29
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    public static let protocolFeatures: UInt64 = 1 << 30
    public static let version1: UInt64 = 1 << 32
    /// VIRTIO_F_RING_PACKED: the queues are packed rings (virtio 1.2 §2.8).
    public static let ringPacked: UInt64 = 1 << 34
}

/// VHOST_USER_PROTOCOL_F_* bits.
public enum VhostUserProtocolFeatures {
    public static let multipleQueues: UInt64 = 1 << 0
    public static let logSharedMemory: UInt64 = 1 << 1
    public static let replyAck: UInt64 = 1 << 3
    public static let backendRequests: UInt64 = 1 << 5
    public static let config: UInt64 = 1 << 9
    public static let backendSendFD: UInt64 = 1 << 10
    public static let resetDevice: UInt64 = 1 << 13
    public static let configureMemSlots: UInt64 = 1 << 15
    public static let deviceState: UInt64 = 1 << 19
}

/// VHOST_VRING_F_LOG, in SET_VRING_ADDR's flags: log writes to this ring's used ring at its `log` address.
public enum VringAddressFlags {
    public static let log: UInt32 = 1
}
