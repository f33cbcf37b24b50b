package runtime

import (
	"github.com/containerd/containerd/contrib/apparmor"
	"github.com/containerd/containerd/contrib/seccomp"
	"github.com/containerd/containerd/oci"
)

// droppedCaps are taken from containerd's default set: NET_RAW lets a
// process forge packets (ARP and DNS spoofing on the bridge, or reaching
// the node's loopback around the filter rules).
var droppedCaps = []string{"CAP_NET_RAW"}

// appArmorProfile is the profile containers run under where the host
// enforces AppArmor.
const appArmorProfile = "shoal-default"

// hardening are the spec options every container gets: fewer
// capabilities, containerd's default seccomp profile (computed from the
// capabilities left, so it comes after them), no privilege gain through
// setuid binaries, a pids limit, and AppArmor where the host has it.
// Privileged mode is never offered.
func hardening(pids int64) []oci.SpecOpts {
	opts := []oci.SpecOpts{
		oci.WithDroppedCapabilities(droppedCaps),
		oci.WithNoNewPrivileges,
		oci.WithPidsLimit(pids),
		seccomp.WithDefaultProfile(),
	}
	if appArmorReady() {
		opts = append(opts, apparmor.WithDefaultProfile(appArmorProfile))
	}
	return opts
}
