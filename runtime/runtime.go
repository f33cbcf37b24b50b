package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/api/services/tasks/v1"
	apitask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/shoal-run/shoal"
)

// Container labels. They carry everything needed to adopt a container
// after an agent restart, so the runtime keeps no state of its own on disk.
const (
	LabelService  = "shoal.service"
	LabelSlot     = "shoal.slot"
	LabelSpecHash = "shoal.spec-hash"
	LabelRevision = "shoal.revision"
	LabelNode     = "shoal.node"
	LabelPorts    = "shoal.ports"
	LabelImage    = "shoal.image"
	// LabelNetwork is NetworkBridge or NetworkHost; LabelTargets the
	// ports the process listens on (port name → port), and LabelIP its
	// address on the bridge, set once the task's namespace is attached.
	LabelNetwork = "shoal.network"
	LabelTargets = "shoal.targets"
	LabelIP      = "shoal.ip"
)

// Config says where containerd is and how to run containers.
type Config struct {
	// Socket of containerd; default /run/containerd/containerd.sock.
	Socket string
	// Namespace of containerd for this runtime's containers; default
	// "shoal". Runtimes in different namespaces never touch each other.
	Namespace string
	// DataDir holds logs and, when started, the private containerd.
	DataDir string
	// StartContainerd starts a private containerd under DataDir when none
	// answers on Socket.
	StartContainerd bool
	// NodeName is written on every container.
	NodeName string
	// PortLow and PortHigh bound the host ports handed to containers;
	// default 20000-29999.
	PortLow, PortHigh int
	// Registry access: hosts (host[:port]) pulled over plain HTTP, and a
	// Docker config.json with credentials (default ~/.docker/config.json).
	InsecureRegistries []string
	DockerConfig       string
	// ResolvConf, when set, is bind-mounted as the containers'
	// /etc/resolv.conf (the agent points it at the mesh DNS).
	ResolvConf string
	// NetNS is the network namespace host-networked containers join;
	// default the agent's own (/proc/<pid>/ns/net).
	NetNS string
	// Network is how containers are networked: by default each has its
	// own namespace on a bridge, set up with CNI.
	Network NetworkConfig
	// PidsLimit caps the processes of one container; default 1024.
	PidsLimit int64
	// KeepUnusedImages is how many images no container uses are kept (the
	// most recently used first) for quick rollbacks; the rest are deleted
	// and containerd's GC frees their content. Default 3; negative keeps
	// none.
	KeepUnusedImages int
	// LogMaxBytes caps a container log file; it is rotated to .1 past it.
	LogMaxBytes int64
	// Interval between observations when nothing else wakes the loop.
	Interval time.Duration
	// Parallel bounds concurrent container operations; default 4.
	Parallel int
	Logger   *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Runtime runs this node's share of the placement in containerd.
type Runtime struct {
	cfg    Config
	log    *slog.Logger
	client *containerd.Client
	daemon *Daemon
	images *puller
	ports  *portAllocator
	net    *network // nil with host networking only

	wake    chan struct{}
	changes chan struct{}

	mu        sync.Mutex
	revision  string
	desired   []Desired
	told      bool // SetDesired was called: until then nothing is touched
	observed  bool // instances holds what containerd had, at least once
	instances []shoal.Instance
	health    map[string]*probeState // container ID → health
	failures  map[shoal.Slot]failureState
	pending   map[shoal.Slot]string // desired slots not started: why

	lastGC    time.Time
	collected bool // leftover network attachments reclaimed

	closeOnce sync.Once
}

type failureState struct {
	count    int       // consecutive failures: the backoff streak
	restarts int       // all restarts of the slot's container, for status
	exitedAt time.Time // of the last failure
}

// New connects to containerd, starting a private one if configured.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	if cfg.Socket == "" {
		cfg.Socket = "/run/containerd/containerd.sock"
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "shoal"
	}
	if cfg.PortLow == 0 {
		cfg.PortLow, cfg.PortHigh = 20000, 29999
	}
	if cfg.NetNS == "" {
		cfg.NetNS = fmt.Sprintf("/proc/%d/ns/net", os.Getpid())
	}
	if cfg.LogMaxBytes == 0 {
		cfg.LogMaxBytes = 10 << 20
	}
	if cfg.Interval == 0 {
		cfg.Interval = time.Second
	}
	if cfg.Parallel == 0 {
		cfg.Parallel = 4
	}
	if cfg.PidsLimit == 0 {
		cfg.PidsLimit = 1024
	}
	cfg.Network = cfg.Network.withDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DataDir == "" {
		return nil, errors.New("runtime: data dir is required")
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	r := &Runtime{
		cfg: cfg, log: cfg.Logger,
		wake: make(chan struct{}, 1), changes: make(chan struct{}, 1),
		health: map[string]*probeState{}, failures: map[shoal.Slot]failureState{}, pending: map[shoal.Slot]string{},
		ports: newPortAllocator(cfg.PortLow, cfg.PortHigh),
	}
	if cfg.Network.Mode != NetworkBridge && cfg.Network.Mode != NetworkHost {
		return nil, fmt.Errorf("runtime: network mode %q: want %s or %s", cfg.Network.Mode, NetworkBridge, NetworkHost)
	}
	if err := ping(ctx, cfg.Socket); err != nil {
		if !cfg.StartContainerd {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("runtime: no containerd at %s: start it (systemctl start containerd) or let Shoal start its own (--start-containerd): %w", cfg.Socket, ErrNoContainerd)
			}
			return nil, fmt.Errorf("runtime: containerd at %s: %w", cfg.Socket, err)
		}
		d, err := StartDaemon(ctx, filepath.Join(cfg.DataDir, "containerd"), r.log)
		if err != nil {
			return nil, err
		}
		r.daemon, r.cfg.Socket = d, d.Socket
	}
	client, err := containerd.New(r.cfg.Socket, containerd.WithDefaultNamespace(cfg.Namespace))
	if err != nil {
		r.daemon.Stop()
		return nil, fmt.Errorf("runtime: connect %s: %w", r.cfg.Socket, err)
	}
	r.client = client
	if cfg.Network.Mode == NetworkBridge {
		n, err := newNetwork(ctx, cfg.Network, cfg.DataDir, r.log)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("runtime: container network: %w", err)
		}
		r.net = n
	}
	r.images = newPuller(client, cfg, r.log, r.poke)
	return r, nil
}

