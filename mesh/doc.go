// Package mesh is how the nodes of a fleet know each other and each
// other's services, with no server: Serf membership, gossiped service
// records, DNS, and a local load balancer on every node.
//
// Membership (Mesh): every node runs a Serf agent. Its tags carry small
// facts — allocatable CPU and memory, labels, API port, the Git revision it
// runs and a digest of its records — within Serf's 512-byte tag limit
// (New refuses configs that would overflow). Nodes is the placement input.
// Failure detection defaults were measured on loopback: probe 200 ms,
// timeout 100 ms, suspicion ×2 and gossip 50 ms detect a hard stop in
// about a second.
//
// Reconnection (rejoin.go, timers.go): no partition or outage is too long
// to heal. Serf remembers a failed member for ReconnectTimeout (24 h) and
// retries it; a rejoin loop also tries the --join seeds and every member
// this node has known, at its last address, whenever one is not alive,
// with jittered backoff. Known members are kept in Config.PeersFile
// across restarts. A member may come back at a new address under its
// name once its old entry is dead; a live member's name stays refused
// from any other address. timers.go names every timer and its reason.
//
// Records: SetLocalRecords publishes this node's instances. The change
// reaches peers as a user event carrying the set when it fits (Serf drops
// events larger than one packet), and always as a new digest in the tags.
// A peer whose held digest for a node differs pulls the full set through
// chunked Serf queries; the same check, every second, is the anti-entropy
// that heals a lost event. Records of a failed or departed member are
// dropped the moment Serf reports it.
//
// DNS answers <service>.service.shoal (A/AAAA of nodes with healthy
// instances), _<port>._tcp.<service>.service.shoal (SRV), <node>.node.shoal
// and <service>.shoal (this node's balancer, stable while replicas move),
// with NXDOMAIN and NODATA kept apart, short TTLs, and truncation with TCP
// fallback; other names go to the host's resolvers.
//
// Balancer listens on every service port and forwards each connection to a
// healthy instance — local ones first, then the less busy of two random
// choices — retrying another instance when a connect fails. Its per-service
// counters (connections, bytes, new connections per second) feed metrics.
package mesh
