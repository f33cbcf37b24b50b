// Package placement decides which node runs each replica (slot) of every
// service. It is pure — no I/O, no clock, no randomness, no dependence on
// map order — because every node of a fleet computes the placement on its
// own and they must all agree without talking to each other.
//
// # Scoring
//
// Weighted rendezvous (highest random weight) hashing: slot i of service s
// scores each node n with -w(n)/ln(u), where u in (0,1) comes from a fixed
// 64-bit hash of (s, i, n) and w(n) = cores + GiB/4 (see Weight). The node
// with the highest score wins, so a node twice as big wins about twice as
// often, and the choice for one slot depends only on that slot's scores.
//
// # Order and limits
//
// Services are taken by name and slots in ascending order. A slot goes to
// the best-scoring node that (1) carries the service's constraint labels
// and could hold one slot when empty (the nodes that "take a share"),
// (2) has the slot's CPU and memory left of its declared allocatable
// capacity, and (3) stays within its bounded share of the service.
//
// # Bounded shares
//
// Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam
// 2017): of a service with R replicas a node n holds at most
// ceil((1+ε)·R·w(n)/Σw) slots, Σw over the nodes that take a share, and at
// least floor(R·w(n)/Σw) (the floors hold back the last slots for nodes
// still below theirs). With spread set to a label, the bound and floor
// apply to each label value by its summed weight, and the node bound
// still applies. With no more replicas than sharing nodes and spread
// "node", the bound is one: replicas stay on distinct nodes. Bounds are
// compared in integers (weights in 1/1024ths) so every node agrees on
// exact shares. Bounds reports them.
//
// ε = 0. The ceiling already gives each node up to one slot of slack, and
// a service has a handful of replicas, so any ε > 0 lets a node take one
// slot more than its share (a 2 of a 3-node service of 4, leaving 2-2-0)
// and breaks the promise that equal nodes differ by at most one slot.
// The floors and bounds together make that promise hold: every node's
// count is its share rounded down or up. The price is churn on small
// fleets, below: we measured ε = 1/8 and 1/2 without floors at 1.2-1.5×
// on 5 nodes, better, but with a skew of 2 or more.
//
// Capacity can make a bound unreachable (no node within its share has
// room). The slot then exceeds a bound rather than go unplaced: first a
// node whose label value is within its bound, then any node within its own
// bound, then any node with room. A slot that fits nowhere is reported in
// Unplaced with the reason.
//
// # Movement
//
// Later slots reserve their top choices: a slot that cannot have its own
// top choice avoids them, to keep the chains that collisions force short.
// When every slot of a service sits alone on its top choice, removing a
// node moves exactly the slots it held, and adding one moves only the slots
// it now tops (the property tests check both). On a large fleet that is
// nearly always so; on a small one shares bind and a change of Σw moves
// more. TestChurn measures, with capacity to spare, the worst over the
// nodes leaving and over a small, middle and large node joining:
//
//	1,000 nodes, 1,000 services × 10 replicas: leave 1.00× the slots the
//	node held, join 0.93× the ideal w(new)/Σw.
//	5 nodes (weights 1,2,4,1,2), 400 services of 1-8 replicas, half by
//	zone: leave 1.86×, join 1.79×. Issue 22 asked for 1.3×; a stateless
//	plan with exact shares did not reach it in the schemes we tried
//	(global greedy by score: about 1.5×).
//
// # Cost
//
// Scoring every node for every slot is O(slots × nodes). The inner loop is
// kept to one hash mix and one compare per node: within a weight class the
// score is monotone in u, so the logarithm is taken once per class, not
// once per node. See BenchmarkPlan for the figures.
package placement
