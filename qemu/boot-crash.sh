# SPDX-License-Identifier: Apache-2.0
#
# Sourced by the scripts that boot guests. Under TCG a guest kernel now and then oopses in its own code while it
# boots (a trap in its code patching, a fault in sched_clock during the initcalls), which says nothing about the
# back-end; such a boot is tried again. Only a panic on a kernel oops counts ("Fatal exception"), never one that
# names a FUSE or virtio-fs function, a root that did not mount, or init dying.

# kernel_crashed_by_itself CONSOLE-LOG
kernel_crashed_by_itself() {
    tr -d '\r' < "$1" 2>/dev/null | grep -q "Kernel panic - not syncing: Fatal exception" \
        && ! tr -d '\r' < "$1" | grep -Eq "(fuse|virtio_fs|virtiofs)[a-z0-9_]*\+0x"
}
