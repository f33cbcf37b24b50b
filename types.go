package shoal

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Spec is the whole desired state of a fleet: every service and job of one
// revision of the spec repository. Services and Jobs are sorted by name.
type Spec struct {
	Services []Service `json:"services"`
	Jobs     []Job     `json:"jobs"`
	// Hash is a stable digest of the normalized spec: the order of files and
	// keys does not change it.
	Hash string `json:"hash"`
}

// Service returns the service with the given name, or nil.
func (s *Spec) Service(name string) *Service {
	i := sort.Search(len(s.Services), func(i int) bool { return s.Services[i].Name >= name })
	if i < len(s.Services) && s.Services[i].Name == name {
		return &s.Services[i]
	}
	return nil
}

// Job returns the job with the given name, or nil.
func (s *Spec) Job(name string) *Job {
	i := sort.Search(len(s.Jobs), func(i int) bool { return s.Jobs[i].Name >= name })
	if i < len(s.Jobs) && s.Jobs[i].Name == name {
		return &s.Jobs[i]
	}
	return nil
}

// Replicas is the total number of service replicas (slots) in the spec.
func (s *Spec) Replicas() int {
	n := 0
	for _, svc := range s.Services {
		n += svc.Replicas
	}
	return n
}

// Service is a long-running, replicated workload.
type Service struct {
	Name        string            `json:"name"`
	Image       string            `json:"image"`
	Command     []string          `json:"command,omitempty"`
	Args        []string          `json:"args,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Replicas    int               `json:"replicas"`
	Resources   Resources         `json:"resources"`
	Ports       []Port            `json:"ports,omitempty"`
	Health      *Health           `json:"health,omitempty"`
	Constraints map[string]string `json:"constraints,omitempty"`
	// Spread is "node" (the default: replicas on distinct nodes where
	// possible) or the name of a node label, such as "zone", whose values
	// replicas are balanced across.
	Spread string `json:"spread"`
	// Network is "bridge" (its own network namespace on the node's
	// bridge; the default) or "host" (the node's network, the exception).
	Network string         `json:"network,omitempty"`
	Restart RestartPolicy  `json:"restart"`
	Update  UpdateStrategy `json:"update"`
	Scale   *Scale         `json:"scale,omitempty"`

	// Source is where the service was declared; it is not part of the hash.
	Source Source `json:"-"`
}

// Hash is a stable digest of everything that defines a running container of
// this service except the replica count and scaling bounds, so that scaling
// does not replace containers but any other change does.
func (s *Service) Hash() string {
	c := *s
	c.Replicas = 0
	c.Scale = nil
	return digest(c)
}

// Job is a cron-scheduled task that runs to completion on one node per tick.
type Job struct {
	Name    string            `json:"name"`
	Image   string            `json:"image"`
	Command []string          `json:"command,omitempty"`
	Args    []string          `json:"args,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	// Schedule uses robfig/cron syntax: five fields, an optional leading
	// seconds field, descriptors such as @daily or @every 5m, and an optional
	// CRON_TZ=Zone prefix.
	Schedule    string            `json:"schedule"`
	Concurrency Concurrency       `json:"concurrency"`
	Resources   Resources         `json:"resources"`
	Constraints map[string]string `json:"constraints,omitempty"`
	// Deadline bounds one run; zero means no deadline.
	Deadline Duration `json:"deadline,omitempty"`
	// StartingDeadline bounds how late a tick may still start (a tick the
	// whole fleet missed, or one handed to the next node); zero: the
	// latest missed tick runs however late, older ones never.
	StartingDeadline Duration `json:"starting_deadline,omitempty"`

	Source Source `json:"-"`
}

// Hash is a stable digest of the job definition.
func (j *Job) Hash() string { return digest(*j) }

// Concurrency says what happens when a tick comes while the previous run of
// the same job is still going.
type Concurrency string

const (
	ConcurrencyForbid  Concurrency = "forbid"  // skip the new tick
	ConcurrencyReplace Concurrency = "replace" // stop the old run, start the new one
)

// Resources is what one replica reserves of a node's allocatable capacity.
type Resources struct {
	CPU    float64 `json:"cpu"`    // cores
	Memory Bytes   `json:"memory"` // bytes
}