// Socket is the containerd socket in use (a private daemon's, if started).
func (r *Runtime) Socket() string { return r.cfg.Socket }

// Gateway is the bridge's address on this node, where containers reach
// the agent's DNS and balancer; invalid with host networking only.
func (r *Runtime) Gateway() netip.Addr {
	if r.net == nil {
		return netip.Addr{}
	}
	return r.net.gateway
}

// Subnet is the bridge's subnet; invalid with host networking only.
func (r *Runtime) Subnet() netip.Prefix {
	if r.net == nil {
		return netip.Prefix{}
	}
	return r.net.subnet
}

// AllowServicePorts lets containers reach the node's balancer on these
// ports; every other port of the node stays closed to them.
func (r *Runtime) AllowServicePorts(ports []int) error {
	if r.net == nil {
		return nil
	}
	return r.net.allowServicePorts(ports)
}

// RemoveNetwork deletes the bridge and the rules of this node's container
// network, once no container is left: for a node drained for good.
func (r *Runtime) RemoveNetwork() error {
	if r.net == nil {
		return nil
	}
	// Whatever a failed removal left attached goes first.
	r.net.collect(context.Background(), nil)
	return r.net.remove()
}

// networkOf is how a service's containers are networked here.
func (r *Runtime) networkOf(svc shoal.Service) string {
	if r.net == nil || svc.Network == shoal.NetworkHost {
		return NetworkHost
	}
	return NetworkBridge
}

func (r *Runtime) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.cfg.Namespace)
}

func (r *Runtime) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *Runtime) notify() {
	select {
	case r.changes <- struct{}{}:
	default:
	}
}

// SetDesired replaces the slots this node should run. Revision is the Git
// commit they come from, written on new containers.
func (r *Runtime) SetDesired(revision string, desired []Desired) {
	d := append([]Desired(nil), desired...)
	sort.Slice(d, func(i, j int) bool { return slotLess(d[i].Slot, d[j].Slot) })
	r.mu.Lock()
	r.revision, r.desired, r.told = revision, d, true
	r.mu.Unlock()
	for _, x := range d {
		r.images.want(x.Service.Image)
	}
	r.poke()
}

