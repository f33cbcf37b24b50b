package shoal_test

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/shoal-run/shoal"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/specs")

// TestLoadGolden loads every tree under testdata/specs/{good,bad} and compares
// the result — the decoded spec, or the list of errors — with its .golden file.
func TestLoadGolden(t *testing.T) {
	for _, kind := range []string{"good", "bad"} {
		dirs, err := os.ReadDir(filepath.Join("testdata", "specs", kind))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dirs {
			if !d.IsDir() {
				continue
			}
			t.Run(kind+"/"+d.Name(), func(t *testing.T) {
				dir := filepath.Join("testdata", "specs", kind, d.Name())
				spec, err := shoal.LoadSpec(os.DirFS(dir), ".")
				var got string
				switch {
				case kind == "good" && err != nil:
					t.Fatalf("want valid spec, got:\n%v", err)
				case kind == "bad" && err == nil:
					t.Fatalf("want errors, spec loaded: %d services", len(spec.Services))
				case err != nil:
					var verr *shoal.ValidationError
					if !errors.As(err, &verr) {
						t.Fatalf("want *ValidationError, got %T: %v", err, err)
					}
					for _, fe := range verr.Errors {
						if fe.File == "" || fe.Line == 0 {
							t.Errorf("error without file:line: %v", fe)
						}
					}
					got = err.Error() + "\n"
				default:
					b, err := json.MarshalIndent(spec, "", "  ")
					if err != nil {
						t.Fatal(err)
					}
					got = string(b) + "\n"
				}
				golden := dir + ".golden"
				if *update {
					if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run go test -run TestLoadGolden -update)", err)
				}
				if got != string(want) {
					t.Errorf("mismatch with %s (-update to rewrite)\ngot:\n%s\nwant:\n%s", golden, got, want)
				}
			})
		}
	}
}

// TestSeedExample is the seed's own promise: this file alone is a complete,
// valid service.
func TestSeedExample(t *testing.T) {
	fsys := fstest.MapFS{"billing.yaml": {Data: []byte("name: billing\nimage: registry.example.com/billing:1.4\nreplicas: 5\nports:\n  - port: 80\n")}}
	spec, err := shoal.LoadSpec(fsys, ".")
	if err != nil {
		t.Fatal(err)
	}
	svc := spec.Service("billing")
	if svc == nil || svc.Replicas != 5 || len(svc.Ports) != 1 || svc.Ports[0].Port != 80 {
		t.Fatalf("billing not loaded as written: %+v", svc)
	}
	if svc.Ports[0].Protocol != shoal.ProtocolTCP || svc.Resources.CPU <= 0 || svc.Resources.Memory <= 0 || svc.Restart.Policy != shoal.RestartAlways {
		t.Errorf("defaults not filled: %+v", svc)
	}
	if svc.Source.File != "billing.yaml" || svc.Source.Line != 1 {
		t.Errorf("source = %v", svc.Source)
	}
}

func TestExamplesFleetValid(t *testing.T) {
	spec, err := shoal.LoadDir(filepath.Join("examples", "fleet"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range spec.Services {
		names = append(names, s.Name)
	}
	if got := strings.Join(names, ","); got != "api,billing,cache,web" {
		t.Errorf("services = %s", got)
	}
	if len(spec.Jobs) != 1 || spec.Jobs[0].Name != "nightly-report" {
		t.Errorf("jobs = %+v", spec.Jobs)
	}
}

// TestSpecHashStable: the same declarations give the same hash however they
// are split across files and whatever the key order; a change changes it.
func TestSpecHashStable(t *testing.T) {
	a := fstest.MapFS{
		"one.yaml": {Data: []byte("- name: a\n  image: x\n  replicas: 2\n- name: b\n  image: y\n")},
	}
	b := fstest.MapFS{
		"z/b.json": {Data: []byte(`{"image": "y", "name": "b", "replicas": 1}`)},
		"a.cue":    {Data: []byte(`replicas: 2, image: "x", name: "a"`)},
	}
	c := fstest.MapFS{
		"one.yaml": {Data: []byte("- name: a\n  image: x\n  replicas: 3\n- name: b\n  image: y\n")},
	}
	hash := func(fsys fstest.MapFS) string {
		t.Helper()
		s, err := shoal.LoadSpec(fsys, ".")
		if err != nil {
			t.Fatal(err)
		}
		return s.Hash
	}
	if ha, hb := hash(a), hash(b); ha != hb {
		t.Errorf("same spec, different layout: %s != %s", ha, hb)
	}
	if ha, hc := hash(a), hash(c); ha == hc {
		t.Error("replicas changed but hash did not")
	}
}

func TestServiceHashIgnoresScaling(t *testing.T) {
	s := shoal.Service{Name: "a", Image: "x", Replicas: 1}
	h := s.Hash()
	s.Replicas = 7
	s.Scale = &shoal.Scale{Min: 1, Max: 9, Target: 10}
	if s.Hash() != h {
		t.Error("scaling changed the service hash: containers would be replaced")
	}
	s.Image = "x2"
	if s.Hash() == h {
		t.Error("image changed but hash did not")
	}
}

func TestLoadSubPathAndHidden(t *testing.T) {
	fsys := fstest.MapFS{
		"README.md":               {Data: []byte("# not a spec")},
		"deploy/svc.yaml":         {Data: []byte("name: a\nimage: x\n")},
		"deploy/.hidden/bad.yaml": {Data: []byte("oops: [")},
		"other/bad.yaml":          {Data: []byte("oops: [")},
	}
	spec, err := shoal.LoadSpec(fsys, "deploy")
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Services) != 1 || spec.Services[0].Source.File != "deploy/svc.yaml" {
		t.Fatalf("got %+v", spec.Services)
	}
	if _, err := shoal.LoadSpec(fsys, "missing"); err == nil {
		t.Error("missing root: want error")
	}
}

func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want shoal.Bytes
		err  bool
	}{
		{"256Mi", 256 << 20, false},
		{"1Gi", 1 << 30, false},
		{"1.5Gi", 3 << 29, false},
		{"500M", 500e6, false},
		{"2k", 2000, false},
		{"1024", 1024, false},
		{"", 0, true},
		{"Mi", 0, true},
		{"-1Gi", 0, true},
		{"1e3", 0, true},
		{"12Xi", 0, true},
		// Overflow is an error, never a negative or wrapped number.
		{"8388608Ti", 0, true},
		{"8388607Ti", 8388607 << 40, false},
		{"9223372036854775807", 9223372036854775807, false},
		{"9223372036854775808", 0, true},
		{"99999999999999999999999T", 0, true},
		{"0.5", 0, false},
		{"inf", 0, true},
		{"NaN", 0, true},
		{"0x10", 0, true},
		{"1_000", 0, true},
		{"1.", 0, true},
	} {
		got, err := shoal.ParseBytes(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d, err=%v", tc.in, got, err, tc.want, tc.err)
		}
	}
	for _, in := range []string{"9223372036854775808", "1e19", "1e300"} {
		var b shoal.Bytes
		if err := b.UnmarshalJSON([]byte(in)); err == nil {
			t.Errorf("UnmarshalJSON(%s) = %d, want an error", in, b)
		}
	}
	if s := shoal.Bytes(3 << 29).String(); s != "1536Mi" {
		t.Errorf("String = %s", s)
	}
}