// Port is a port a service listens on. Port is the stable port the fleet's
// balancer serves the service on; the process listens on Target (Port when
// zero) in its own network namespace, and PORT (first port) and
// SHOAL_PORT_<NAME> say which. Peers reach it at a host port of its node
// mapped to Target. With host networking the process listens on the host
// port handed to it in PORT instead.
type Port struct {
	Name     string   `json:"name"`
	Port     int      `json:"port"`
	Target   int      `json:"target,omitempty"`
	Protocol Protocol `json:"protocol"`
}

// ContainerPort is the port the process listens on in its own namespace.
func (p Port) ContainerPort() int {
	if p.Target > 0 {
		return p.Target
	}
	return p.Port
}

// Network modes of a service.
const (
	NetworkBridge = "bridge"
	NetworkHost   = "host"
)

// Protocol of a service port.
type Protocol string

const (
	ProtocolTCP  Protocol = "tcp"
	ProtocolHTTP Protocol = "http"
)

// Health says how to tell that an instance is serving. Exactly one of HTTP,
// TCP and Exec is set.
type Health struct {
	HTTP string   `json:"http,omitempty"` // path, e.g. "/healthz"; 2xx/3xx is healthy
	TCP  bool     `json:"tcp,omitempty"`  // a TCP connect to the first port succeeds
	Exec []string `json:"exec,omitempty"` // command run in the container; exit 0 is healthy
	// Port names the port to check; empty means the first port.
	Port     string   `json:"port,omitempty"`
	Interval Duration `json:"interval"`
	Timeout  Duration `json:"timeout"`
	// Grace is how long after start failures are not counted.
	Grace Duration `json:"grace"`
	// HealthyThreshold consecutive successes make an instance healthy;
	// UnhealthyThreshold consecutive failures make it unhealthy.
	HealthyThreshold   int `json:"healthy_threshold"`
	UnhealthyThreshold int `json:"unhealthy_threshold"`
}

// RestartPolicy says when an exited or unhealthy container is restarted.
type RestartPolicy struct {
	Policy RestartMode `json:"policy"`
	// Backoff is the first delay; it doubles on each consecutive failure up
	// to MaxBackoff, and resets after the instance has run for MaxBackoff.
	Backoff    Duration `json:"backoff"`
	MaxBackoff Duration `json:"max_backoff"`
}

// RestartMode of a RestartPolicy.
type RestartMode string

const (
	RestartAlways    RestartMode = "always"
	RestartOnFailure RestartMode = "on-failure"
	RestartNever     RestartMode = "never"
)

// UpdateStrategy bounds how a spec change rolls over a service's replicas.
type UpdateStrategy struct {
	MaxSurge       int      `json:"max_surge"`
	MaxUnavailable int      `json:"max_unavailable"`
	MinHealthyTime Duration `json:"min_healthy_time"`
	AutoRevert     bool     `json:"auto_revert"`
}

// Scale turns on autoscaling by traffic: replicas stay within [Min, Max] and
// aim at Target new connections per second per replica.
type Scale struct {
	Min    int     `json:"min"`
	Max    int     `json:"max"`
	Target float64 `json:"target"`
}

// Source locates a declaration in the spec tree.
type Source struct {
	File string `json:"file"`
	Line int    `json:"line"`
}

func (s Source) String() string {
	if s.Line > 0 {
		return fmt.Sprintf("%s:%d", s.File, s.Line)
	}
	return s.File
}

// Node is a member of the fleet as placement sees it: its declared
// allocatable capacity and labels. Capacity, never momentary usage, is the
// input, so that every node computes the same placement.
type Node struct {
	Name   string            `json:"name"`
	CPU    float64           `json:"cpu"`    // cores
	Memory Bytes             `json:"memory"` // bytes
	Labels map[string]string `json:"labels,omitempty"`
}

// Slot names one replica of a service: replica Index of Service.
type Slot struct {
	Service string `json:"service"`
	Index   int    `json:"slot"`
}

func (s Slot) String() string { return s.Service + "/" + strconv.Itoa(s.Index) }

// InstanceState is the lifecycle state of a local instance.
type InstanceState string