// Instances returns the local instances, sorted by slot: containers that
// exist, and desired slots that could not start yet (with LastError).
func (r *Runtime) Instances() []shoal.Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]shoal.Instance(nil), r.instances...)
}

// Observed reports whether Instances holds what containerd has: until the
// first look, after an agent restart, it lacks the containers kept.
func (r *Runtime) Observed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.observed
}

// Changes signals, coalesced, that Instances changed.
func (r *Runtime) Changes() <-chan struct{} { return r.changes }

// Run observes and reconciles until ctx is cancelled.
func (r *Runtime) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.images.run(ctx) }()
	defer wg.Wait()
	tick := time.NewTicker(r.cfg.Interval)
	defer tick.Stop()
	for {
		if err := r.Step(r.ctx(ctx)); err != nil && ctx.Err() == nil {
			r.log.Warn("reconcile", "err", err)
		}
		// While an instance is starting, check again soon: its first
		// passing health check is what puts it in service.
		var soon <-chan time.Time
		if r.starting() {
			soon = time.After(100 * time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		case <-tick.C:
		case <-soon:
		}
	}
}

// starting reports whether some instance waits for its first health check.
func (r *Runtime) starting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, in := range r.instances {
		if in.State == shoal.StateStarting && in.ContainerID != "" {
			return true
		}
	}
	return false
}

// Step runs one observe → health → reconcile → act round.
func (r *Runtime) Step(ctx context.Context) error {
	ctx = r.ctx(ctx)
	observed, containers, err := r.observe(ctx)
	if err != nil {
		return err
	}
	if !r.collected && r.net != nil {
		live := map[string]bool{}
		for id := range containers {
			live[id] = true
		}
		r.net.collect(ctx, live)
		r.collected = true
	}
	r.probe(ctx, containers)
	r.mu.Lock()
	desired, revision, told := r.desired, r.revision, r.told
	if !told {
		// Not told what to run yet (an agent that just started): adopt
		// and report, but stop nothing — an empty desired state here
		// would mean "remove everything".
		r.mu.Unlock()
		return r.publish(ctx, nil)
	}
	for i := range observed {
		ct := containers[observed[i].ID]
		if st := r.health[observed[i].ID]; st != nil {
			observed[i].Unhealthy = st.state.Unhealthy
			if st.state.Healthy {
				observed[i].ReadySince = st.healthyAt
			}
		} else if observed[i].Running && !r.checked(observed[i], desired) {
			observed[i].ReadySince = ct.started
		}
		f := r.failures[observed[i].Slot]
		observed[i].Failures, observed[i].ExitedAt = f.count, f.exitedAt
		if observed[i].ExitedAt.IsZero() {
			observed[i].ExitedAt = ct.exitedAt
		}
	}
	r.mu.Unlock()
	acts := Reconcile(desired, observed, r.cfg.Now())
	r.execute(ctx, acts, revision, containers)
	for _, d := range desired {
		if err := truncateLarge(r.logPath(d.Slot), r.cfg.LogMaxBytes); err != nil {
			r.log.Warn("rotate log", "slot", d.Slot.String(), "err", err)
		}
	}
	if now := r.cfg.Now(); now.Sub(r.lastGC) >= 10*r.cfg.Interval {
		r.lastGC = now
		if err := r.collectImages(ctx, desired); err != nil {
			r.log.Warn("image gc", "err", err)
		}
	}
	return r.publish(ctx, desired)
}

// checked reports whether o runs the desired definition of its slot and
// that definition has a health check.
func (r *Runtime) checked(o Observed, desired []Desired) bool {
	for _, d := range desired {
		if d.Slot == o.Slot {
			return d.Service.Hash() == o.SpecHash && healthOf(d.Service) != nil
		}
	}
	return false
}

// container is what observe learns of one containerd container. The
// client handles are loaded only when an action needs them: observing
// runs several times a second and costs two list calls.
type container struct {
	client   *containerd.Client
	id       string
	labels   map[string]string
	hasTask  bool
	status   containerd.ProcessStatus
	exit     uint32
	exitedAt time.Time
	started  time.Time

	c    containerd.Container
	task containerd.Task
}

// handle loads the container's client handle.
func (ct *container) handle(ctx context.Context) (containerd.Container, error) {
	if ct.c == nil {
		c, err := ct.client.LoadContainer(ctx, ct.id)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", ct.id, err)
		}
		ct.c = c
	}
	return ct.c, nil
}

