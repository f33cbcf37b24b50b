package shoal_test

import (
	"os"
	"path/filepath"
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
