package runtime

import (
	"slices"

	"github.com/containerd/containerd/contrib/apparmor"
	"github.com/containerd/containerd/contrib/seccomp"
	"github.com/containerd/containerd/oci"

	"github.com/shoal-run/shoal"
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

// securityOpts are the spec options a service's security settings ask
// for. They come before hardening, whose seccomp profile is computed from
// the capabilities left. The schema allows adding only a fixed set.
func securityOpts(sec *shoal.Security) []oci.SpecOpts {
	if sec == nil {
		return nil
	}
	var opts []oci.SpecOpts
	if sec.ReadOnly {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	if sec.User != "" {
		opts = append(opts, oci.WithUser(sec.User))
	}
	if slices.Contains(sec.CapDrop, "ALL") {
		opts = append(opts, oci.WithCapabilities(nil))
	} else if len(sec.CapDrop) > 0 {
		opts = append(opts, oci.WithDroppedCapabilities(sec.CapDrop))
	}
	if len(sec.CapAdd) > 0 {
		opts = append(opts, oci.WithAddedCapabilities(sec.CapAdd))
	}
	return opts
}