// taskHandle loads the container's task; errdefs.ErrNotFound without one.
func (ct *container) taskHandle(ctx context.Context) (containerd.Task, error) {
	if ct.task == nil {
		c, err := ct.handle(ctx)
		if err != nil {
			return nil, err
		}
		t, err := c.Task(ctx, nil)
		if err != nil {
			return nil, err
		}
		ct.task = t
	}
	return ct.task, nil
}

// observe lists this namespace's Shoal containers and their tasks: two
// calls to containerd whatever the number of containers (loading each
// container and task handle would be four per container).
func (r *Runtime) observe(ctx context.Context) ([]Observed, map[string]*container, error) {
	list, err := r.client.ContainerService().List(ctx, fmt.Sprintf(`labels.%q`, LabelService))
	if err != nil {
		return nil, nil, fmt.Errorf("list containers: %w", err)
	}
	resp, err := r.client.TaskService().List(ctx, &tasks.ListTasksRequest{})
	if err != nil {
		return nil, nil, fmt.Errorf("list tasks: %w", err)
	}
	procs := map[string]*apitask.Process{}
	for _, p := range resp.Tasks {
		id := p.ContainerID
		if id == "" {
			id = p.ID
		}
		procs[id] = p
	}
	var obs []Observed
	found := map[string]*container{}
	for _, c := range list {
		labels := c.Labels
		idx, err := strconv.Atoi(labels[LabelSlot])
		if err != nil {
			continue
		}
		ct := &container{client: r.client, id: c.ID, labels: labels, status: containerd.Stopped, started: c.CreatedAt}
		if p := procs[c.ID]; p != nil {
			ct.hasTask = true
			ct.status = containerd.ProcessStatus(strings.ToLower(p.Status.String()))
			ct.exit = p.ExitStatus
			if p.ExitedAt != nil {
				ct.exitedAt = p.ExitedAt.AsTime()
			}
		}
		found[c.ID] = ct
		o := Observed{ID: c.ID, Slot: shoal.Slot{Service: labels[LabelService], Index: idx}, SpecHash: labels[LabelSpecHash]}
		switch ct.status {
		case containerd.Running, containerd.Pausing, containerd.Paused:
			o.Running = true
		default:
			o.Exited, o.ExitCode = true, int(ct.exit)
		}
		if t, err := time.Parse(time.RFC3339Nano, labels["shoal.started"]); err == nil {
			ct.started = t
		}
		obs = append(obs, o)
	}
	sort.Slice(obs, func(i, j int) bool { return obs[i].ID < obs[j].ID })
	return obs, found, nil
}

// execute applies the actions, at most cfg.Parallel at a time. A failure
// is logged and retried on the next round; it never blocks other slots.
func (r *Runtime) execute(ctx context.Context, a Actions, revision string, cs map[string]*container) {
	sem := make(chan struct{}, r.cfg.Parallel)
	var wg sync.WaitGroup
	do := func(name string, slot shoal.Slot, f func() error) {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(); err != nil {
				if errors.Is(err, errPulling) {
					r.log.Debug(name, "slot", slot.String(), "err", err)
				} else {
					r.log.Warn(name, "slot", slot.String(), "err", err)
				}
				r.mu.Lock()
				r.pending[slot] = fmt.Sprintf("%s: %v", name, err)
				r.mu.Unlock()
			}
		}()
	}
	for _, o := range a.Stop {
		do("stop", o.Slot, func() error { return r.remove(ctx, cs[o.ID]) })
	}
	for _, rp := range a.Replace {
		do("replace", rp.New.Slot, func() error {
			if !rp.Surge {
				if err := r.remove(ctx, cs[rp.Old.ID]); err != nil {
					return err
				}
			}
			r.mu.Lock()
			delete(r.failures, rp.New.Slot)
			r.mu.Unlock()
			return r.start(ctx, rp.New, revision)
		})
	}
	for _, d := range a.Start {
		do("start", d.Slot, func() error { return r.start(ctx, d, revision) })
	}
	for _, o := range a.Restart {
		do("restart", o.Slot, func() error { return r.restart(ctx, cs[o.ID], o) })
	}
	// A container that has run past its backoff cap without failing is
	// well again: its failure streak ends.
	now := r.cfg.Now()
	r.mu.Lock()
	for _, o := range a.Keep {
		if f, ok := r.failures[o.Slot]; ok && f.count > 0 && now.Sub(f.exitedAt) > time.Minute {
			f.count = 0
			r.failures[o.Slot] = f
		}
	}
	r.mu.Unlock()
	wg.Wait()
}

