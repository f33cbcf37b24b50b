package mesh

import (
	"testing"

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
