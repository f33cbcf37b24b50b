//go:build linux

package runtime

import (
	"os"
	"os/exec"
	"strings"
	"sync"

	"github.com/containerd/containerd/contrib/apparmor"
)

var appArmorOnce = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/sys/module/apparmor/parameters/enabled")
	if err != nil || !strings.HasPrefix(string(b), "Y") {
		return false
	}
	if _, err := exec.LookPath("apparmor_parser"); err != nil {
		return false
	}
	return apparmor.LoadDefaultProfile(appArmorProfile) == nil
})

// appArmorReady loads Shoal's profile once, if the host enforces AppArmor.
func appArmorReady() bool { return appArmorOnce() }
