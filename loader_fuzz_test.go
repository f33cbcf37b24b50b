package shoal_test

import (
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/shoal-run/shoal"
)

// FuzzLoadSpec feeds arbitrary bytes to the loader as each file type. The
// loader must return a spec or an error, never panic.
func FuzzLoadSpec(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "specs", "*", "*", "*"))
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		for ext := uint8(0); ext < 3; ext++ {
			f.Add(data, ext)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, ext uint8) {
		name := []string{"f.yaml", "f.json", "f.cue"}[ext%3]
		spec, err := shoal.LoadSpec(fstest.MapFS{name: {Data: data}}, ".")
		if err == nil && spec.Hash == "" {
			t.Fatal("valid spec without a hash")
		}
	})
}

// FuzzParseBytes checks ParseBytes against exact arithmetic: it accepts
// only what fits in an int64, never returns a negative size, and agrees
// with big.Rat on every value it accepts.
func FuzzParseBytes(f *testing.F) {
	for _, s := range []string{"256Mi", "1.5Gi", "0", "8388608Ti", "8388607Ti", "9223372036854775807",
		"9223372036854775808", "1e3", "inf", "NaN", "-1", "0.0000001Ki", " 12M ", "1.5", "99999999999999999999T"} {
		f.Add(s)
	}
	mults := map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := shoal.ParseBytes(s)
		if err != nil {
			if b != 0 {
				t.Fatalf("ParseBytes(%q) = %d with error %v", s, b, err)
			}
			return
		}
		if b < 0 {
			t.Fatalf("ParseBytes(%q) = %d, negative", s, b)
		}
		num, mult := strings.TrimSpace(s), int64(1)
		for suffix, m := range mults {
			if strings.HasSuffix(num, suffix) && (len(suffix) == 2 || !strings.HasSuffix(num, "i")) {
				num, mult = strings.TrimSuffix(num, suffix), m
				break
			}
		}
		r, ok := new(big.Rat).SetString(num)
		if !ok {
			t.Fatalf("ParseBytes(%q) = %d, but %q is not a number", s, b, num)
		}
		r.Mul(r, new(big.Rat).SetInt64(mult))
		want := new(big.Int).Quo(r.Num(), r.Denom())
		if want.Cmp(big.NewInt(int64(b))) != 0 {
			t.Fatalf("ParseBytes(%q) = %d, want %s", s, b, want)
		}
	})
}