// containerID is unique per creation: containerd may still hold the task
// of a container just deleted, and a new one must not collide with it.
// Adoption goes by labels, so nothing depends on the ID being stable.
func containerID(d Desired, now time.Time) string {
	return fmt.Sprintf("%s-%d-%s-%s", d.Slot.Service, d.Slot.Index, d.Service.Hash()[:8], strconv.FormatInt(now.UnixMilli()%(1<<40), 36))
}

// start creates and starts the container of a slot.
func (r *Runtime) start(ctx context.Context, d Desired, revision string) error {
	img, err := r.images.get(ctx, d.Service.Image)
	if err != nil {
		return err
	}
	now := r.cfg.Now()
	id := containerID(d, now)
	mode := r.networkOf(d.Service)
	// A host-networked process with a target binds that port on the node
	// itself; every other port gets a host port from the range.
	var alloc []shoal.Port
	for _, p := range d.Service.Ports {
		if mode == NetworkBridge || p.Target == 0 {
			alloc = append(alloc, p)
		}
	}
	ports, err := r.ports.allocate(id, alloc)
	if err != nil {
		return err
	}
	ports = maps.Clone(ports) // the allocator's own map
	for _, p := range d.Service.Ports {
		if mode == NetworkHost && p.Target > 0 {
			ports[p.Name] = p.Target
		}
	}
	targets := targetPorts(mode, d.Service.Ports, ports)
	portJSON, _ := json.Marshal(ports)
	targetJSON, _ := json.Marshal(targets)
	labels := map[string]string{
		LabelService: d.Slot.Service, LabelSlot: strconv.Itoa(d.Slot.Index),
		LabelSpecHash: d.Service.Hash(), LabelRevision: revision, LabelNode: r.cfg.NodeName,
		LabelPorts: string(portJSON), LabelImage: d.Service.Image,
		LabelNetwork: mode, LabelTargets: string(targetJSON),
		"shoal.started": now.UTC().Format(time.RFC3339Nano),
	}
	env := []string{"SHOAL_SERVICE=" + d.Slot.Service, "SHOAL_SLOT=" + strconv.Itoa(d.Slot.Index), "SHOAL_NODE=" + r.cfg.NodeName}
	for i, p := range d.Service.Ports {
		if i == 0 {
			env = append(env, "PORT="+strconv.Itoa(targets[p.Name]))
		}
		env = append(env, "SHOAL_PORT_"+envName(p.Name)+"="+strconv.Itoa(targets[p.Name]))
	}
	keys := make([]string, 0, len(d.Service.Env))
	for k := range d.Service.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+d.Service.Env[k])
	}
	opts := []oci.SpecOpts{
		oci.WithImageConfig(img),
		oci.WithEnv(env),
		oci.WithHostHostsFile,
	}
	// A bridged container keeps the new network namespace runc makes for
	// it; startTask attaches it to the bridge before the process runs.
	if mode == NetworkHost {
		opts = append(opts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: r.cfg.NetNS}))
	}
	opts = append(opts, hardening(r.cfg.PidsLimit)...)
	if args := append(append([]string(nil), d.Service.Command...), d.Service.Args...); len(d.Service.Command) > 0 {
		opts = append(opts, oci.WithProcessArgs(args...))
	} else if len(d.Service.Args) > 0 {
		opts = append(opts, withArgs(d.Service.Args))
	}
	if d.Service.Resources.Memory > 0 {
		opts = append(opts, oci.WithMemoryLimit(uint64(d.Service.Resources.Memory)))
	}
	if cpu := d.Service.Resources.CPU; cpu > 0 {
		const period = 100000
		opts = append(opts, oci.WithCPUCFS(int64(cpu*period), period))
	}
	if r.cfg.ResolvConf != "" {
		opts = append(opts, oci.WithMounts([]specs.Mount{{Destination: "/etc/resolv.conf", Type: "bind", Source: r.cfg.ResolvConf, Options: []string{"rbind", "ro"}}}))
	} else {
		opts = append(opts, oci.WithHostResolvconf)
	}
	// A leftover with the same ID (an earlier failed start) is removed first.
	if old, err := r.client.LoadContainer(ctx, id); err == nil {
		r.remove(ctx, &container{c: old})
	}
	t0 := time.Now()
	c, err := r.client.NewContainer(ctx, id,
		containerd.WithImage(img),
		containerd.WithNewSnapshot(id, img),
		containerd.WithContainerLabels(labels),
		containerd.WithNewSpec(opts...),
	)
	if err != nil {
		r.ports.release(id)
		return fmt.Errorf("create %s: %w", id, err)
	}
	t1 := time.Now()
	netTook, err := r.startTask(ctx, c, d.Slot, labels)
	if err != nil {
		c.Delete(ctx, containerd.WithSnapshotCleanup)
		r.detach(ctx, id, labels)
		r.ports.release(id)
		return err
	}
	r.log.Info("started", "slot", d.Slot.String(), "container", id, "image", d.Service.Image, "ports", ports,
		"create_took", t1.Sub(t0).Round(time.Millisecond), "task_took", time.Since(t1).Round(time.Millisecond), "network_took", netTook.Round(time.Millisecond))
	r.mu.Lock()
	delete(r.pending, d.Slot)
	r.mu.Unlock()
	return nil
}

