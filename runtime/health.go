package runtime

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/shoal-run/shoal"
)

// probeState is the health of one container.
type probeState struct {
	state     HealthState
	lastRun   time.Time
	healthyAt time.Time // when state last turned healthy
}

// implicitCheck is the health check of a service with ports and none of
// its own: the first port accepts TCP connections. Without it an instance
// would count as healthy — and get traffic — before it listens.
var implicitCheck = shoal.Health{
	TCP: true, Interval: shoal.Duration(250 * time.Millisecond), Timeout: shoal.Duration(time.Second),
	Grace: shoal.Duration(30 * time.Second), HealthyThreshold: 1, UnhealthyThreshold: 3,
}

// healthOf is the check a service's instances get, nil for none.
func healthOf(svc shoal.Service) *shoal.Health {
	if svc.Health != nil {
		return svc.Health
	}
	if len(svc.Ports) > 0 {
		return &implicitCheck
	}
	return nil
}

// probe runs the checks that are due, in parallel, each bounded by its
// timeout. Containers without a health check are healthy while running.
func (r *Runtime) probe(ctx context.Context, cs map[string]*container) {
	now := r.cfg.Now()
	r.mu.Lock()
	byName := map[string]shoal.Service{}
	for _, d := range r.desired {
		byName[d.Slot.Service] = d.Service
	}
	type job struct {
		id  string
		ct  *container
		svc shoal.Service
		st  *probeState
	}
	var jobs []job
	for id, ct := range cs {
		svc, ok := byName[ct.labels[LabelService]]
		if !ok || healthOf(svc) == nil || ct.status != containerd.Running || svc.Hash() != ct.labels[LabelSpecHash] {
			continue
		}
		st := r.health[id]
		if st == nil {
			st = &probeState{}
			r.health[id] = st
		}
		if now.Sub(st.lastRun) < probeEvery(*healthOf(svc), st.state, ct.started, now) {
			continue
		}
		st.lastRun = now
		jobs = append(jobs, job{id, ct, svc, st})
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok := r.check(ctx, j.ct, j.svc)
			r.mu.Lock()
			before := j.st.state
			j.st.state = NextHealth(*healthOf(j.svc), j.st.state, ok, j.ct.started, r.cfg.Now())
			if j.st.state.Healthy && !before.Healthy {
				j.st.healthyAt = r.cfg.Now()
			}
			if before.Unhealthy != j.st.state.Unhealthy || before.Healthy != j.st.state.Healthy {
				r.log.Info("health changed", "container", j.id, "healthy", j.st.state.Healthy, "unhealthy", j.st.state.Unhealthy)
			}
			r.mu.Unlock()
		}()
	}
	wg.Wait()
}

// startProbe is how often a new instance is checked until it first passes,
// within its start grace: its first pass puts it in service, so a 10 s
// interval must not mean 10 s from start to traffic. Failures in the grace
// do not count, so checking often cannot fail an instance sooner.
const startProbe = 100 * time.Millisecond

// probeEvery is the time between checks of an instance in state st.
func probeEvery(h shoal.Health, st HealthState, startedAt, now time.Time) time.Duration {
	every := h.Interval.D()
	if !st.Passed && now.Sub(startedAt) < h.Grace.D() {
		every = min(every, startProbe)
	}
	return every
}

// check runs one health check against a container.
func (r *Runtime) check(ctx context.Context, ct *container, svc shoal.Service) bool {
	h := healthOf(svc)
	timeout := h.Timeout.D()
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if len(h.Exec) > 0 {
		return r.execCheck(ctx, ct, h.Exec) == nil
	}
	portName := h.Port
	if portName == "" && len(svc.Ports) > 0 {
		portName = svc.Ports[0].Name
	}
	addr := checkAddr(ct.labels, portName)
	if addr == "" {
		return false
	}
	if h.HTTP != "" {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+h.HTTP, nil)
		if err != nil {
			return false
		}
		resp, err := healthClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode >= 200 && resp.StatusCode < 400
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// healthClient makes HTTP health checks. A 3xx answer is healthy, as the
// spec says, and never followed: the container chooses where a redirect
// points, and the agent must not fetch what it names.
var healthClient = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true},
}

// execCheck runs a command inside the container and wants exit code 0.
func (r *Runtime) execCheck(ctx context.Context, ct *container, argv []string) error {
	if !ct.hasTask {
		return fmt.Errorf("no task")
	}
	c, err := ct.handle(ctx)
	if err != nil {
		return err
	}
	task, err := ct.taskHandle(ctx)
	if err != nil {
		return err
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return err
	}
	pspec := *spec.Process
	pspec.Args = argv
	pspec.Terminal = false
	id := fmt.Sprintf("health-%d", time.Now().UnixNano())
	proc, err := task.Exec(ctx, id, (*specs.Process)(&pspec), cio.NullIO)
	if err != nil {
		return err
	}
	defer proc.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
	wait, err := proc.Wait(ctx)
	if err != nil {
		return err
	}
	if err := proc.Start(ctx); err != nil {
		return err
	}
	select {
	case st := <-wait:
		if st.ExitCode() != 0 {
			return fmt.Errorf("exit %d", st.ExitCode())
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// checkAddr is where a health check reaches a container's port: its
// address on the bridge, or the host port on loopback with host networking.
func checkAddr(labels map[string]string, portName string) string {
	if labels[LabelNetwork] == NetworkBridge {
		ip, port := labels[LabelIP], portsOf(labels[LabelTargets])[portName]
		if ip == "" || port == 0 {
			return ""
		}
		return net.JoinHostPort(ip, strconv.Itoa(port))
	}
	port := hostPort(labels[LabelPorts], portName)
	if port == 0 {
		return ""
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}
