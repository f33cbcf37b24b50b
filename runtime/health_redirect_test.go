package runtime

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd"

	"github.com/shoal-run/shoal"
)

// TestHTTPHealthDoesNotFollowRedirects: a check answered with a redirect
// is healthy and the agent never requests where it points.
func TestHTTPHealthDoesNotFollowRedirects(t *testing.T) {
	var elsewhere atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1) }))
	defer target.Close()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/secret", http.StatusFound)
	}))
	defer app.Close()
	_, port, _ := net.SplitHostPort(app.Listener.Addr().String())
	ct := &container{labels: map[string]string{LabelPorts: fmt.Sprintf(`{"http":%s}`, port)}, status: containerd.Running}
	svc := shoal.Service{Name: "web", Ports: []shoal.Port{{Name: "http"}}, Health: &shoal.Health{HTTP: "/healthz", Timeout: shoal.Duration(2 * time.Second)}}
	if !(&Runtime{}).check(context.Background(), ct, svc) {
		t.Fatal("a 302 is healthy")
	}
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("the check followed the redirect: %d requests to its target", n)
	}
}