const (
	StateStarting  InstanceState = "starting"
	StateHealthy   InstanceState = "healthy"
	StateUnhealthy InstanceState = "unhealthy"
	StateExited    InstanceState = "exited"
	StateCrashLoop InstanceState = "crashloop"
)

// Instance is a container the runtime runs for one slot on this node.
type Instance struct {
	Slot
	Node        string         `json:"node"`
	ContainerID string         `json:"container_id"`
	Image       string         `json:"image"`
	SpecHash    string         `json:"spec_hash"` // Service.Hash of what it runs
	Revision    string         `json:"revision"`  // Git commit it was started from
	State       InstanceState  `json:"state"`
	Ports       map[string]int `json:"ports,omitempty"` // port name → host port
	// IP is the container's address on the node's bridge, and Targets
	// its ports there (port name → container port); empty with host
	// networking.
	IP        string         `json:"ip,omitempty"`
	Targets   map[string]int `json:"targets,omitempty"`
	StartedAt time.Time      `json:"started_at"`
	Restarts  int            `json:"restarts"`
	LastError string         `json:"last_error,omitempty"`
	// ExitCode and ExitedAt say how and when an exited instance ended.
	ExitCode int       `json:"exit_code,omitempty"`
	ExitedAt time.Time `json:"exited_at,omitzero"`
}

// Record is what the mesh gossips about one instance: enough for DNS and the
// balancer of every node to route to it.
type Record struct {
	Service  string `json:"service"`
	Slot     int    `json:"slot"`
	Node     string `json:"node"`
	Addr     string `json:"addr"`      // node address reachable by peers
	PortName string `json:"port_name"` // Port.Name
	Port     int    `json:"port"`      // host port on Addr
	Revision string `json:"revision"`
	// Spec is the first SpecHashLen characters of the instance's service
	// definition hash: rolling updates see which slots run the new one.
	Spec    string `json:"spec,omitempty"`
	Healthy bool   `json:"healthy"`
	// Local is where this node dials its own instance directly (its
	// container address and port), skipping the host port's translation.
	// Set only on a node's own records; never gossiped.
	Local string `json:"local,omitempty"`
}

// SpecHashLen is how much of a definition hash records carry.
const SpecHashLen = 8

// ShortSpec is the part of a definition hash that records carry.
func ShortSpec(hash string) string { return hash[:min(len(hash), SpecHashLen)] }

// Key identifies a record within the fleet.
func (r Record) Key() string {
	return r.Node + "/" + r.Service + "/" + strconv.Itoa(r.Slot) + "/" + r.PortName
}

// SortRecords orders records by service, slot, node and port name.
func SortRecords(rs []Record) {
	sort.Slice(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		if a.Slot != b.Slot {
			return a.Slot < b.Slot
		}
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		return a.PortName < b.PortName
	})
}

// Revision is one verified, validated commit of the spec repository.
type Revision struct {
	Commit   string    `json:"commit"`
	Time     time.Time `json:"time"`
	Author   string    `json:"author"`
	Message  string    `json:"message"`
	Signer   string    `json:"signer,omitempty"` // key that verified it, if a policy is set
	Spec     *Spec     `json:"spec"`
	SpecHash string    `json:"spec_hash"`
}

// Short is the abbreviated commit hash.
func (r *Revision) Short() string {
	if len(r.Commit) > 12 {
		return r.Commit[:12]
	}
	return r.Commit
}

// digest is the SHA-256 of v's canonical JSON. encoding/json sorts map keys
// and slices keep declared order, so equal values give equal digests.
func digest(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("shoal: digest: %v", err)) // only plain data is hashed
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Bytes is a memory size. It reads from JSON as a number of bytes or as a
// string with a binary or decimal suffix ("256Mi", "1Gi", "500M").
type Bytes int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"k", 1e3}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
}

