// SPDX-License-Identifier: Apache-2.0

/// Ceilings on what a guest can make the FUSE server hold. Reaching one is an error for that request and one
/// log line, never a thread, a descriptor or memory more.
public enum FUSELimits {
    /// SETLKW requests waiting for their lock at once, over all queues: each waits on a thread of its own.
    /// Past it, SETLKW answers ENOLCK.
    public static let lockWaits = 256
}
