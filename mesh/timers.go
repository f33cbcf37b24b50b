package mesh

import "time"

// The timers that govern failure, reaping and reconnection, in one place.
// Every one has a reason for its value; the agent flag that changes it,
// where there is one, is named. A partition of any length heals: nothing
// in this table makes a node give up on a peer it knew.
//
//	timer                        value   flag                   governs
//	---------------------------  ------  ---------------------  ----------------------------------------------
//	DefaultProbeInterval         200ms   -                      how often a member is probed (memberlist)
//	DefaultProbeTimeout          100ms   -                      how long a probe waits for its ack
//	DefaultSuspicionMult         2       -                      suspicion time, in probe intervals × log(N)
//	DefaultGossipInterval        50ms    -                      how often gossip is sent
//	PushPullInterval             5s      -                      full state exchange with one random member
//	DefaultRestartGrace          15s     -                      a pausing (restarting) member keeps its slots
//	DefaultReconnectInterval     2s      -                      Serf tries a failed member again (random one)
//	DefaultReconnectTimeout      24h     --reconnect-timeout    Serf reaps a failed member
//	DefaultTombstoneTimeout      1m      --tombstone-timeout    Serf reaps a member that left
//	DeadNodeReclaimTime          3s      -                      a dead member's name may come from a new address
//	RejoinMinInterval            1s      -                      first retry of the rejoin loop, and its check
//	DefaultRejoinMaxInterval     5s      --rejoin-max-interval  the rejoin loop's backoff ceiling
//
// Why these values:
//
//   - Probe, timeout, suspicion and gossip were measured on loopback
//     (FINDINGS.md): a hard stop is detected in about 0.7 s, so a dead
//     node's slots move within a second or two.
//   - PushPullInterval: a member that missed the gossip of others' joins
//     learns of them only by a full exchange, every 30 s by memberlist's
//     default (49 s measured once); 5 s bounds that window. It is also
//     how a renumbered node that restarted before its peers saw it fail
//     gets its new address believed (see DeadNodeReclaimTime).
//   - RestartGrace: an agent restart (binary upgrade) takes a few
//     seconds; 15 s covers it with room, while a crash gives no notice and
//     moves at once.
//   - ReconnectInterval: Serf's reconnect loop is what merges a healed
//     partition while the failed members are still remembered. 2 s (Serf's
//     default is 30 s) lets a heal merge within a few seconds.
//   - ReconnectTimeout: how long a failed member is remembered, and its
//     last records kept out of use. Serf's default, 24 h, is kept: edge
//     links go down for hours. Beyond it, the rejoin loop still tries the
//     member at its last address (persisted under --data-dir), so even a
//     longer partition heals; the timeout only bounds memory.
//   - TombstoneTimeout: a member that left on purpose is remembered as
//     left for this long, so a stale alive message cannot revive it. One
//     minute is far longer than any gossip round; the rejoin loop does not
//     chase members that left.
//   - DeadNodeReclaimTime: without it memberlist never lets a failed
//     member's name come back from another address, so a node renumbered
//     by DHCP could never rejoin. A live member's name is still refused
//     from any other address (mergeGuard); 3 s is longer than a
//     failure-detection round, so a flapping member is not mistaken for a
//     new one.
//   - RejoinMinInterval and RejoinMaxInterval: the rejoin loop tries the
//     --join seeds and every known member that is not alive whenever it
//     sees fewer live members than it knows; the delay doubles from 1 s up
//     to the ceiling, with jitter so a site whose nodes all return at once
//     does not storm the seeds. 5 s keeps the heal of a partition older
//     than ReconnectTimeout within seconds (with N nodes trying at random
//     phases, the first try after the link returns comes in roughly
//     3.75 s / (N+1) on average); a member gone for good costs each node
//     one TCP connection attempt every 2.5-5 s, which is nothing.
//
// Outside this package: --handoff-timeout (default 30 s) bounds how long
// a moved slot's old copy waits for its new copy to be healthy
// (make-before-break), and the agent waits at most 10 s (joinWait) for a
// first join before planning alone.
const (
	DefaultProbeInterval     = 200 * time.Millisecond
	DefaultProbeTimeout      = 100 * time.Millisecond
	DefaultSuspicionMult     = 2
	DefaultGossipInterval    = 50 * time.Millisecond
	PushPullInterval         = 5 * time.Second
	DefaultRestartGrace      = 15 * time.Second
	DefaultReconnectInterval = 2 * time.Second
	DefaultReconnectTimeout  = 24 * time.Hour
	DefaultTombstoneTimeout  = time.Minute
	DeadNodeReclaimTime      = 3 * time.Second
	RejoinMinInterval        = time.Second
	DefaultRejoinMaxInterval = 5 * time.Second
)

// rejoinDelay is the wait before rejoin attempt n (0 for the first retry):
// doubling from lo up to hi, then jittered into [d/2, d) by u, a uniform
// value in [0, 1). Pure, so the backoff is tested without a clock.
func rejoinDelay(n int, lo, hi time.Duration, u float64) time.Duration {
	d := lo
	for i := 0; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + time.Duration(u*float64(d/2))
}