// startTask creates the container's task, attaches a bridged one's network
// namespace while its process waits to run, and starts it. It reports how
// long the network took.
func (r *Runtime) startTask(ctx context.Context, c containerd.Container, slot shoal.Slot, labels map[string]string) (time.Duration, error) {
	var took time.Duration
	path := r.logPath(slot)
	rotate(path, r.cfg.LogMaxBytes)
	task, err := c.NewTask(ctx, cio.LogFile(path))
	if err != nil {
		return 0, fmt.Errorf("create task %s: %w", c.ID(), err)
	}
	if labels[LabelNetwork] == NetworkBridge {
		if r.net == nil {
			task.Delete(ctx, containerd.WithProcessKill)
			return 0, fmt.Errorf("start %s: made for the bridge, and this agent runs host networking only", c.ID())
		}
		t0 := time.Now()
		ip, err := r.net.attach(ctx, c.ID(), task.Pid(), mappingsFor(portsOf(labels[LabelPorts]), portsOf(labels[LabelTargets])))
		if err == nil {
			_, err = c.SetLabels(ctx, map[string]string{LabelIP: ip.String()})
		}
		if err != nil {
			task.Delete(ctx, containerd.WithProcessKill)
			return 0, fmt.Errorf("network of %s: %w", c.ID(), err)
		}
		took = time.Since(t0)
	}
	if err := task.Start(ctx); err != nil {
		task.Delete(ctx, containerd.WithProcessKill)
		return 0, fmt.Errorf("start task %s: %w", c.ID(), err)
	}
	return took, nil
}

// restart starts an exited or unhealthy container's task again, in the
// same container and snapshot: faster than creating a new one.
func (r *Runtime) restart(ctx context.Context, ct *container, o Observed) error {
	if ct == nil {
		return nil
	}
	r.mu.Lock()
	f := r.failures[o.Slot]
	f.count++
	f.restarts++
	f.exitedAt = r.cfg.Now()
	r.failures[o.Slot] = f
	delete(r.health, o.ID)
	r.mu.Unlock()
	if ct.hasTask {
		task, err := ct.taskHandle(ctx)
		if err != nil && !errdefs.IsNotFound(err) {
			return err
		}
		if err == nil {
			if err := stopTask(ctx, task, 5*time.Second); err != nil {
				return err
			}
		}
	}
	why := fmt.Sprintf("exit code %d", o.ExitCode)
	if o.Unhealthy {
		why = "unhealthy"
	}
	// A container made by an earlier agent process joins that process's
	// network namespace by /proc path, gone once it exited: recreate it in
	// this agent's namespace.
	c, err := ct.handle(ctx)
	if err != nil {
		return err
	}
	if spec, err := c.Spec(ctx); err == nil && spec.Linux != nil {
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type == specs.NetworkNamespace && ns.Path != "" && ns.Path != r.cfg.NetNS {
				r.log.Info("recreating: made by an earlier agent process", "slot", o.Slot.String(), "container", o.ID)
				return r.remove(ctx, ct)
			}
		}
	}
	// Another process may have taken a port between allocation and bind
	// (the container then exits with "address in use" each time): start
	// afresh with new ports instead of looping.
	for name, port := range portsOf(ct.labels[LabelPorts]) {
		if ct.labels[LabelNetwork] != NetworkBridge && !free(port) {
			r.log.Warn("port taken by another process, recreating", "slot", o.Slot.String(), "port", name, "host_port", port)
			return r.remove(ctx, ct)
		}
	}
	r.log.Info("restarting", "slot", o.Slot.String(), "container", o.ID, "why", why, "failures", f.count)
	_, err = r.startTask(ctx, c, o.Slot, ct.labels)
	return err
}

