package mesh

import (
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/shoal-run/shoal"
)

// A record without a port (a cron job's run) travels with the set, and a
// service record beside it is not lost: a set is accepted or refused whole.
func TestPortlessRecordTravels(t *testing.T) {
	in := []shoal.Record{
		{Service: "report", Slot: 1772359200, Node: "n1", PortName: "job.run"},
		{Service: "web", Slot: 0, Node: "n1", Addr: "10.0.0.1", PortName: "http", Port: 20001, Healthy: true},
	}
	set, rs, err := decodeSet(encodeSet("n1", in))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || set.Digest != digestOf(rs) {
		t.Fatalf("decoded %+v (digest %s), want both records", rs, set.Digest)
	}
	if rs[0].Service != "report" || rs[0].Port != 0 || rs[0].PortName != "job.run" || rs[0].Healthy {
		t.Fatalf("run record came back as %+v", rs[0])
	}
}

// TestJobRunRecordsBelievedAtSendersAddress: a job's run records carry
// their node's address, like its service records, and reach the peers;
// one without it is dropped with the records for other hosts.
func TestJobRunRecordsBelievedAtSendersAddress(t *testing.T) {
	a := startAgent(t, Config{NodeName: "a"})
	b := startAgent(t, Config{NodeName: "b", BindAddr: "127.0.0.2", Join: []string{a.m.LocalAddr()}})
	waitFor(t, 10*time.Second, "joined", func() bool { return alive(a) == 2 && alive(b) == 2 })
	b.m.SetLocalRecords([]shoal.Record{
		{Service: "report", Slot: 1772359200, Addr: "127.0.0.2", PortName: "job.run"},
		{Service: "report", Slot: 1772359140, Addr: "127.0.0.2", PortName: "job.done"},
		{Service: "report", Slot: 1772359080, PortName: "job.manual"}, // no address: not believed
	})
	waitFor(t, 10*time.Second, "b's run records", func() bool { return recordsOf(a, "b") >= 2 })
	var kinds []string
	for _, r := range a.m.Records() {
		if r.Node == "b" {
			kinds = append(kinds, r.PortName)
		}
	}
	slices.Sort(kinds)
	if !slices.Equal(kinds, []string{"job.done", "job.run"}) {
		t.Fatalf("a believes b's run records %v, want job.done and job.run", kinds)
	}
}

// TestJobRunRecordsNotServed: a run record names a job, not a service:
// DNS does not answer its name, and the balancer has no backend in it.
func TestJobRunRecordsNotServed(t *testing.T) {
	recs := []shoal.Record{
		{Service: "report", Slot: 1772359200, Node: "n1", Addr: "10.9.0.1", PortName: "job.run"},
		{Service: "web", Slot: 0, Node: "n1", Addr: "10.9.0.1", PortName: "http", Port: 20000, Healthy: true},
	}
	d := NewDNS(DNSConfig{BalancerAddr: "127.0.0.9", Upstreams: []string{}, Logger: quiet}, func() []shoal.Record { return recs })
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"report.shoal.", dns.TypeA}, {"report.service.shoal.", dns.TypeA}, {"_job.run._tcp.report.service.shoal.", dns.TypeSRV}} {
		req := new(dns.Msg)
		req.SetQuestion(q.name, q.qtype)
		if m := d.answer(req, q.name, q.qtype); m.Rcode != dns.RcodeNameError || len(m.Answer) != 0 {
			t.Errorf("%s: rcode %d, answers %v; want NXDOMAIN", q.name, m.Rcode, m.Answer)
		}
	}
	req := new(dns.Msg)
	req.SetQuestion("n1.node.shoal.", dns.TypeA)
	if m := d.answer(req, "n1.node.shoal.", dns.TypeA); len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "10.9.0.1" {
		t.Errorf("n1.node.shoal: %v, want 10.9.0.1", m.Answer)
	}
	b := NewBalancer(BalancerConfig{LocalNode: "n1", Logger: quiet}, func() []shoal.Record { return recs })
	for _, pn := range []string{"job.run", ""} {
		if c := b.candidatesOf(Route{Service: "report", PortName: pn}); len(c) != 0 {
			t.Errorf("the balancer has backends for a job's run records: %+v", c)
		}
	}
}
