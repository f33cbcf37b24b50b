// Package shoal holds the domain types of Shoal — Spec, Service, Job, Node,
// Slot, Instance, Record, Revision — and the loader that reads and validates
// a tree of spec files against the embedded CUE schema (specs.cue).
//
// Subpackages implement the pieces and depend on this package only:
// gitsync (specs from Git), placement (who runs what), runtime (containerd),
// mesh (gossip, DNS, balancing). cmd/shoal wires them together.
package shoal