// stopTask sends SIGTERM, then SIGKILL after grace, and deletes the task.
func stopTask(ctx context.Context, task containerd.Task, grace time.Duration) error {
	wait, err := task.Wait(ctx)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("wait task: %w", err)
	}
	if st, err := task.Status(ctx); err == nil && st.Status == containerd.Running {
		if err := task.Kill(ctx, syscall.SIGTERM); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("signal task: %w", err)
		}
		select {
		case <-wait:
		case <-time.After(grace):
			task.Kill(ctx, syscall.SIGKILL)
			<-wait
		}
	}
	if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task: %w", err)
	}
	return nil
}

// DeleteContainer stops c's task (SIGTERM, then SIGKILL after grace) and
// deletes it, then c and its snapshot; what is already gone is no error.
// A task that cannot be loaded is one: containerd's Delete checks for a
// task itself but goes ahead when that check fails for any reason, and an
// exited task left behind keeps its shim running for good (one was found
// after an e2e run).
func DeleteContainer(ctx context.Context, c containerd.Container, grace time.Duration) error {
	switch task, err := c.Task(ctx, nil); {
	case err == nil:
		if err := stopTask(ctx, task, grace); err != nil {
			return fmt.Errorf("stop %s: %w", c.ID(), err)
		}
	case !errdefs.IsNotFound(err):
		return fmt.Errorf("load task of %s: %w", c.ID(), err)
	}
	if err := c.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", c.ID(), err)
	}
	return nil
}

// remove stops and deletes a container and its snapshot.
func (r *Runtime) remove(ctx context.Context, ct *container) error {
	if ct == nil {
		return nil
	}
	c, err := ct.handle(ctx)
	if errdefs.IsNotFound(err) {
		return nil // removed meanwhile
	} else if err != nil {
		return err
	}
	// Host ports first: a peer's new connection is refused at once and
	// goes to another instance, rather than wait on an address whose
	// process is gone; connections under way finish as the process stops.
	if r.net != nil && ct.labels[LabelNetwork] == NetworkBridge {
		if err := r.net.unmap(ct.id); err != nil {
			r.log.Warn("unmap host ports", "container", ct.id, "err", err)
		}
	}
	if err := DeleteContainer(ctx, c, 5*time.Second); err != nil {
		return err
	}
	r.detach(ctx, ct.id, ct.labels)
	r.mu.Lock()
	delete(r.health, ct.id)
	r.mu.Unlock()
	r.ports.release(ct.id)
	if ct.labels != nil {
		r.log.Info("stopped", "container", ct.id)
	}
	return nil
}

// detach releases a removed container's address and port mappings.
func (r *Runtime) detach(ctx context.Context, id string, labels map[string]string) {
	if r.net == nil || (labels != nil && labels[LabelNetwork] != NetworkBridge) {
		return
	}
	if err := r.net.detach(ctx, id); err != nil {
		r.log.Warn("release container network", "container", id, "err", err)
	}
}

// targetPorts is the port each named port's process listens on: its
// container port on the bridge, the host port handed to it on the host.
func targetPorts(mode string, ports []shoal.Port, host map[string]int) map[string]int {
	out := make(map[string]int, len(ports))
	for _, p := range ports {
		if mode == NetworkBridge {
			out[p.Name] = p.ContainerPort()
		} else {
			out[p.Name] = host[p.Name]
		}
	}
	return out
}