// sizeNumberRe is the number part of a size: digits with an optional
// decimal fraction, nothing else (no sign, exponent, hex, Inf or NaN).
var sizeNumberRe = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`)

// maxSizeText bounds the text of a size, so that parsing it is cheap.
const maxSizeText = 64

// ParseBytes reads "256Mi", "1Gi", "1.5Gi", "500M" or a plain byte count.
// A fraction of a byte is dropped. A size that does not fit in an int64 is
// an error, never a wrapped-around number.
func ParseBytes(s string) (Bytes, error) {
	s = strings.TrimSpace(s)
	bad := func(why string) (Bytes, error) {
		if len(s) > maxSizeText {
			s = s[:maxSizeText] + "..."
		}
		return 0, fmt.Errorf("invalid size %q: %s", s, why)
	}
	if len(s) > maxSizeText {
		return bad(fmt.Sprintf("longer than %d characters", maxSizeText))
	}
	mult := int64(1)
	num := s
	for _, u := range byteUnits {
		if strings.HasSuffix(s, u.suffix) {
			mult, num = u.mult, strings.TrimSuffix(s, u.suffix)
			break
		}
	}
	if !sizeNumberRe.MatchString(num) {
		return bad("want a number with an optional suffix Ki, Mi, Gi, Ti, k, M, G or T")
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return bad("want a number with an optional suffix Ki, Mi, Gi, Ti, k, M, G or T")
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	n := new(big.Int).Quo(r.Num(), r.Denom()) // exact, rounded down
	if !n.IsInt64() {
		return bad("too large")
	}
	return Bytes(n.Int64()), nil
}

// String formats b with the largest binary suffix that divides it.
func (b Bytes) String() string {
	for _, u := range []struct {
		s string
		m int64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if b != 0 && int64(b)%u.m == 0 {
			return strconv.FormatInt(int64(b)/u.m, 10) + u.s
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalJSON writes the byte count as a number.
func (b Bytes) MarshalJSON() ([]byte, error) { return []byte(strconv.FormatInt(int64(b), 10)), nil }

// UnmarshalJSON accepts a number of bytes or a size string.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		v, err := ParseBytes(s)
		if err != nil {
			return err
		}
		*b = v
		return nil
	}
	var n float64
	if err := json.Unmarshal(data, &n); err != nil {
		return fmt.Errorf("invalid size %s", data)
	}
	if n < 0 {
		return fmt.Errorf("invalid size %s: negative", data)
	}
	if n >= math.MaxInt64 { // float64(MaxInt64) rounds up to 2^63
		return fmt.Errorf("invalid size %s: too large", data)
	}
	*b = Bytes(n)
	return nil
}

// Duration is a time.Duration that reads from JSON as "10s", "1m30s" or a
// number of seconds, and writes as a string.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes the duration as a string such as "1m30s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON accepts "10s"-style strings or a number of seconds.
func (d *Duration) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("invalid duration %q", s)
		}
		*d = Duration(v)
		return nil
	}
	var secs float64
	if err := json.Unmarshal(data, &secs); err != nil {
		return fmt.Errorf("invalid duration %s", data)
	}
	*d = Duration(secs * float64(time.Second))
	return nil
}

// RecordsFor turns a node's local instances into the records it publishes:
// one per instance and port, healthy only when the instance is.
//
// A slot being replaced make-before-break has two instances; it is
// published as one: the healthy one, the newer when both are.
func RecordsFor(node, addr string, instances []Instance) []Record {
	best := map[Slot]Instance{}
	var order []Slot
	for _, in := range instances {
		cur, ok := best[in.Slot]
		if !ok {
			order = append(order, in.Slot)
		}
		inOK, curOK := in.State == StateHealthy, cur.State == StateHealthy
		if !ok || (inOK && !curOK) || (inOK == curOK && in.StartedAt.After(cur.StartedAt)) {
			best[in.Slot] = in
		}
	}
	var rs []Record
	for _, slot := range order {
		in := best[slot]
		names := make([]string, 0, len(in.Ports))
		for name := range in.Ports {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			r := Record{
				Service: in.Service, Slot: in.Index, Node: node, Addr: addr,
				PortName: name, Port: in.Ports[name], Revision: in.Revision,
				Spec: ShortSpec(in.SpecHash), Healthy: in.State == StateHealthy,
			}
			if t := in.Targets[name]; in.IP != "" && t > 0 {
				r.Local = net.JoinHostPort(in.IP, strconv.Itoa(t))
			}
			rs = append(rs, r)
		}
	}
	SortRecords(rs)
	return rs
}
