package mesh

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// Traffic reports reach every node, are summed per service, and a
// stopped node's report stops counting.
func TestLoadIsSummedFleetWide(t *testing.T) {
	a := startNode(t, "a", nil)
	b := startNode(t, "b", nil, a.m.LocalAddr())
	c := startNode(t, "c", nil, a.m.LocalAddr())
	waitFor(t, 5*time.Second, "joined", func() bool { return alive(a) == 3 && alive(b) == 3 && alive(c) == 3 })
	if err := a.m.PublishLoad(map[string]float64{"web": 12, "api": 1}); err != nil {
		t.Fatal(err)
	}
	if err := b.m.PublishLoad(map[string]float64{"web": 30}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*node{a, b, c} {
		waitFor(t, 5*time.Second, "load summed on "+n.m.cfg.NodeName, func() bool {
			l := n.m.Load()
			return l["web"] == 42 && l["api"] == 1
		})
	}
	b.m.Kill()
	waitFor(t, 10*time.Second, "the dead node's traffic dropped", func() bool {
		l := c.m.Load()
		return l["web"] == 12
	})
}

func TestEncodeLoadSplitsUnderTheLimit(t *testing.T) {
	rates := map[string]float64{}
	for i := range 60 {
		rates[fmt.Sprintf("service-with-a-long-name-%02d", i)] = float64(i) + 0.25
	}
	payloads := encodeLoad("node-1", rates)
	if len(payloads) < 2 {
		t.Fatalf("%d payloads for 60 services: want a split", len(payloads))
	}
	got := map[string]float64{}
	for _, p := range payloads {
		if len(p) > maxLoadPayload {
			t.Errorf("payload of %d bytes > %d", len(p), maxLoadPayload)
		}
		r, err := decodeLoad(p)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range r.Rates {
			got[k] = v
		}
	}
	for k, v := range rates {
		if math.Abs(got[k]-v) > 0.051 { // one decimal travels
			t.Errorf("%s: got %v, want %v", k, got[k], v)
		}
	}
}

func FuzzDecodeLoad(f *testing.F) {
	for _, p := range encodeLoad("n1", map[string]float64{"web": 3.5, "api": 0}) {
		f.Add(p)
	}
	f.Add([]byte(`{"n":"x","r":{"web":-1}}`))
	f.Add([]byte(`{"n":"","r":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeLoad(b)
		if err != nil {
			return
		}
		if r.Node == "" {
			t.Fatal("accepted a report without a node")
		}
		for svc, v := range r.Rates {
			if svc == "" || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("accepted %q=%v", svc, v)
			}
		}
	})
}
