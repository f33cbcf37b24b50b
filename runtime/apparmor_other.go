//go:build !linux

package runtime

func appArmorReady() bool { return false }
