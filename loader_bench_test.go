package shoal_test

import (
	"fmt"
	"testing"
	"testing/fstest"

	"github.com/shoal-run/shoal"
)

// BenchmarkLoad1000 loads and validates 1,000 services in 1,000 files.
func BenchmarkLoad1000(b *testing.B) {
	fsys := fstest.MapFS{}
	for i := range 1000 {
		var data string
		switch i % 3 {
		case 0:
			data = fmt.Sprintf("name: svc-%d\nimage: img/svc:%d\nreplicas: %d\nresources: {cpu: 0.5, memory: 256Mi}\nports:\n  - name: http\n    port: %d\n    protocol: http\nhealth:\n  http: /healthz\n", i, i, i%7, 1000+i)
		case 1:
			data = fmt.Sprintf(`{"name": "svc-%d", "image": "img/svc:%d", "replicas": %d, "ports": [{"port": %d}], "constraints": {"zone": "a"}}`, i, i, i%7, 1000+i)
		default:
			data = fmt.Sprintf("name: \"svc-%d\"\nimage: \"img/svc:%d\"\nreplicas: %d\nspread: \"zone\"\nenv: {A: \"1\"}\n", i, i, i%7)
		}
		ext := []string{"yaml", "json", "cue"}[i%3]
		fsys[fmt.Sprintf("services/%03d/svc-%d.%s", i/100, i, ext)] = &fstest.MapFile{Data: []byte(data)}
	}
	b.ReportAllocs()
	for b.Loop() {
		spec, err := shoal.LoadSpec(fsys, ".")
		if err != nil {
			b.Fatal(err)
		}
		if len(spec.Services) != 1000 {
			b.Fatalf("%d services", len(spec.Services))
		}
	}
}
