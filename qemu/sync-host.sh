# SPDX-License-Identifier: Apache-2.0
#
# Sourced by the scripts that boot guests (run-guest, run-debian), for their --sync CMD: the guest's job prints
# "@@SYNC TAG" on its output port (request-counter's count_host TAG) and waits for a line on a third serial port
# (ttyS2); the host follows the output as it comes, runs CMD TAG, and answers. So a command on the host (a scrape
# of the daemon's statistics, say) sees the back-end between two steps of the guest's work, with nothing in flight.
# The wait costs about 25 ms a sync under TCG.

# sync_host_start WORK OUTPUT-LOG CMD: starts the follower of OUTPUT-LOG (followed by name: a boot that starts
# again writes a new one) and sets sync_qemu_args, the serial port to give QEMU, and sync_host_pids, what to kill
# at the end. CMD's output goes to WORK/sync.log.
sync_host_start() {
    local work=$1 output=$2 cmd=$3
    mkfifo "$work/sync.in" "$work/sync.out" "$work/sync.lines"
    # QEMU's pipe chardev reads sync.in (what the guest receives) and writes sync.out, which the guest never uses.
    sync_qemu_args=(-serial "pipe:$work/sync")
    tail -s 0.02 -n +1 -F "$output" > "$work/sync.lines" 2>/dev/null &
    sync_host_pids=$!
    while IFS= read -r line; do
        line=${line%$'\r'}
        case "$line" in
            "@@SYNC "*)
                # shellcheck disable=SC2086 # CMD may carry its own arguments
                $cmd "${line#@@SYNC }" >> "$work/sync.log" 2>&1 || echo "sync: the command failed for ${line#@@SYNC }" >&2
                echo go > "$work/sync.in" ;;
        esac
    done < "$work/sync.lines" &
    sync_host_pids="$sync_host_pids $!"
}
