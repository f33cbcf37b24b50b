package placement

// The hashing is fixed and platform-independent: every node of a fleet,
// whatever its architecture or Go version, must compute the same scores.

// hashString is 64-bit FNV-1a followed by a finalizer, so that names that
// differ in one byte land far apart.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return mix64(h)
}

// slotKey identifies slot i of the service whose name hashes to base.
func slotKey(base uint64, i int) uint64 {
	return mix64(base ^ (uint64(i)+1)*0x9e3779b97f4a7c15)
}

// mix64 is the murmur3 64-bit finalizer: a bijection with full avalanche.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