// publish turns what exists into Instances and signals a change.
func (r *Runtime) publish(ctx context.Context, desired []Desired) error {
	_, cs, err := r.observe(ctx)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []shoal.Instance
	have := map[shoal.Slot]bool{}
	bySlot := make(map[shoal.Slot]shoal.Service, len(desired))
	for _, d := range desired {
		bySlot[d.Slot] = d.Service
	}
	for id, ct := range cs {
		idx, _ := strconv.Atoi(ct.labels[LabelSlot])
		in := shoal.Instance{
			Slot:        shoal.Slot{Service: ct.labels[LabelService], Index: idx},
			Node:        r.cfg.NodeName,
			ContainerID: id,
			Image:       ct.labels[LabelImage],
			SpecHash:    ct.labels[LabelSpecHash],
			Revision:    ct.labels[LabelRevision],
			StartedAt:   ct.started,
		}
		json.Unmarshal([]byte(ct.labels[LabelPorts]), &in.Ports)
		r.ports.adopt(id, in.Ports)
		if ct.labels[LabelNetwork] == NetworkBridge {
			in.IP = ct.labels[LabelIP]
			in.Targets = portsOf(ct.labels[LabelTargets])
		}
		f := r.failures[in.Slot]
		in.Restarts = f.restarts
		// Healthy needs a passed check when the service has one (an
		// explicit check, or the implicit one of a service with ports):
		// before its first check an instance is only starting.
		checked := false
		if svc, ok := bySlot[in.Slot]; ok && svc.Hash() == in.SpecHash {
			checked = healthOf(svc) != nil
		}
		hs := r.health[id]
		switch {
		case ct.status != containerd.Running:
			in.State = shoal.StateExited
			in.LastError = fmt.Sprintf("exited with code %d", ct.exit)
			in.ExitCode, in.ExitedAt = int(ct.exit), ct.exitedAt
		case hs != nil && hs.state.Unhealthy:
			in.State = shoal.StateUnhealthy
		case checked && (hs == nil || !hs.state.Healthy):
			in.State = shoal.StateStarting
		default:
			in.State = shoal.StateHealthy
		}
		if f.count >= CrashLoopAfter && in.State != shoal.StateHealthy {
			in.State = shoal.StateCrashLoop
		}
		have[in.Slot] = true
		out = append(out, in)
	}
	for _, d := range desired {
		if have[d.Slot] {
			continue
		}
		in := shoal.Instance{Slot: d.Slot, Node: r.cfg.NodeName, Image: d.Service.Image, SpecHash: d.Service.Hash(), Revision: r.revision, State: shoal.StateStarting}
		if why := r.images.problem(d.Service.Image); why != "" {
			in.LastError = why
		} else {
			in.LastError = r.pending[d.Slot]
		}
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Slot != out[j].Slot {
			return slotLess(out[i].Slot, out[j].Slot)
		}
		return out[i].ContainerID < out[j].ContainerID
	})
	if !instancesEqual(out, r.instances) || !r.observed {
		r.instances, r.observed = out, true
		r.notify()
	}
	return nil
}

func instancesEqual(a, b []shoal.Instance) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Slot != y.Slot || x.ContainerID != y.ContainerID || x.State != y.State || x.Restarts != y.Restarts || x.LastError != y.LastError || len(x.Ports) != len(y.Ports) || x.IP != y.IP {
			return false
		}
	}
	return true
}

// Logs opens a local instance's output; with follow, reads block for more
// output until the reader is closed.
func (r *Runtime) Logs(slot shoal.Slot, follow bool) (io.ReadCloser, error) {
	f, err := os.Open(r.logPath(slot))
	if err != nil {
		return nil, err
	}
	if !follow {
		return f, nil
	}
	return newFollower(f), nil
}

func (r *Runtime) logPath(slot shoal.Slot) string {
	return filepath.Join(r.cfg.DataDir, "logs", fmt.Sprintf("%s-%d.log", slot.Service, slot.Index))
}

// Drain stops every container of this runtime's namespace.
func (r *Runtime) Drain(ctx context.Context) error {
	r.SetDesired("", nil)
	return r.Step(ctx)
}

// Close disconnects from containerd and stops a private daemon. Running
// containers keep running.
func (r *Runtime) Close() error {
	r.closeOnce.Do(func() {
		if r.client != nil {
			r.client.Close()
		}
		r.daemon.Stop()
	})
	return nil
}

func envName(s string) string {
	return strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(s))
}

// withArgs keeps the image's entrypoint and replaces its arguments.
func withArgs(args []string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Process != nil && len(s.Process.Args) > 0 {
			s.Process.Args = append([]string{s.Process.Args[0]}, args...)
		}
		return nil
	}
}