func TestParseSchedule(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"30 2 * * *", true},
		{"*/5 * * * * *", true},
		{"@every 90s", true},
		{"CRON_TZ=Europe/Paris 0 9 * * 1-5", true},
		{"61 * * * *", false},
		{"* * *", false},
		{"CRON_TZ=Nowhere/Land 0 9 * * *", false},
	} {
		_, err := shoal.ParseSchedule(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseSchedule(%q): err=%v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func TestRecordsFor(t *testing.T) {
	ins := []shoal.Instance{
		{Slot: shoal.Slot{Service: "web", Index: 1}, State: shoal.StateHealthy, Revision: "r1", Ports: map[string]int{"http": 20001, "admin": 20002},
			IP: "10.89.0.5", Targets: map[string]int{"http": 80, "admin": 9000}},
		{Slot: shoal.Slot{Service: "web", Index: 0}, State: shoal.StateStarting, Revision: "r1", Ports: map[string]int{"http": 20000}}, // host network
		{Slot: shoal.Slot{Service: "job", Index: 0}, State: shoal.StateHealthy},                                                        // no ports: no record
	}
	got := shoal.RecordsFor("n1", "10.0.0.1", ins)
	want := []shoal.Record{
		{Service: "web", Slot: 0, Node: "n1", Addr: "10.0.0.1", PortName: "http", Port: 20000, Revision: "r1", Healthy: false},
		{Service: "web", Slot: 1, Node: "n1", Addr: "10.0.0.1", PortName: "admin", Port: 20002, Revision: "r1", Healthy: true, Local: "10.89.0.5:9000"},
		{Service: "web", Slot: 1, Node: "n1", Addr: "10.0.0.1", PortName: "http", Port: 20001, Revision: "r1", Healthy: true, Local: "10.89.0.5:80"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("record %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

// A slot replaced make-before-break publishes one record: the healthy
// copy, the newer when both are healthy.
func TestRecordsForSurge(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	slot := shoal.Slot{Service: "web", Index: 0}
	old := shoal.Instance{Slot: slot, State: shoal.StateHealthy, Revision: "old", StartedAt: t0, Ports: map[string]int{"http": 20000}}
	for _, tc := range []struct {
		name string
		new  shoal.InstanceState
		want string
	}{
		{"new starting: old serves", shoal.StateStarting, "old"},
		{"new healthy: new serves", shoal.StateHealthy, "new"},
		{"new unhealthy: old serves", shoal.StateUnhealthy, "old"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw := shoal.Instance{Slot: slot, State: tc.new, Revision: "new", StartedAt: t0.Add(time.Second), Ports: map[string]int{"http": 20001}}
			for _, order := range [][]shoal.Instance{{old, nw}, {nw, old}} {
				got := shoal.RecordsFor("n1", "10.0.0.1", order)
				if len(got) != 1 || got[0].Revision != tc.want {
					t.Errorf("got %+v, want one record of %s", got, tc.want)
				}
			}
		})
	}
}
