// Package runtime runs a node's share of the placement in containerd.
//
// The agent calls SetDesired with the slots this node should run; Run loops
// observe → health → Reconcile → execute:
//
//   - observe lists the containers of the runtime's containerd namespace
//     that carry Shoal labels (service, slot, spec hash, revision, ports)
//     and asks each task for its status. Labels are the only state: after
//     an agent restart the same containers are found and kept (adoption).
//   - health runs each service's check (http, tcp or exec) when due; a
//     service with ports and no check gets an implicit TCP check on its
//     first port, so "healthy" always means "serving".
//   - Reconcile is pure and table-tested: it sorts containers into Start,
//     Replace (the spec hash changed), Restart (exited or unhealthy, policy
//     allows, Backoff passed), Wait, Keep, Stop (not desired) and Done.
//   - execute applies those actions with bounded concurrency; a failure is
//     recorded on the instance and retried next round, never blocking other
//     slots. Images are pulled in the background per image, with backoff.
//
// Containers join the agent's network namespace (host networking) and get
// node-local host ports in PORT and SHOAL_PORT_<NAME>. Output goes straight
// from the shim to a log file per slot (cio.LogFile), rotated past a size
// cap while it runs (copy and truncate) and at restart. Instances reports
// what runs, for the mesh to publish.
//
// StartDaemon starts a private containerd (own config, root, state and
// socket) for machines that only have the packages installed, and for
// tests.
package runtime
